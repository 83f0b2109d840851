"""Sensors: the inbox watcher and the missing-batch alert."""


import datetime as dt
import os

import dagster as dg

from loan_engine_dagster.adapters import watch
from loan_engine_dagster.adapters.alerts import AlertPolicy, due_batch
from loan_engine_dagster.adapters.inbox import BatchKeyError, parse_batch_key

from .jobs import loan_engine_job
from .partitions import batches
from .resources import InboxResource, Notifier, RulesResource

INBOX_POLL_SECONDS = 30
ALERT_POLL_SECONDS = 300
WEBHOOK_PENDING = " (webhook pending)"  # cursor suffix: alert recorded, webhook owed


def batch_tags(key: str, inbox_root: str, fingerprint: str | None = None) -> dict[str, str]:
    tags = {"loan_engine/batch": key, "loan_engine/inbox": inbox_root}
    if fingerprint:
        tags["loan_engine/fingerprint"] = fingerprint[:16]
    return tags


@dg.sensor(
    job=loan_engine_job,
    minimum_interval_seconds=INBOX_POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts one run per complete batch in the inbox, once its files stopped changing.",
)
def inbox_sensor(context: dg.SensorEvaluationContext, inbox: InboxResource, rules: RulesResource) -> dg.SensorResult:
    loaded = rules.load()
    found, refused = {}, []
    for key, files in inbox.batches(loaded).items():
        try:
            parse_batch_key(key)  # the CLI's check too: a batch key is a real date, nothing else
            found[key] = files
        except BatchKeyError as exc:
            refused.append(str(exc))
    result = watch.evaluate(found, inbox.reference(), watch.WatchState.from_cursor(context.cursor))
    if result.reference_changed:
        context.log.warning(result.skip_message())
    requests = [
        dg.RunRequest(
            run_key=ready.run_key,
            partition_key=ready.key,
            tags=batch_tags(ready.key, str(inbox.root), ready.fingerprint),
        )
        for ready in result.ready
    ]
    new_partitions = [r.key for r in result.ready if not context.instance.has_dynamic_partition(batches.name, r.key)]
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else "; ".join([*refused, result.skip_message()]),
        cursor=result.state.to_cursor(),
        dynamic_partitions_requests=[batches.build_add_request(new_partitions)] if new_partitions else None,
    )


@dg.sensor(
    minimum_interval_seconds=ALERT_POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Alerts once a week when the expected batch is not complete by the configured weekday and time.",
)
def missing_batch_alert_sensor(
    context: dg.SensorEvaluationContext, inbox: InboxResource, rules: RulesResource, notifier: Notifier
) -> dg.SensorResult:
    policy = AlertPolicy.from_env(os.environ)
    now = dt.datetime.now(policy.zone)
    key = due_batch(now, policy)
    if context.cursor == key:
        return dg.SensorResult(skip_reason="no alert due")
    retrying = context.cursor == key + WEBHOOK_PENDING
    files = inbox.batch(key, rules.load())
    if files.complete:
        return dg.SensorResult(skip_reason=f"{key}: complete", cursor=key)
    missing = ", ".join(files.missing)
    text = f"Batch {key} is not complete at {now:%a %H:%M %Z}: missing {missing} (inbox {inbox.root})"
    context.log.error(text)
    # The alert is recorded in the UI whatever the webhook does; a webhook that
    # failed is tried again on the next ticks, without a second observation.
    try:
        webhook = "sent" if notifier.send(text, batch=key, kind="missing_files", missing=files.missing) else "not set"
    except Exception as exc:
        webhook = f"failed ({exc}); retried next tick"
        context.log.error(f"missing-batch alert for {key}: webhook {webhook}")
    cursor = key + WEBHOOK_PENDING if webhook.startswith("failed") else key
    if retrying:
        return dg.SensorResult(skip_reason=f"ALERT (already recorded): {text}; webhook {webhook}", cursor=cursor)
    new_partitions = [] if context.instance.has_dynamic_partition(batches.name, key) else [key]
    return dg.SensorResult(
        skip_reason=f"ALERT: {text}" + {"sent": "", "not set": " (no LOAN_ENGINE_WEBHOOK_URL set)"}.get(webhook, f"; webhook {webhook}"),
        cursor=cursor,
        dynamic_partitions_requests=[batches.build_add_request(new_partitions)] if new_partitions else None,
        asset_events=[
            dg.AssetObservation(
                asset_key="batch_inputs", partition=key,
                metadata={"alert": "missing files", "missing": missing, "inbox": str(inbox.root), "webhook": webhook},
            )
        ],
    )
