"""Intermediate results: shared in memory within a run, pickled for re-execution
from a failed step in another process."""

import contextlib
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from loan_engine_dagster.adapters import database

BIN = Path(sys.executable).parent
BATCH = "2026-02-19"

REEXECUTE = textwrap.dedent("""
    import sys
    import dagster as dg
    from loan_engine_dagster.cli import _resolved_job
    with dg.DagsterInstance.get() as instance:
        options = dg.ReexecutionOptions.from_failure(sys.argv[1], instance)
        parent = instance.get_run_by_id(sys.argv[1])
        # As the UI's "re-execute from failure" does: the same batch.
        tags = {"dagster/partition": parent.tags["dagster/partition"]}
        with dg.execute_job(dg.reconstructable(_resolved_job), instance=instance, reexecution_options=options,
                            tags=tags) as result:
            steps = sorted({e.step_key for e in result.all_events if e.event_type_value == "STEP_START"})
            print("OK" if result.success else "FAILED", ",".join(steps))
            for event in result.all_events:
                if event.event_type_value == "STEP_FAILURE":
                    print(event.step_failure_data.error.to_string())
""")
# As the daemon's retries do (the job's retry strategy ALL_STEPS): every step again.
REEXECUTE_ALL = REEXECUTE.replace(
    "dg.ReexecutionOptions.from_failure(sys.argv[1], instance)",
    "dg.ReexecutionOptions(parent_run_id=sys.argv[1], step_selection=['*results_database'])",
)


def _fresh_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME"))}
    home = tmp_path / "dagster_home"
    home.mkdir()
    env["DAGSTER_HOME"] = str(home)
    return home, env


def _run(sample_inbox, tmp_path, env):
    db = tmp_path / "results.db"
    out = tmp_path / "out"
    run = subprocess.run(
        [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox), "--output-dir", str(out),
         "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    return run, db, out


def _run_whose_save_fails(sample_inbox, tmp_path):
    """A real `loan-engine run` that fails in its last step, after every phase
    was pickled; the save works again afterwards. Returns home, env, output root."""
    home, env = _fresh_home(tmp_path)
    engine = database.engine_for(f"sqlite:///{tmp_path / 'results.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_facts BEFORE INSERT ON loan_facts BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    run, _, out = _run(sample_inbox, tmp_path, env)
    assert run.returncode == 1 and "FAILED in phase results_database" in run.stderr, run.stdout + run.stderr
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_facts"))
    engine.dispose()
    return home, env, out


@contextlib.contextmanager
def _instance(home):
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        os.environ.pop("DAGSTER_HOME", None)


def _reexecute(script, run_id, env):
    """Re-execute `run_id` in a new process, as the UI does; prints OK/FAILED and the steps it ran."""
    return subprocess.run([sys.executable, "-c", script, run_id], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_failed_run_reexecutes_from_its_failed_step_in_a_new_process(sample_inbox, tmp_path):
    home, env, out = _run_whose_save_fails(sample_inbox, tmp_path)
    written = pickle.loads((home / "storage" / "eligibility" / BATCH).read_bytes())
    assert len(written.loans) == 600  # the phases before the failure were kept on disk

    with _instance(home) as instance:
        [failed] = instance.get_runs()
    again = _reexecute(REEXECUTE, failed.run_id, env)
    assert again.stdout.split() == ["OK", "results_database"], again.stdout + again.stderr
    decisions = pd.read_csv(out / BATCH / "loan_decisions.csv", dtype=str, keep_default_na=False)
    assert decisions["seller_loan_number"].tolist() == written.loans["seller_loan_number"].tolist()


@pytest.mark.slow
def test_a_pickle_that_cannot_be_written_fails_the_run_before_anything_is_committed(sample_inbox, tmp_path):
    """Pickles are written behind the steps; the last step waits for them
    before it saves or publishes anything. Were it not to, the run would
    commit the batch and then fail, or succeed with a phase missing."""
    home, env = _fresh_home(tmp_path)
    blocked = home / "storage" / "eligibility" / BATCH  # a folder where eligibility's pickle goes
    (blocked / "in-the-way").mkdir(parents=True)
    run, db, out = _run(sample_inbox, tmp_path, env)
    assert run.returncode == 1 and "FAILED in phase results_database" in run.stderr, run.stdout + run.stderr
    assert str(blocked) in run.stderr
    engine = database.engine_for(f"sqlite:///{db}")
    with engine.connect() as conn:
        tables = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
        facts = conn.execute(text("SELECT COUNT(*) FROM loan_facts")).scalar() if "loan_facts" in tables else 0
    engine.dispose()
    assert facts == 0
    assert not (out / BATCH).exists()


def test_a_full_disk_under_the_stored_results_leaves_no_partial_file_and_names_it(sample_inbox, tmp_path, full_disk):
    """Past bug: `[Errno 28] No space left on device` naming no file, and the
    half-written pickle left behind kept the disk full after the run."""
    home, env = _fresh_home(tmp_path)
    (home / "storage").symlink_to(full_disk)
    run, db, out = _run(sample_inbox, tmp_path, env)
    assert run.returncode == 1, run.stdout + run.stderr
    said = next(line for line in run.stderr.splitlines() if "FAILED in phase" in line)
    assert "[infra]: writing " in said and f"{home / 'storage'}/" in said and said.endswith("No space left on device"), said
    assert [p.name for p in full_disk.rglob("*.partial")] == []
    assert not (out / BATCH).exists()


@pytest.mark.slow
def test_a_result_its_dead_worker_never_wrote_is_named_and_a_full_retry_recovers(sample_inbox, tmp_path):
    """The moment a worker can die in: its step reported success, its pickle
    was not yet on disk. Re-executing from the failed step says what is
    missing (kind infra); the daemon's retries run every step (the job's
    retry strategy), which needs no pickle."""
    from loan_engine_dagster.adapters.incidents import classify
    from loan_engine_dagster.definitions import defs
    from loan_engine_dagster.orchestration.run_records import stop_point

    assert defs.resolve_job_def("loan_engine_job").tags["dagster/retry_strategy"] == "ALL_STEPS"
    home, env, out = _run_whose_save_fails(sample_inbox, tmp_path)
    (home / "storage" / "exports" / BATCH).unlink()  # as if the worker died before writing it

    with _instance(home) as instance:
        [failed] = instance.get_runs()
    again = _reexecute(REEXECUTE, failed.run_id, env)
    assert again.stdout.split()[:2] == ["FAILED", "results_database"], again.stdout + again.stderr
    assert "StoredResultMissing" in again.stdout and "Run the whole batch again" in again.stdout
    with _instance(home) as instance:
        reexecution = next(r for r in instance.get_runs() if r.run_id != failed.run_id)
        stop = stop_point(instance, reexecution.run_id)
        assert classify(stop.phase, stop.error_type, stop.message) == "infra"
    retry = _reexecute(REEXECUTE_ALL, failed.run_id, env)
    assert retry.stdout.split()[0] == "OK", retry.stdout + retry.stderr
    assert "batch_inputs" in retry.stdout.split()[1]  # every phase ran again
    assert (out / BATCH / "loan_decisions.csv").is_file()
