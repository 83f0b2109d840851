"""Intermediate results: shared in memory within a run, pickled for re-execution
from a failed step in another process."""

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


@pytest.mark.slow
def test_failed_run_reexecutes_from_its_failed_step_in_a_new_process(sample_inbox, tmp_path):
    import dagster as dg

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME"))}
    home = tmp_path / "dagster_home"
    home.mkdir()
    env["DAGSTER_HOME"] = str(home)
    db = tmp_path / "results.db"
    engine = database.engine_for(f"sqlite:///{db}")
    with engine.begin() as conn:  # the save fails: the last step, after every phase was pickled
        conn.execute(text("CREATE TRIGGER refuse_facts BEFORE INSERT ON loan_facts BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    out = tmp_path / "out"
    run = subprocess.run(
        [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox), "--output-dir", str(out),
         "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 1 and "FAILED in phase results_database" in run.stderr, run.stdout + run.stderr
    eligibility = home / "storage" / "eligibility" / BATCH
    written = pickle.loads(eligibility.read_bytes())
    assert len(written.loans) == 600  # the phases before the failure were kept on disk

    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_facts"))
    engine.dispose()
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            [failed] = instance.get_runs()
        again = subprocess.run([sys.executable, "-c", REEXECUTE, failed.run_id], capture_output=True, text=True,
                               env=env, timeout=600)
        assert again.stdout.split() == ["OK", "results_database"], again.stdout + again.stderr
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    decisions = pd.read_csv(out / BATCH / "loan_decisions.csv", dtype=str, keep_default_na=False)
    assert decisions["seller_loan_number"].tolist() == written.loans["seller_loan_number"].tolist()
