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
    blocked = tmp_path / "out"
    blocked.write_text("a file where the output folder should be")  # exports fails here
    run = subprocess.run(
        [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox), "--output-dir", str(blocked),
         "--database-url", f"sqlite:///{tmp_path / 'results.db'}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 1 and "FAILED in phase exports" in run.stderr, run.stdout + run.stderr
    eligibility = home / "storage" / "eligibility" / BATCH
    written = pickle.loads(eligibility.read_bytes())
    assert len(written.loans) == 600  # the phases before the failure were kept on disk

    blocked.unlink()
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            [failed] = instance.get_runs()
        again = subprocess.run([sys.executable, "-c", REEXECUTE, failed.run_id], capture_output=True, text=True,
                               env=env, timeout=600)
        assert again.stdout.split() == ["OK", "exports,results_database"], again.stdout + again.stderr
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    decisions = pd.read_csv(blocked / BATCH / "loan_decisions.csv", dtype=str, keep_default_na=False)
    assert decisions["seller_loan_number"].tolist() == written.loans["seller_loan_number"].tolist()
