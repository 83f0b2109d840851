"""`loan-engine`: sample inboxes and batch runs from the command line."""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import gc
import json
import math
import os
import sys
from pathlib import Path

import click

from loan_engine_dagster.adapters.inbox import InboxUnreadable
from loan_engine_dagster.adapters.settings import setting
from loan_engine_dagster.rules.config import RulesFileError
from loan_engine_dagster.rules.errors import StructuralError
from loan_engine_dagster.rules.run_options import RunOptionError, check_irr_target, parse_pdate

def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or `.dagster_home/` in the current folder using the
    project's `dagster.yaml` when there is one."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = Path.cwd() / ".dagster_home"
    home.mkdir(exist_ok=True)
    project_yaml = Path.cwd() / "dagster.yaml"
    if project_yaml.is_file() and not (home / "dagster.yaml").exists():
        with contextlib.suppress(FileExistsError):  # another terminal's first run linked it just now
            (home / "dagster.yaml").symlink_to(project_yaml)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _date(ctx, param, value: str | None) -> dt.date | None:
    try:
        return parse_pdate(value)
    except RunOptionError as exc:
        raise click.BadParameter(exc.problem if exc.well_written else f"{value!r} is not a date in YYYY-MM-DD form") from None


def _irr_target(ctx, param, value: float | None) -> float | None:
    try:
        return check_irr_target(value)
    except RunOptionError as exc:
        raise click.BadParameter(str(exc)) from None


