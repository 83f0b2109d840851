"""Reports and database rows move together: the output folder is published
only with the commit of the batch's rows, and names the run they belong to."""

import json
import os
import shutil
import signal
import time

import dagster as dg
import pytest
from sqlalchemy import select, text

from loan_engine_dagster.adapters import database
from loan_engine_dagster.cli import _resolved_job
from loan_engine_dagster.orchestration.failures import dead_worker_sensor
from loan_engine_dagster.orchestration.resources import ResultsDatabase
from loan_engine_dagster.orchestration.run_records import stop_point
from test_failure_handling import ROOT, big_inbox, instance_of, kill_in_phase, start_run  # noqa: F401  (a fixture)

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


@pytest.mark.slow
def test_a_worker_declared_dead_while_alive_writes_and_publishes_nothing(big_inbox, tmp_path, monkeypatch):
    """A worker that stalls (paused VM, network cut) past the grace is declared
    dead; when it wakes up its lease is gone: the save refuses, nothing is
    published, and the run stays FAILED instead of turning SUCCESS."""
    inbox = big_inbox  # seconds of reading: time to stall the worker mid-run
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    grace = 4
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), LOAN_ENGINE_DEAD_WORKER_SECONDS=str(grace))
    monkeypatch.setenv("LOAN_ENGINE_DEAD_WORKER_SECONDS", str(grace))
    out, results_url = tmp_path / "out", f"sqlite:///{tmp_path / 'results.db'}"
    process = start_run(env, inbox, out, results_url)
    run_id = kill_in_phase(process, env, "reference_data", kill=False)
    instance = instance_of(env)
    try:
        os.killpg(process.pid, signal.SIGSTOP)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
        time.sleep(grace + 2)
        result = dead_worker_sensor(dg.build_sensor_context(instance=instance, cursor="{}", resources={"results_db": ResultsDatabase(url=results_url)}))
        assert result.skip_reason.skip_message == f"marked FAILED: {run_id}"
        os.killpg(process.pid, signal.SIGCONT)
        output = process.communicate(timeout=600)[0].decode()
        assert process.returncode == 1, output
        assert f"Run {run_id} no longer holds batch {BATCH}: its lease was revoked" in output
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert stop_point(instance, run_id).error_type == "BatchLeaseLost"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGKILL)
        instance.dispose()
    assert not (out / BATCH).exists()  # nothing published
    engine = database.engine_for(results_url)
    assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 0
    engine.dispose()


def _inbox_with_a_broken_tape(sample_inbox, tmp_path):
    """(inbox, output folder, results URL, tape, the tape's good bytes): the
    sample batch with its tape replaced by a servicer's broken export."""
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    tape = next(inbox.glob("Tape20Loans_*"))
    good = tape.read_bytes()
    tape.write_text("a,b\n1,2\n")
    return inbox, tmp_path / "out", f"sqlite:///{tmp_path / 'results.db'}", tape, good


def test_a_re_execution_after_the_seller_fixed_a_file_reads_it_and_says_so(sample_inbox, tmp_path):
    """A re-execution from the failed step after the seller fixed a file
    reads the files as they are now and is tagged with their fingerprint,
    not the failed delivery's. (Re-executed through execute_job, it does not
    inherit its parent's fingerprint tag; the UI's re-execution does: the
    next test.)"""
    from loan_engine_dagster.adapters.inbox import find_batch
    from loan_engine_dagster.adapters.watch import batch_fingerprint
    from loan_engine_dagster.orchestration.run_records import FINGERPRINT_TAG, batch_tags, short_fingerprint
    from loan_engine_dagster.rules.config import default_rules

    inbox, out, results_url, tape, good = _inbox_with_a_broken_tape(sample_inbox, tmp_path)
    rules = default_rules()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        # Tagged at its start with the delivery it reads, as the sensor and `loan-engine run` do.
        spoiled = batch_tags(BATCH, str(inbox), batch_fingerprint(find_batch(inbox, BATCH, rules.inbox.tape_lookback_days)))
        with dg.execute_job(dg.reconstructable(_resolved_job), instance=instance, tags={"dagster/partition": BATCH, **spoiled},
                            run_config=run_config(inbox, out, results_url, "2026-02-24")) as result:
            first, ok = result.run_id, result.success
        assert not ok
        tape.write_bytes(good)  # fixed
        options = dg.ReexecutionOptions.from_failure(first, instance)
        second, ok = execute(instance, run_config(inbox, out, results_url, "2026-02-24"), reexecution_options=options)
        assert ok
        files = find_batch(inbox, BATCH, rules.inbox.tape_lookback_days)
        assert instance.get_run_by_id(second).tags[FINGERPRINT_TAG] == short_fingerprint(batch_fingerprint(files))


