"""`loan-engine`: sample inboxes and batch runs from the command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import click

from loan_engine_dagster.rules.config import RulesFileError, load_rules
from loan_engine_dagster.rules.errors import StructuralError

DEFAULTS = {
    "LOAN_ENGINE_INBOX": "data/inbox",
    "LOAN_ENGINE_OUTPUT_DIR": "data/outputs",
    "LOAN_ENGINE_DATABASE_URL": "sqlite:///data/results.db",
}


def _setting(value: str | None, variable: str) -> str:
    return value or os.environ.get(variable) or DEFAULTS[variable]


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or `.dagster_home/` in the current folder using the
    project's `dagster.yaml` when there is one."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = Path.cwd() / ".dagster_home"
    home.mkdir(exist_ok=True)
    project_yaml = Path.cwd() / "dagster.yaml"
    if project_yaml.is_file() and not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").symlink_to(project_yaml)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _date(ctx, param, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from None


@click.group()
def main() -> None:
    """Weekly pre-funding review of a seller's loan files."""


@main.command("sample-inbox")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--batch", callback=_date, help="Sale-notice date of the batch, YYYY-MM-DD (default 2026-02-19).")
@click.option("--loans", default=2000, show_default=True, type=click.IntRange(min=2), help="Offered loans, both platforms.")
@click.option("--existing", default=10000, show_default=True, type=click.IntRange(min=2), help="Existing assets.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed; the same seed gives the same files.")
@click.option("--stress", is_flag=True, help="Make about half the loans fail (large exception reports).")
def sample_inbox(directory: Path, batch, loans: int, existing: int, seed: int, stress: bool) -> None:
    """Write a complete, realistic inbox for one batch into DIRECTORY."""
    from loan_engine_dagster.adapters.sample import generate_inbox

    paths = generate_inbox(directory, batch=batch, loans=loans, existing=existing, seed=seed, stress=stress)
    click.echo(f"Wrote {len(paths)} files to {directory}")
    for path in sorted(set(paths.values())):
        click.echo(f"  {path.name}")


def _resolved_job():
    from loan_engine_dagster.definitions import defs

    return defs.resolve_job_def("loan_engine_job")


def _failure_text(result) -> tuple[str, str]:
    """(phase, one-line cause) of a failed run, the user's words first."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error.cause is not None:
                error = error.cause
            message = error.message.strip().splitlines()[-1] if error.message else error.cls_name
            prefix = f"{error.cls_name}: "
            return event.step_key, message.removeprefix(prefix).removeprefix("loan_engine_dagster.rules.errors.StructuralError: ")
    return "unknown", "the run failed before any phase started (see the run's event log)"


def print_summary(summary: dict, folder: str) -> None:
    click.echo(f"Batch {summary['batch']} (purchase date {summary['pdate']}, rules {summary['rules_version']})")
    click.echo(f"  loans offered:  {summary['loans_offered']:>8,}  balance {summary['balance_offered']:>18,.2f}")
    for disposition in ("to_purchase", "rejected"):
        row = summary["by_disposition"].get(disposition, {"loans": 0, "balance": 0.0})
        click.echo(f"  {disposition + ':':<15} {row['loans']:>8,}  balance {row['balance']:>18,.2f}")
    for reason, row in sorted(summary["by_rejection_criteria"].items()):
        click.echo(f"    {reason:<28} {row['loans']:>7,}  balance {row['balance']:>16,.2f}")
    for warning, count in sorted(summary.get("warnings", {}).items()):
        click.echo(f"  warning {warning:<24} {count:>7,}")
    failed = summary["eligibility"]["failed"]
    click.echo(f"  limits failed:  {len(failed)}" + (f"  ({', '.join(failed)})" if failed else ""))
    click.echo(f"  outputs:        {folder}")


@main.command("run")
@click.argument("batch_key")
@click.option("--inbox", help="Inbox folder [env LOAN_ENGINE_INBOX, default data/inbox].")
@click.option("--output-dir", help="Output root [env LOAN_ENGINE_OUTPUT_DIR, default data/outputs].")
@click.option("--database-url", help="Results database URL [env LOAN_ENGINE_DATABASE_URL, default sqlite:///data/results.db].")
@click.option("--pdate", callback=_date, help="Purchase date override, YYYY-MM-DD.")
@click.option("--irr-target", type=float, help="IRR Support Target override.")
@click.option("--verbose", is_flag=True, help="Print Dagster's event log while the run goes.")
def run(batch_key: str, inbox, output_dir, database_url, pdate, irr_target, verbose) -> None:
    """Check BATCH_KEY's files, register the batch and run loan_engine_job as a Dagster run."""
    from loan_engine_dagster.adapters.inbox import find_batch, parse_batch_key

    try:
        parse_batch_key(batch_key)
        rules = load_rules(os.environ.get("LOAN_ENGINE_RULES_FILE") or None)
    except (ValueError, RulesFileError) as exc:
        raise click.UsageError(str(exc)) from None
    inbox_path = Path(_setting(inbox, "LOAN_ENGINE_INBOX")).resolve()
    output_root = Path(_setting(output_dir, "LOAN_ENGINE_OUTPUT_DIR")).resolve()
    db_url = _setting(database_url, "LOAN_ENGINE_DATABASE_URL")
    files = find_batch(inbox_path, batch_key, rules.inbox.tape_lookback_days)
    if not files.complete:
        click.echo(f"Batch {batch_key} is not complete in {inbox_path}: missing {', '.join(files.missing)}", err=True)
        sys.exit(2)

    ensure_dagster_home()
    import dagster as dg

    from loan_engine_dagster.orchestration.partitions import batches
    from loan_engine_dagster.orchestration.sensors import batch_tags

    run_config = {
        "resources": {
            "inbox": {"config": {"path": str(inbox_path)}},
            "outputs": {"config": {"root": str(output_root)}},
            "results_db": {"config": {"url": db_url}},
        },
        # The event log always goes to the instance (UI); the terminal gets it only on request.
        "loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}},
        "ops": {"normalized_loans": {"config": {"pdate": pdate.isoformat() if pdate else None, "irr_target": irr_target}}},
    }
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(batches.name, [batch_key])
        click.echo(f"Running loan_engine_job for batch {batch_key} (Dagster home {os.environ['DAGSTER_HOME']})")
        with dg.execute_job(
            dg.reconstructable(_resolved_job),
            instance=instance,
            run_config=run_config,
            tags={"dagster/partition": batch_key, **batch_tags(batch_key, str(inbox_path))},
        ) as result:
            run_id = result.run_id
            if not result.success:
                phase, cause = _failure_text(result)
                click.echo(f"Run {run_id} FAILED in phase {phase}: {cause}", err=True)
                sys.exit(1)
    folder = output_root / batch_key
    print_summary(json.loads((folder / "run_summary.json").read_text()), str(folder))
    click.echo(f"  run id:         {run_id}")
    click.echo("  open the UI:    dagster dev   (then http://127.0.0.1:3000/runs)")


if __name__ == "__main__":
    main()