def _minutes(ctx, param, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a number of minutes")
    return value


@click.group()
def cli() -> None:
    """Weekly pre-funding review of a seller's loan files."""


def main() -> None:
    """Entry point of the `loan-engine` command."""
    # The imports of a run (Dagster, SQLAlchemy, pandas) create some 400,000
    # objects that live until exit, and Python's cyclic collector walked them
    # all again and again: six full collections, about 0.45 s of CPU in any
    # run, the smallest included. They hold no garbage cycles worth looking
    # for, so collection waits until a command's imports are done: every
    # command that does more than print an error calls _imports_done.
    gc.disable()
    try:
        _main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    # Python's own teardown of the modules a run loaded (Dagster, pandas,
    # Arrow) takes one to two seconds and does nothing a finished command
    # needs: by now the run record, reports and rows are written and closed.
    # The exit handlers still run, as on a normal exit: one hands the batch's
    # writer lease back.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# Objects allocated between two collections of the youngest generation
# (Python's default: 700). A run allocates millions (rows bound for the
# database, report cells, Dagster's events); collecting every 700 cost a
# 100k-loan run 0.2 to 0.5 s of CPU (README, Performance); peak memory
# stayed within its run-to-run spread.
YOUNGEST_GENERATION_THRESHOLD = 10_000


def _imports_done() -> None:
    """Collection resumes, with what the imports made left out of it for good."""
    gc.freeze()
    gc.set_threshold(YOUNGEST_GENERATION_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()


def _main() -> None:
    """A person gets one readable line, never a traceback (set
    LOAN_ENGINE_DEBUG=1 to see it)."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StructuralError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except InboxUnreadable as exc:  # raised before any run starts: nothing ran, as for a usage problem
        click.echo(str(exc), err=True)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("LOAN_ENGINE_DEBUG"):
            raise
        click.echo(f"loan-engine: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


@cli.command("sample-inbox")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--batch", callback=_date, help="Sale-notice date of the batch, YYYY-MM-DD (default 2026-02-19).")
@click.option("--loans", default=2000, show_default=True, type=click.IntRange(min=2), help="Offered loans, both platforms.")
@click.option("--existing", default=10000, show_default=True, type=click.IntRange(min=2), help="Existing assets.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed; the same seed gives the same files.")
@click.option("--stress", is_flag=True, help="Make about half the loans fail (large exception reports).")
def sample_inbox(directory: Path, batch, loans: int, existing: int, seed: int, stress: bool) -> None:
    """Write a complete, realistic inbox for one batch into DIRECTORY."""
    from loan_engine_dagster.adapters.sample import generate_inbox

    _imports_done()
    paths = generate_inbox(directory, batch=batch, loans=loans, existing=existing, seed=seed, stress=stress)
    click.echo(f"Wrote {len(paths)} files to {directory}")
    for path in sorted(set(paths.values())):
        click.echo(f"  {path.name}")


def _resolved_job():
    from loan_engine_dagster.definitions import defs

    return defs.resolve_job_def("loan_engine_job")


def print_summary(summary: dict, folder: str) -> None:
    from loan_engine_dagster.rules.reports import plan_lines

    click.echo(f"Batch {summary['batch']} (purchase date {summary['pdate']}, rules {summary['rules_version']})")
    click.echo(f"  loans offered:  {summary['loans_offered']:>8,}  balance {summary['balance_offered']:>18,.2f}")
    for disposition in ("to_purchase", "rejected"):
        row = summary["by_disposition"].get(disposition, {"loans": 0, "balance": 0.0})
        click.echo(f"  {disposition + ':':<15} {row['loans']:>8,}  balance {row['balance']:>18,.2f}")
    for reason, row in sorted(summary["by_rejection_criteria"].items()):
        click.echo(f"    {reason:<28} {row['loans']:>7,}  balance {row['balance']:>16,.2f}")
    for warning, count in sorted(summary.get("warnings", {}).items()):
        click.echo(f"  warning {warning:<24} {count:>7,}")
    for name in summary.get("empty_exhibits", []):
        click.echo(f"  warning: exhibit with no loan rows: {name}")
    failed = summary["eligibility"]["failed"]
    click.echo(f"  limits failed:  {len(failed)}" + (f"  ({', '.join(failed)})" if failed else ""))
    for platform, plan in summary.get("plan", {}).items():
        for line in plan_lines(platform, plan):
            click.echo(f"  {line}")
    click.echo(f"  outputs:        {folder}")


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from loan_engine_dagster.adapters.preflight import shown_url

    try:
        return make_url(url).password is not None
    except ArgumentError:
        raise click.UsageError(f"the results database URL is not a SQLAlchemy URL: {shown_url(url)}") from None


@cli.command("run")
@click.argument("batch_key")
@click.option("--inbox", help="Inbox folder [env LOAN_ENGINE_INBOX, default data/inbox].")
@click.option("--output-dir", help="Output root [env LOAN_ENGINE_OUTPUT_DIR, default data/outputs].")
@click.option("--database-url", help="Results database URL [env LOAN_ENGINE_DATABASE_URL, default sqlite:///data/results.db].")
@click.option("--pdate", callback=_date, help="Purchase date override, YYYY-MM-DD.")
@click.option("--irr-target", type=float, callback=_irr_target, help="IRR Support Target override, a percentage (e.g. 8.05).")
@click.option("--verbose", is_flag=True, help="Print Dagster's event log while the run goes.")
def run(batch_key: str, inbox, output_dir, database_url, pdate, irr_target, verbose) -> None:
    """Check BATCH_KEY's files, register the batch and run loan_engine_job as a Dagster run."""
    from loan_engine_dagster.adapters.inbox import empty_inbox_note, find_batch, parse_batch_key, require_inbox
    from loan_engine_dagster.orchestration.resources import RulesResource

    try:
        parse_batch_key(batch_key)
        rules = RulesResource().load()  # the run reads it again; refuse a bad file before starting one
    except (ValueError, RulesFileError) as exc:
        raise click.UsageError(str(exc)) from None
    inbox_path = Path(setting(inbox, "LOAN_ENGINE_INBOX")).resolve()
    output_root = Path(setting(output_dir, "LOAN_ENGINE_OUTPUT_DIR")).resolve()
    db_url = setting(database_url, "LOAN_ENGINE_DATABASE_URL")
    files = find_batch(require_inbox(inbox_path), batch_key, rules.inbox.tape_lookback_days)
    if not files.complete:
        click.echo(f"Batch {batch_key} is not complete in {inbox_path}: missing {', '.join(files.missing)}"
                   f"{empty_inbox_note(inbox_path)}", err=True)
        sys.exit(2)
    # The files are read while Dagster starts (adapters/files.py says how the
    # run knows they are still the same files).
    from loan_engine_dagster.adapters.files import read_ahead

    read_ahead([*files.exhibits.values(), files.tape, *files.reference.values()])

    ensure_dagster_home()
    import dagster as dg

    from loan_engine_dagster.adapters.incidents import classify, one_line
    from loan_engine_dagster.adapters.watch import batch_fingerprint
    from loan_engine_dagster.definitions import defs  # noqa: F401  the code location is start-up too (_imports_done)
    from loan_engine_dagster.orchestration.partitions import register_batches
    from loan_engine_dagster.orchestration.run_records import IN_PROGRESS, MAX_RETRIES_TAG, PARTITION_TAG, batch_tags, stop_point

    resources = {
        "inbox": {"config": {"path": str(inbox_path)}},
        "outputs": {"config": {"root": str(output_root)}},
    }
    if _has_password(db_url):
        # Run config lands in run storage and the UI: a credential travels only
        # through this process's environment, which the in-process worker reads.
        os.environ["LOAN_ENGINE_DATABASE_URL"] = db_url
    else:
        resources["results_db"] = {"config": {"url": db_url}}  # lets the failure sensor find the run's database
    run_config = {
        "resources": resources,
        # The event log always goes to the instance (UI); the terminal gets it only on request.
        "loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}},
        "ops": {"normalized_loans": {"config": {"pdate": pdate.isoformat() if pdate else None, "irr_target": irr_target}}},
    }
    with dg.DagsterInstance.get() as instance:
        # This run executes here, outside the daemon's queue: keep the queue's
        # promise that two runs of one batch never overlap.
        busy = instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS), tags={PARTITION_TAG: batch_key}))
        if busy:
            click.echo(
                f"Batch {batch_key} already has run {busy[0].run_id} in progress ({busy[0].status.value}). "
                "Wait for it, or if it is stuck: loan-engine runs mark RUN_ID --as failed",
                err=True,
            )
            sys.exit(2)
        # Tagged like the sensor's runs, so the sensor never runs these exact
        # files again. Hashed before the batch is registered: a file this
        # account may not read stops the command here (InboxUnreadable).
        tags = batch_tags(batch_key, str(inbox_path), batch_fingerprint(files))
        register_batches(instance, [batch_key])
        click.echo(f"Running loan_engine_job for batch {batch_key} (Dagster home {os.environ['DAGSTER_HOME']})")
        _imports_done()
        with dg.execute_job(
            dg.reconstructable(_resolved_job),
            instance=instance,
            run_config=run_config,
            # The daemon cannot relaunch a run started from a terminal; whoever
            # started it sees the failure and re-runs.
            tags={PARTITION_TAG: batch_key, MAX_RETRIES_TAG: "0", **tags},
            raise_on_error=False,
        ) as result:
            run_id = result.run_id
            if not result.success:
                stop = stop_point(instance, run_id)
                kind = classify(stop.phase, stop.error_type, stop.message)
                cause = one_line(stop.message, stop.error_type)
                click.echo(f"Run {run_id} FAILED in phase {stop.phase or 'run'} [{kind}]: {cause}", err=True)
                sys.exit(1)
    folder = output_root / batch_key
    print_summary(json.loads((folder / "run_summary.json").read_text()), str(folder))
    click.echo(f"  run id:         {run_id}")
    click.echo(f"  open the UI:    bash scripts/ui.sh   (then {setting(None, 'LOAN_ENGINE_UI_URL')}/runs/{run_id})")


