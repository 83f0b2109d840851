"""Sensors: the inbox watcher and the missing-batch alert."""


import dataclasses
import datetime as dt
import os
from pathlib import Path

import dagster as dg

from loan_engine_dagster.adapters import watch
from loan_engine_dagster.adapters.alerts import AlertPolicy, due_batch
from loan_engine_dagster.adapters.batch import published_delivery
from loan_engine_dagster.adapters.inbox import (
    BatchFiles, BatchKeyError, InboxUnreadable, empty_inbox_note, open_input, parse_batch_key, require_inbox,
)

from loan_engine_dagster.rules.config import RulesFileError

from .jobs import loan_engine_job
from .partitions import registration_requests
from .resources import InboxResource, Notifier, OutputsResource, RulesResource
from .run_records import (
    FINGERPRINT_TAG, KIND_TAG, WILL_RETRY_TAG, batch_tags, latest_good_run, runs_with_files, short_fingerprint,
)

INBOX_POLL_SECONDS = 30
ALERT_POLL_SECONDS = 300
WEBHOOK_PENDING = " (webhook pending)"  # cursor suffix: alert recorded, webhook owed


def _rules_refused(context: dg.SensorEvaluationContext, exc: RulesFileError) -> dg.SensorResult:
    """A rules file that every run would refuse: the tick says why, in one
    line and in its log, instead of failing with a traceback; the cursor stays."""
    message = f"rules file refused, nothing checked: {exc}"
    context.log.error(message)
    return dg.SensorResult(skip_reason=message, cursor=context.cursor)


@dg.sensor(
    job=loan_engine_job,
    minimum_interval_seconds=INBOX_POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts one run per complete batch in the inbox, once its files stopped changing.",
)
def inbox_sensor(
    context: dg.SensorEvaluationContext, inbox: InboxResource, rules: RulesResource, outputs: OutputsResource
) -> dg.SensorResult:
    try:
        loaded = rules.load()
    except RulesFileError as exc:
        return _rules_refused(context, exc)
    found, refused = {}, []
    try:
        listed = inbox.batches(loaded)
    except InboxUnreadable as exc:  # the deployment's problem: said on every tick until fixed
        context.log.warning(str(exc))
        return dg.SensorResult(skip_reason=str(exc), cursor=context.cursor)
    for key, files in listed.items():
        try:
            parse_batch_key(key)  # the CLI's check too: a batch key is a real date, nothing else
            found[key] = files
        except BatchKeyError as exc:
            refused.append(str(exc))
    result = watch.evaluate(found, inbox.reference(), watch.WatchState.from_cursor(context.cursor))
    if result.reference_changed:
        context.log.warning(result.skip_message())
    for problem in result.unreadable:
        context.log.warning(problem)
    ready = []
    for asked_before, batches in ((False, result.ready), (True, result.asked_before)):
        for batch in batches:
            start = _to_start(context.instance, batch, outputs.path, asked_before=asked_before)
            if start is None and not asked_before:
                result.already_run.append(batch.key)  # ran from `loan-engine run` or the UI
            elif start is not None:
                ready.append(start)
                if asked_before:
                    result.already_run.remove(batch.key)
    requests = [
        dg.RunRequest(
            run_key=batch.run_key,
            partition_key=batch.key,
            tags=batch_tags(batch.key, str(inbox.root), batch.fingerprint),
        )
        for batch in ready
    ]
    for batch in ready:
        context.log.info(f"{batch.key}: starting a run for run key {batch.run_key}")
    if not requests:
        context.log.info(result.skip_message())
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else "; ".join([*refused, result.skip_message()]),
        cursor=result.state.to_cursor(),
        dynamic_partitions_requests=registration_requests(context.instance, [b.key for b in ready]) or None,
    )


# Runs of one delivery the sensor starts after one another when they fail.
RUNS_PER_DELIVERY = 2


