"""No run left stuck: the run-failure sensor that explains every failure, and
the dead-worker sensor that fails runs whose worker stopped its heartbeat (the
default run launcher cannot tell, so such runs would stay STARTED)."""

import dataclasses
import json
import time

import dagster as dg
import sqlalchemy.exc

from loan_engine_dagster.adapters import incidents, leases, preflight
from loan_engine_dagster.adapters.database import rows_run

from .resources import Notifier, ResultsDatabase
from .run_records import (
    INCIDENT_TAG, JOB_NAME, KIND_TAG, PHASE_TAG, RESULTS_SAVED_TAG, batch_of, dead_worker_seconds,
    report_dead_run_failed, restored_retries, saved_its_results, stop_point,
)

DEAD_WORKER_POLL_SECONDS = 30
PENDING_INCIDENTS_POLL_SECONDS = 60


def _run_database(run: dg.DagsterRun, results_db: ResultsDatabase) -> ResultsDatabase:
    """The results database the run itself wrote to (the CLI may override it)."""
    url = run.run_config.get("resources", {}).get("results_db", {}).get("config", {}).get("url")
    return ResultsDatabase(url=url) if url else results_db


def revoke_lease(run: dg.DagsterRun, results_db: ResultsDatabase) -> bool:
    """Void the run's batch lease in the database it writes to, so that its
    worker, should it still live, can no longer save or publish anything."""
    engine = _run_database(run, results_db).engine()
    try:
        return leases.revoke(engine, batch_of(run), run.run_id)
    finally:
        engine.dispose()


# Said of a run that stopped after its save committed (killed between its
# commit and the events that report it): failed in Dagster, done in fact.
RESULTS_SAVED = ("its results were saved before it stopped: the batch's rows in the results database, and the reports "
                 "published with them, are this run's; nothing is lost and nothing needs to run again")


def saved_results(engine, run: dg.DagsterRun) -> bool:
    """Whether the batch's rows in this results database are the run's own.
    Unknown (no results tables yet, the database gone) counts as not: the
    run is then retried, which at worst saves the same batch again."""
    try:
        with engine.connect() as conn:
            return rows_run(conn, batch_of(run)) == run.run_id
    except sqlalchemy.exc.SQLAlchemyError:
        return False


def results_saved_by(run: dg.DagsterRun, results_db: ResultsDatabase) -> bool:
    """`saved_results` in the results database the run itself wrote to. A
    SQLite file that is gone saved nothing, and is not opened: that would
    make it again, empty."""
    database = _run_database(run, results_db)
    file = preflight.sqlite_file(database.resolved_url)
    if file is not None and not file.exists():
        return False
    engine = database.engine()
    try:
        return saved_results(engine, run)
    finally:
        engine.dispose()


def build_incident(instance: dg.DagsterInstance, run: dg.DagsterRun, notifier: Notifier,
                   fallback_message: str) -> incidents.Incident:
    """Where the run stopped and why, as on-call reads it."""
    stop = stop_point(instance, run.run_id)
    message = stop.message or fallback_message
    return incidents.Incident(
        run_id=run.run_id,
        batch_key=batch_of(run),
        phase=stop.phase or "run",
        kind=incidents.classify(stop.phase, stop.error_type, message),
        error_type=stop.error_type or "RunFailure",
        cause=incidents.one_line(message, stop.error_type),
        run_url=f"{notifier.ui_base}/runs/{run.run_id}",
    )


def write_incident(instance: dg.DagsterInstance, run: dg.DagsterRun, incident: incidents.Incident,
                   results_db: ResultsDatabase, log) -> bool:
    """The incident row, or the run tagged as owing one when the database is
    unreachable (`pending_incidents_sensor` writes it later)."""
    try:
        incidents.save_incident(_run_database(run, results_db).resolved_url, incident)
    except Exception as exc:
        instance.add_run_tags(run.run_id, {INCIDENT_TAG: "pending"})
        log.error(f"incident of run {run.run_id} not written yet ({type(exc).__name__}: "
                  f"{incidents.one_line(str(exc))}); pending_incidents_sensor retries it")
        return False
    instance.add_run_tags(run.run_id, {INCIDENT_TAG: "written"})
    return True