# ---------------------------------------------------------------- stuck runs


@cli.group()
def runs() -> None:
    """Find stuck or failed runs and close them (against the storage dagster.yaml configures)."""


def _instance():
    ensure_dagster_home()
    import dagster as dg

    instance = dg.DagsterInstance.get()
    _imports_done()  # `runs list` reads each run's event log: cycles to collect
    return instance


def _duration(record) -> str:
    import time

    if not record.start_time:
        return "-"
    seconds = int((record.end_time or time.time()) - record.start_time)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _started(record) -> str:
    if not record.start_time:
        return "-"
    return dt.datetime.fromtimestamp(record.start_time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@runs.command("list")
@click.option("--status", type=click.Choice(["running", "failed", "canceled", "success", "queued"]), help="Only runs in this state.")
@click.option("--older-than-minutes", type=click.FloatRange(min=0), callback=_minutes, help="Only runs started at least this long ago.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Newest runs to look at.")
def list_runs(status, older_than_minutes, limit) -> None:
    """Loan engine runs, newest first, with where each stopped and why."""
    from loan_engine_dagster.orchestration import run_records as rr

    with _instance() as instance:
        records = rr.loan_engine_runs(instance, rr.STATUS_NAMES[status] if status else None, older_than_minutes, limit)
        header = ("RUN ID", "BATCH", "STATUS", "STARTED", "DURATION", "LAST PHASE", "KIND", "INPUT FOLDER")
        rows = [
            (r.dagster_run.run_id, rr.batch_of(r.dagster_run), r.dagster_run.status.value, _started(r), _duration(r),
             rr.last_phase(instance, r.dagster_run), r.dagster_run.tags.get(rr.KIND_TAG, "-"),
             r.dagster_run.tags.get(rr.INBOX_TAG, "-"))
            for r in records
        ]
    if not rows:
        click.echo("No loan engine runs match.")
        return
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


@runs.command("mark")
@click.argument("run_id", required=False)
@click.option("--as", "as_status", type=click.Choice(["failed", "canceled"]), required=True, help="The state to put the run in.")
@click.option("--older-than-minutes", type=click.FloatRange(min=0), callback=_minutes,
              help="Every in-progress run started at least this long ago.")
@click.option("--reason", default="closed by hand with loan-engine runs mark", show_default=True, help="Shown in the run's event log.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def mark(run_id, as_status, older_than_minutes, reason, yes) -> None:
    """Mark RUN_ID, or every in-progress run older than N minutes, failed or canceled."""
    from sqlalchemy.exc import SQLAlchemyError

    from loan_engine_dagster.orchestration import run_records as rr
    from loan_engine_dagster.orchestration.failures import RESULTS_SAVED, results_saved_by, revoke_lease
    from loan_engine_dagster.orchestration.resources import ResultsDatabase

    if (run_id is None) == (older_than_minutes is None):
        raise click.UsageError("give either RUN_ID or --older-than-minutes N, not both and not neither")
    with _instance() as instance:
        if run_id is not None:
            run = instance.get_run_by_id(run_id)
            if run is None:
                click.echo(f"No run with id {run_id} in this Dagster instance ({os.environ['DAGSTER_HOME']}).", err=True)
                sys.exit(1)
            if run.status not in rr.IN_PROGRESS:
                click.echo(f"Run {run_id} is {run.status.value}, not in progress: nothing to mark.", err=True)
                sys.exit(1)
            targets = [run]
        else:
            targets = [r.dagster_run for r in rr.loan_engine_runs(instance, list(rr.IN_PROGRESS), older_than_minutes, 1000)]
            if not targets:
                click.echo(f"No in-progress loan engine run started more than {older_than_minutes:g} minutes ago.")
                return
            for run in targets:
                click.echo(f"  {run.run_id}  batch {rr.batch_of(run)}  {run.status.value}  last phase {rr.last_phase(instance, run)}")
            if not yes and not click.confirm(f"Mark these {len(targets)} run(s) {as_status}?", default=False):
                click.echo("Nothing changed.")
                sys.exit(1)
        for run in targets:
            # The lease first: a worker that still lives must not save after being marked.
            try:
                revoked = "its batch lease is revoked" if revoke_lease(run, ResultsDatabase()) else "it held no batch lease"
            except SQLAlchemyError as exc:
                revoked = (f"its batch lease could not be revoked (results database: {type(exc).__name__}); a worker "
                           "that still lives can write until its heartbeat goes stale")
            saved = results_saved_by(run, ResultsDatabase())
            try:
                rr.mark_run(instance, run, as_status, f"{reason}; {RESULTS_SAVED}" if saved else reason, saved=saved)
            except SQLAlchemyError as exc:
                if "database is locked" not in str(exc):
                    raise
                # A worker frozen in the middle of writing its event log keeps
                # that SQLite file locked for as long as it is frozen.
                click.echo(
                    f"Run {run.run_id} not marked: its event log is locked by its worker, which is frozen in the middle "
                    f"of writing it ({revoked}); end the worker's process, then mark the run again", err=True)
                sys.exit(1)
            said = f"; {RESULTS_SAVED}" if saved else ""
            click.echo(f"Marked {run.run_id} {as_status}: {reason}; {revoked}{said}")


if __name__ == "__main__":
    main()
