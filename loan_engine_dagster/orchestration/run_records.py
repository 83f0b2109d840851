"""What Dagster's run storage says about loan engine runs: where a run
stopped, why, and which process ran it. Shared by the failure sensors and the
`loan-engine runs` command, against whatever storage dagster.yaml configures."""

import datetime as dt
import os
from dataclasses import dataclass

import dagster as dg

from loan_engine_dagster.adapters.watch import FINGERPRINT_RUN_KEY_CHARS

JOB_NAME = "loan_engine_job"
PHASE_TAG = "loan_engine/failed_phase"
KIND_TAG = "loan_engine/failure_kind"
BATCH_TAG = "loan_engine/batch"
INBOX_TAG = "loan_engine/inbox"
FINGERPRINT_TAG = "loan_engine/fingerprint"
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"  # Dagster's, on a failed run its run retries will start again
MAX_RETRIES_TAG = "dagster/max_retries"  # Dagster's; "0": its run retries never start this run again
# On a run whose worker died after its save committed: the run's own id
# (a re-execution inherits its parent's tags, so a copy names another run).
RESULTS_SAVED_TAG = "loan_engine/results_saved"
# The run's own `dagster/max_retries` while its save holds it at 0 (run_tags.CommitGuard).
RETRIES_HELD_TAG = "loan_engine/retries_held"
# Failed runs looked at for one that saved its results, newest first.
SAVED_LOOKBACK = 20
RULES_TAG = "loan_engine/rules_fingerprint"  # the rules a run used; its re-executions must use the same
# Whether a failed run's `incidents` row is written (`written`) or still owed
# (`pending`, the results database was unreachable when the failure was reported).
INCIDENT_TAG = "loan_engine/incident"
IN_PROGRESS = (
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
)
STATUS_NAMES = {
    "running": [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING],
    "queued": [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED],
    "failed": [dg.DagsterRunStatus.FAILURE],
    "canceled": [dg.DagsterRunStatus.CANCELED],
    "success": [dg.DagsterRunStatus.SUCCESS],
}


# Engine events that tell how a run's worker ended (Dagster's code server and
# our dead-worker sensor write them).
WORKER_END_PHRASES = ("was terminated by signal", "unexpectedly exited", "Run worker disappeared", "Marked failed by hand",
                      "Marked canceled by hand", "maximum runtime")


DEFAULT_DEAD_WORKER_SECONDS = 60


def dead_worker_seconds() -> float:
    """How long a run's heartbeat may be silent before its worker counts as dead."""
    value = os.environ.get("LOAN_ENGINE_DEAD_WORKER_SECONDS", str(DEFAULT_DEAD_WORKER_SECONDS))
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"LOAN_ENGINE_DEAD_WORKER_SECONDS must be a number of seconds, not {value!r}") from None


@dataclass(frozen=True)
class StopPoint:
    """Where a run stopped and the innermost error, as the event log tells it."""

    phase: str | None
    error_type: str | None
    message: str | None


def _innermost(error):
    while error is not None and error.cause is not None:
        error = error.cause
    return error


def stop_point(instance: dg.DagsterInstance, run_id: str) -> StopPoint:
    """The failed step and its error; else the step that was running; else
    the run-level failure message."""
    step_events = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                   dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.RUN_CANCELING}
    running: list[str] = []
    run_failure = None
    worker_news = None  # what the code server or our sensor said about the worker's end
    for entry in instance.all_logs(run_id, of_type=step_events):
        event = entry.dagster_event
        if event.event_type in (dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.RUN_CANCELING):
            text = event.message or ""
            if any(phrase.casefold() in text.casefold() for phrase in WORKER_END_PHRASES):
                worker_news = text
            continue
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = _innermost(event.step_failure_data.error)
            return StopPoint(event.step_key, error.cls_name if error else None, error.message if error else None)
        if event.event_type == dg.DagsterEventType.STEP_START:
            running.append(event.step_key)
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS and event.step_key in running:
            running.remove(event.step_key)
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE:
            run_failure = entry
    message = worker_news or (run_failure.dagster_event.message if run_failure and run_failure.dagster_event.message else None)
    if run_failure is not None and run_failure.dagster_event.event_specific_data is not None:
        error = _innermost(getattr(run_failure.dagster_event.event_specific_data, "error", None))
        if error is not None:
            return StopPoint(running[-1] if running else None, error.cls_name, error.message)
    return StopPoint(running[-1] if running else None, None, message)