def report_incident(context, run: dg.DagsterRun, results_db: ResultsDatabase, notifier: Notifier,
                    fallback_message: str) -> None:
    """Tag the run with where it stopped and why, tell on-call, record it."""
    incident = build_incident(context.instance, run, notifier, fallback_message)
    tags = {PHASE_TAG: incident.phase, KIND_TAG: incident.kind}
    # Its worker lost after the commit (the code server that launched it
    # failed it, or the dead-worker sensor did): the results are the batch's.
    # A run already tagged so needs no second look at the database.
    if incident.kind == "infra" and (saved_its_results(run) or results_saved_by(run, results_db)):
        tags[RESULTS_SAVED_TAG] = run.run_id
        if RESULTS_SAVED.casefold() not in incident.cause.casefold():
            incident = dataclasses.replace(incident, cause=f"{incident.cause}; {RESULTS_SAVED}")
    # Lost while its save held its retries at 0: Dagster has decided by now (`dagster/will_retry`).
    tags.update(restored_retries(context.instance, run))
    context.instance.add_run_tags(run.run_id, tags)
    context.log.info(incident.text())
    # The alert goes out before the database write: a database outage is the
    # failure on-call most needs to hear about, and it would also stop the write.
    try:
        notifier.send(incident.text(), **incident.as_dict())
    except Exception as exc:  # the tags and the incident row still tell the story
        context.log.error(f"webhook notification failed: {exc}")
    write_incident(context.instance, run, incident, results_db, context.log)


@dg.sensor(
    minimum_interval_seconds=PENDING_INCIDENTS_POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes the incident rows of failed runs whose results database was unreachable when they failed.",
)
def pending_incidents_sensor(
    context: dg.SensorEvaluationContext, results_db: ResultsDatabase, notifier: Notifier
) -> dg.SensorResult:
    filters = dg.RunsFilter(job_name=JOB_NAME, tags={INCIDENT_TAG: "pending"})
    written, waiting = [], []
    for run in context.instance.get_runs(filters=filters, limit=100):
        incident = build_incident(context.instance, run, notifier, "run failed")
        (written if write_incident(context.instance, run, incident, results_db, context.log) else waiting).append(run.run_id)
    if not written and not waiting:
        return dg.SensorResult(skip_reason="no pending incidents")
    parts = [f"written: {', '.join(written)}"] * bool(written) + [f"still pending: {', '.join(waiting)}"] * bool(waiting)
    return dg.SensorResult(skip_reason="; ".join(parts))


# Runs started from a terminal (`loan-engine run`, `dagster job execute`) carry
# no code-location origin, and a sensor limited to `monitored_jobs` would never
# see them: watch every run and keep the loan engine's.
@dg.run_failure_sensor(
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Explains each failed loan engine run: batch, phase, data/code/infra; tags it, records it, notifies.",
)
def loan_engine_failure_sensor(
    context: dg.RunFailureSensorContext, results_db: ResultsDatabase, notifier: Notifier
) -> None:
    run = context.dagster_run
    if run.job_name == JOB_NAME:
        report_incident(context, run, results_db, notifier, context.failure_event.message or "run failed")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports loan engine runs that run monitoring stopped for exceeding their maximum run time.",
)
def loan_engine_timeout_sensor(
    context: dg.RunStatusSensorContext, results_db: ResultsDatabase, notifier: Notifier
) -> None:
    # Run monitoring cancels a hung run and then marks it failed; when the worker
    # acknowledges the cancel first, the run ends CANCELED and only this sensor sees it.
    # Runs a person canceled are not incidents.
    run = context.dagster_run
    if run.job_name != JOB_NAME or KIND_TAG in run.tags:
        return
    if "maximum runtime" in (stop_point(context.instance, run.run_id).message or "").casefold():
        report_incident(context, run, results_db, notifier, "run exceeded its maximum runtime")


