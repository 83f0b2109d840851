"""Reports and database rows move together: the output folder is published
only with the commit of the batch's rows, and names the run they belong to."""

import json

import dagster as dg
import pytest
from sqlalchemy import select, text

from loan_engine_dagster.adapters import database
from loan_engine_dagster.cli import _resolved_job

BATCH = "2026-02-19"
ABORT_TRIGGER = "CREATE TRIGGER refuse_facts BEFORE INSERT ON loan_facts BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END"


def run_config(inbox, out, results_url, pdate):
    return {
        "resources": {"inbox": {"config": {"path": str(inbox)}}, "outputs": {"config": {"root": str(out)}},
                      "results_db": {"config": {"url": results_url, "connect_retries": 0}}},
        "ops": {"normalized_loans": {"config": {"pdate": pdate}}},
    }


def execute(instance, config, **kwargs):
    with dg.execute_job(dg.reconstructable(_resolved_job), instance=instance, run_config=config,
                        tags={"dagster/partition": BATCH}, **kwargs) as result:
        return result.run_id, result.success


def delivered(out, results_url):
    """(run id named by the folder, purchase date of the folder, run ids of the rows, hidden folders)"""
    summary = json.loads((out / BATCH / "run_summary.json").read_text())
    engine = database.engine_for(results_url)
    with engine.connect() as conn:
        rows = {table.name: set(conn.execute(select(table.c.run_id).where(table.c.batch_key == BATCH)).scalars())
                for table in database.BATCH_TABLES}
    engine.dispose()
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    return summary["run_id"], summary["pdate"], rows, hidden


@pytest.mark.slow
def test_failed_save_keeps_the_previous_runs_reports_and_reexecution_publishes_both(sample_inbox, tmp_path):
    out, results_url = tmp_path / "out", f"sqlite:///{tmp_path / 'results.db'}"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        first, ok = execute(instance, run_config(sample_inbox, out, results_url, "2026-02-24"))
        assert ok
        assert delivered(out, results_url) == (first, "2026-02-24", {t.name: {first} for t in database.BATCH_TABLES}, [])

        # A killed run's staging folder, and a database that refuses the next save.
        (out / f".{BATCH}.staging-killed-run").mkdir()
        (out / f".{BATCH}.staging-killed-run" / "loan_decisions.csv").write_text("half")
        engine = database.engine_for(results_url)
        with engine.begin() as conn:
            conn.execute(text(ABORT_TRIGGER))
        second, ok = execute(instance, run_config(sample_inbox, out, results_url, "2026-02-25"))
        assert not ok
        [failure] = instance.all_logs(second, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert failure.step_key == "results_database" and "disk quota exceeded" in str(failure.dagster_event.event_specific_data.error)
        # Folder and rows still belong to the first run; the killed run's leftovers are gone.
        assert delivered(out, results_url) == (
            first, "2026-02-24", {t.name: {first} for t in database.BATCH_TABLES}, [f".{BATCH}.staging-{second}"]
        )

        # The database is fixed; re-executing from the failed step publishes the staged reports with the rows.
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_facts"))
        engine.dispose()
        options = dg.ReexecutionOptions.from_failure(second, instance)
        third, ok = execute(instance, run_config(sample_inbox, out, results_url, "2026-02-25"), reexecution_options=options)
        assert ok
        steps = {e.dagster_event.step_key for e in instance.all_logs(third, of_type=dg.DagsterEventType.STEP_START)}
        assert steps == {"results_database"}
        assert delivered(out, results_url) == (third, "2026-02-25", {t.name: {third} for t in database.BATCH_TABLES}, [])