def last_phase(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The failed phase tag when the failure sensor set one, else the event log's view."""
    return run.tags.get(PHASE_TAG) or stop_point(instance, run.run_id).phase or "-"


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that executes the run: the one that reported RUN_START."""
    connection = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1)
    for record in connection.records:
        return record.event_log_entry.dagster_event.pid
    return None


def batch_tags(key: str, inbox_root: str, fingerprint: str | None = None) -> dict[str, str]:
    """The tags that say which delivery a run reads, whoever starts it
    (inbox sensor, `loan-engine run`, the UI or a backfill)."""
    tags = {BATCH_TAG: key, INBOX_TAG: inbox_root}
    if fingerprint:
        tags[FINGERPRINT_TAG] = short_fingerprint(fingerprint)
    return tags


def short_fingerprint(fingerprint: str) -> str:
    return fingerprint[:FINGERPRINT_RUN_KEY_CHARS]


def saved_its_results(run: dg.DagsterRun) -> bool:
    return run.tags.get(RESULTS_SAVED_TAG) == run.run_id


def latest_good_run(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun | None:
    """The batch's newest run that succeeded or is still going, whoever
    started it: the delivery its reports show, or soon will. A run failed
    after it saved its results (its worker died after the commit) counts:
    its rows and reports are the batch's."""
    filters = dg.RunsFilter(job_name=JOB_NAME, statuses=[dg.DagsterRunStatus.SUCCESS, *IN_PROGRESS], tags={BATCH_TAG: key})
    records = instance.get_run_records(filters=filters, limit=1)
    latest = records[0] if records else None
    failed = dg.RunsFilter(job_name=JOB_NAME, statuses=[dg.DagsterRunStatus.FAILURE], tags={BATCH_TAG: key},
                           created_after=latest.create_timestamp if latest else None)
    saved = next((run for run in instance.get_runs(filters=failed, limit=SAVED_LOOKBACK) if saved_its_results(run)), None)
    return saved or (latest.dagster_run if latest else None)


def usual_retries(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The run's own `dagster/max_retries`, also while its save holds it at 0."""
    held = run.tags.get(RETRIES_HELD_TAG)
    if held is not None and run.tags.get(MAX_RETRIES_TAG) == "0":
        return held
    return run.tags.get(MAX_RETRIES_TAG, str(instance.run_retries_max_retries))


def report_dead_run_failed(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str, *, saved: bool) -> None:
    """Fail a run whose worker is gone. One that saved its results first is
    tagged so and not retried: a retry would compute and save the same batch
    again. Its retry setting is put back once Dagster has decided (the
    failure's `dagster/will_retry`), so that a re-execution started from it
    by hand inherits the usual one."""
    restore = {MAX_RETRIES_TAG: usual_retries(instance, run)} if saved else restored_retries(instance, run)
    if saved:
        instance.add_run_tags(run.run_id, {RESULTS_SAVED_TAG: run.run_id, MAX_RETRIES_TAG: "0"})
    instance.report_run_failed(run, message=message)
    if restore:
        instance.add_run_tags(run.run_id, restore)


def restored_retries(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, str]:
    """The tag that puts the run's own `dagster/max_retries` back where its
    save left it held at 0 (once Dagster has decided on the failure), so that
    re-executions started from it by hand inherit it; none when the run
    already has its usual setting."""
    usual = usual_retries(instance, run)
    return {MAX_RETRIES_TAG: usual} if run.tags.get(MAX_RETRIES_TAG, usual) != usual else {}


def runs_with_files(instance: dg.DagsterInstance, key: str, fingerprint: str) -> list[dg.DagsterRun]:
    """Every run of these exact files, in any state, newest first."""
    filters = dg.RunsFilter(job_name=JOB_NAME, tags={BATCH_TAG: key, FINGERPRINT_TAG: short_fingerprint(fingerprint)})
    return list(instance.get_runs(filters=filters))


def batch_of(run: dg.DagsterRun) -> str:
    return run.tags.get(PARTITION_TAG) or run.tags.get(BATCH_TAG) or "-"


def loan_engine_runs(
    instance: dg.DagsterInstance, statuses: list[dg.DagsterRunStatus] | None = None,
    older_than_minutes: float | None = None, limit: int = 200,
) -> list[dg.RunRecord]:
    """Newest first. `older_than_minutes` keeps runs that started (or, not yet
    started, were created) that long ago or earlier."""
    filters = dg.RunsFilter(job_name=JOB_NAME, statuses=statuses or [])
    records = instance.get_run_records(filters=filters, limit=limit)
    if older_than_minutes is None:
        return list(records)
    cutoff = dt.datetime.now(dt.timezone.utc).timestamp() - older_than_minutes * 60
    return [r for r in records if (r.start_time or r.create_timestamp.timestamp()) <= cutoff]


def mark_run(instance: dg.DagsterInstance, run: dg.DagsterRun, as_status: str, reason: str, *, saved: bool = False) -> None:
    """Close an in-progress run by hand; the reason lands in its event log.
    `saved`: its results were saved before it stopped (report_dead_run_failed)."""
    message = f"Marked {as_status} by hand: {reason}"
    instance.report_engine_event(message, run)
    if as_status == "failed":
        report_dead_run_failed(instance, run, message, saved=saved)
    else:
        instance.report_run_canceled(run, message=message)