@dg.sensor(
    minimum_interval_seconds=DEAD_WORKER_POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks STARTED loan engine runs FAILED once their worker stopped renewing the batch's lease.",
)
def dead_worker_sensor(context: dg.SensorEvaluationContext, results_db: ResultsDatabase) -> dg.SensorResult:
    """A live worker renews its batch's lease in the results database every
    few seconds, from whatever host, container or PID namespace it runs in.
    A run whose lease is silent for LOAN_ENGINE_DEAD_WORKER_SECONDS is failed
    and its lease revoked, so that its worker, should it still live, can no
    longer write; a STARTED run that holds no lease at all for that long
    (killed before it took one) is failed too."""
    grace = dead_worker_seconds()
    if context.cursor is None:
        # A daemon's first tick only looks: the failure sensor, starting at the
        # same time, must already be watching when the first run is failed.
        return dg.SensorResult(skip_reason="first tick: watching heartbeats from now on", cursor="{}")
    no_lease_since: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    still_waiting, marked = {}, []
    filters = dg.RunsFilter(job_name=JOB_NAME, statuses=[dg.DagsterRunStatus.STARTED])
    runs = [record.dagster_run for record in context.instance.get_run_records(filters=filters)]
    by_database: dict[str, tuple[ResultsDatabase, list[dg.DagsterRun]]] = {}
    for run in runs:
        database = _run_database(run, results_db)
        by_database.setdefault(database.resolved_url, (database, []))[1].append(run)
    for database, group in by_database.values():
        try:
            engine = database.engine()
            held = leases.holders(engine, [run.run_id for run in group])
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # Without the database nobody can tell a dead worker from a live one: fail nothing.
            context.log.error(f"results database unreachable, {len(group)} run(s) not checked: {exc}")
            still_waiting.update({run.run_id: no_lease_since[run.run_id] for run in group if run.run_id in no_lease_since})
            continue
        try:
            for run in group:
                holder = held.get(run.run_id)
                if holder is not None:
                    if holder.age <= grace:
                        continue
                    silence = f"sent no heartbeat for {holder.age:.0f}s (worker process {holder.pid} on {holder.host})"
                else:
                    seen = no_lease_since.get(run.run_id, now)
                    if now - seen <= grace:
                        still_waiting[run.run_id] = seen
                        continue
                    silence = f"has held no lease of its batch for {now - seen:.0f}s"
                current = context.instance.get_run_by_id(run.run_id)
                if current is None or current.status != dg.DagsterRunStatus.STARTED:
                    continue  # it finished while we looked
                # Revoke first: once the run is declared dead its worker must not write.
                leases.revoke(engine, batch_of(run), run.run_id)
                phase = stop_point(context.instance, run.run_id).phase or "before any phase"
                reason = (
                    f"Run worker disappeared: run {run.run_id} (batch {batch_of(run)}) {silence}, "
                    f"last phase {phase}. Marked FAILED by dead_worker_sensor; its batch lease is revoked."
                )
                saved = saved_results(engine, run)
                if saved:
                    reason += f" {RESULTS_SAVED[:1].upper()}{RESULTS_SAVED[1:]}."
                context.instance.report_engine_event(reason, current)
                report_dead_run_failed(context.instance, current, reason, saved=saved)
                context.log.warning(reason)
                marked.append(run.run_id)
        finally:
            engine.dispose()
    cursor = json.dumps(still_waiting, sort_keys=True)
    if marked:
        return dg.SensorResult(skip_reason=f"marked FAILED: {', '.join(marked)}", cursor=cursor)
    waiting = f"; {len(still_waiting)} run(s) without a lease, waiting {grace:g}s before failing" if still_waiting else ""
    return dg.SensorResult(skip_reason=f"no dead workers{waiting}", cursor=cursor)