def _to_start(
    instance: dg.DagsterInstance, batch: watch.ReadyBatch, output_root: Path, *, asked_before: bool
) -> watch.ReadyBatch | None:
    """The delivery to start, numbered after its earlier runs, or None.

    Not when the batch's newest good run (succeeded, or going) is of these
    files, whoever started it, nor when its published reports were made from
    them: a new Dagster instance (moved to PostgreSQL, a home wiped) knows no
    runs, and its sensor ran every batch kept in the inbox again, each
    against today's portfolio, over the results the buyer had acted on
    (hostile pass). Otherwise a new delivery starts, and so does
    one the batch had before (a correction withdrawn, the first files put
    back: they ran once, but the batch shows the correction). A delivery the
    sensor already asked for starts again only when its runs failed, up to
    RUNS_PER_DELIVERY in all: a file briefly gone or still being written when
    the run started, a worker lost; a data problem fails the same way again.
    Until 2026-12-07 neither started again (hostile pass)."""
    latest = latest_good_run(instance, batch.key)
    if latest is not None and latest.tags.get(FINGERPRINT_TAG) == short_fingerprint(batch.fingerprint):
        return None
    earlier = runs_with_files(instance, batch.key, batch.fingerprint)
    if asked_before:
        failed = [run for run in earlier if run.status == dg.DagsterRunStatus.FAILURE]
        if not earlier or earlier[0].status != dg.DagsterRunStatus.FAILURE or len(failed) >= RUNS_PER_DELIVERY:
            return None  # not started yet (the daemon's to do), going, or failed enough
        if earlier[0].tags.get(WILL_RETRY_TAG) == "true":
            return None  # the daemon's run retries start it again (a worker lost): not twice
        if KIND_TAG not in earlier[0].tags:
            # Not explained yet by the failure sensor, which finds whether a
            # worker lost after its commit saved the results (then it is the
            # batch's good run, and nothing runs again).
            return None
    # Read last, and only for a batch about to start: every batch kept in the
    # inbox comes here on every tick.
    if latest is None and published_delivery(output_root, batch.key) == batch.fingerprint:
        return None
    # Dagster never starts a second run for a run key it has seen.
    return dataclasses.replace(batch, attempt=len(earlier) + 1)


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
    try:
        loaded = rules.load()
    except RulesFileError as exc:
        return _rules_refused(context, exc)
    problem = None
    try:
        files = inbox.expected(key, loaded)
        require_inbox(inbox.root)
    except InboxUnreadable as exc:  # the seller may have sent everything: the folder is what cannot be seen
        problem = exc
        files = BatchFiles(key=key, notice_date=parse_batch_key(key)[0], lookback_days=loaded.inbox.tape_lookback_days)
    if files.complete:
        try:  # there, but no run of it could start: that is worth the alert too
            for path in files.files.values():
                open_input(path).close()
        except InboxUnreadable as exc:
            problem = exc
        else:
            return dg.SensorResult(skip_reason=f"{key}: complete", cursor=key)
    missing = ", ".join(files.missing)
    if files.missing:
        text = f"Batch {key} is not complete at {now:%a %H:%M %Z}: missing {missing} (inbox {inbox.root})"
        text += f"; {problem}" if problem is not None else empty_inbox_note(inbox.root)
    else:
        text = f"Batch {key} is in the inbox at {now:%a %H:%M %Z} but cannot be read (inbox {inbox.root}): {problem}"
    context.log.error(text)
    # The alert is recorded in the UI whatever the webhook does; a webhook that
    # failed is tried again on the next ticks, without a second observation.
    try:
        kind = "missing_files" if files.missing else "unreadable_files"
        webhook = "sent" if notifier.send(text, batch=key, kind=kind, missing=files.missing) else "not set"
    except Exception as exc:
        webhook = f"failed ({exc}); retried next tick"
        context.log.error(f"missing-batch alert for {key}: webhook {webhook}")
    cursor = key + WEBHOOK_PENDING if webhook.startswith("failed") else key
    if retrying:
        return dg.SensorResult(skip_reason=f"ALERT (already recorded): {text}; webhook {webhook}", cursor=cursor)
    # The alert is an observation of batch_inputs for the expected batch key,
    # marked as missing files. It registers no partition: a batch that never
    # came must not look like one that exists.
    return dg.SensorResult(
        skip_reason=f"ALERT: {text}" + {"sent": "", "not set": " (no LOAN_ENGINE_WEBHOOK_URL set)"}.get(webhook, f"; webhook {webhook}"),
        cursor=cursor,
        asset_events=[
            dg.AssetObservation(
                asset_key="batch_inputs", partition=key,
                metadata={"alert": "expected batch missing", "batch": key, "missing": missing, "inbox": str(inbox.root),
                          "webhook": webhook},
            )
        ],
    )