def test_a_re_execution_from_the_ui_after_the_seller_fixed_a_file_is_re_tagged_with_a_warning(sample_inbox, tmp_path):
    """The UI's "re-execute from failure" (and the daemon's run retries)
    copies the parent's tags, the delivery's fingerprint among them. After
    the seller fixed the file, that fingerprint no longer matches what the
    re-execution reads: it is re-tagged with the files read and says so in
    its log, instead of failing as if the inbox had changed under it."""
    from dagster._core.execution.api import execute_run
    from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from loan_engine_dagster.adapters.inbox import find_batch
    from loan_engine_dagster.adapters.watch import batch_fingerprint
    from loan_engine_dagster.orchestration.run_records import FINGERPRINT_TAG, batch_tags, short_fingerprint
    from loan_engine_dagster.rules.config import default_rules

    inbox, out, results_url, tape, good = _inbox_with_a_broken_tape(sample_inbox, tmp_path)
    rules = default_rules()
    broken = batch_fingerprint(find_batch(inbox, BATCH, rules.inbox.tape_lookback_days))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        with dg.execute_job(dg.reconstructable(_resolved_job), instance=instance,
                            tags={"dagster/partition": BATCH, **batch_tags(BATCH, str(inbox), broken)},
                            run_config=run_config(inbox, out, results_url, "2026-02-24")) as result:
            parent = result.dagster_run
        assert parent.status == dg.DagsterRunStatus.FAILURE
        tape.write_bytes(good)  # fixed

        origin = LoadableTargetOrigin(module_name="loan_engine_dagster.definitions", working_directory=str(ROOT))
        with in_process_test_workspace(instance, origin) as workspace:
            location = workspace.get_code_location(workspace.code_location_names[0])
            remote_job = location.get_repository("__repository__").get_full_job("loan_engine_job")
            child = instance.create_reexecuted_run(
                request_context=workspace, parent_run=parent, code_location=location, remote_job=remote_job,
                strategy=ReexecutionStrategy.FROM_FAILURE, use_parent_run_tags=True,  # as the UI's re-execute does
            )
        assert child.tags[FINGERPRINT_TAG] == short_fingerprint(broken)  # inherited: the branch under test is reached
        execute_run(dg.reconstructable(_resolved_job), child, instance)
        child = instance.get_run_by_id(child.run_id)
        assert child.status == dg.DagsterRunStatus.SUCCESS
        fixed = short_fingerprint(batch_fingerprint(find_batch(inbox, BATCH, rules.inbox.tape_lookback_days)))
        assert child.tags[FINGERPRINT_TAG] == fixed != short_fingerprint(broken)
        warnings = [e.user_message for e in instance.all_logs(child.run_id) if "this re-execution read" in (e.user_message or "")]
        assert warnings == [f"the batch's files changed since run {parent.run_id} (fingerprint {short_fingerprint(broken)}): "
                            f"this re-execution read {fixed}, and is tagged so"]
    assert (out / BATCH / "loan_decisions.csv").is_file()
