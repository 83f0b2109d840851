"""Exactly one writer per batch: two `loan-engine run` of one batch started at
the same instant, against the same instance, inbox, output folder and results
database, leave one run's rows and one run's reports, and the other run says
which run won."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from conftest import PG_ADMIN_URL  # noqa: F401  (the postgres_url fixture lives there)
from loan_engine_dagster.adapters import database
from loan_engine_dagster.orchestration.run_records import stop_point

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BATCH = "2026-02-19"
TRIALS = int(os.environ.get("LOAN_ENGINE_TEST_TRIALS", "10"))
LOANS = 200


@pytest.fixture(scope="module")
def small_inbox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_inbox")
    result = subprocess.run([str(BIN / "loan-engine"), "sample-inbox", str(folder), "--loans", str(LOANS), "--existing", "500"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder


def run_ids_by_table(results_url):
    engine = database.engine_for(results_url)
    try:
        with engine.connect() as conn:
            return {
                table.name: sorted(conn.execute(select(table.c.run_id).where(table.c.batch_key == BATCH)).scalars())
                for table in database.BATCH_TABLES
            }
    finally:
        engine.dispose()


def race(inbox, home, out, results_url):
    """Both commands start together from one shell, as `cmd & cmd & wait` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    command = [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox), "--output-dir", str(out), "--database-url", results_url]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    return [(p.wait(timeout=600), *p.communicate()) for p in processes]


def check_trial(inbox, tmp_path, results_url, trial):
    home, out = tmp_path / f"home{trial}", tmp_path / f"out{trial}"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with_home(home, lambda instance: None)  # an instance in use already, as on any machine after its first run
    outcomes = race(inbox, home, out, results_url)
    codes = sorted(code for code, _, _ in outcomes)
    detail = "\n".join(f"exit {c}\n{o[-2000:]}\n{e[-2000:]}" for c, o, e in outcomes)
    assert codes[0] == 0 and codes[1] != 0, detail

    saved = run_ids_by_table(results_url)
    winners = {rid for ids in saved.values() for rid in ids}
    assert len(winners) == 1, f"rows of several runs: { {t: sorted(set(i)) for t, i in saved.items()} }"
    [winner] = winners
    assert len(saved["loan_facts"]) == LOANS
    assert json.loads((out / BATCH / "run_summary.json").read_text())["run_id"] == winner
    assert sorted(p.name for p in out.iterdir()) == [BATCH]  # no staging folder left behind

    [(_, _, loser_err)] = [o for o in outcomes if o[0] != 0]
    assert winner in loser_err, detail  # the loser names the run that holds the batch

    def check_runs(instance):
        runs = instance.get_runs()
        assert {r.run_id: r.status for r in runs if r.run_id == winner} == {winner: dg.DagsterRunStatus.SUCCESS}
        losers = [r for r in runs if r.run_id != winner]
        # The loser is refused before it starts, or its run fails saying who holds the batch.
        for run in losers:
            assert run.status == dg.DagsterRunStatus.FAILURE
            stop = stop_point(instance, run.run_id)  # what the UI, the CLI and the incident show
            assert stop.error_type == "BatchLeaseHeld" and f"is being written by run {winner}" in stop.message
        return "refused by the CLI" if not losers else "run failed on the lease"

    return with_home(home, check_runs)


def with_home(home, use):
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            return use(instance)
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = saved


@pytest.mark.slow
def test_two_simultaneous_runs_sqlite(small_inbox, tmp_path):
    how = [check_trial(small_inbox, tmp_path, f"sqlite:///{tmp_path / f'results{t}.db'}", t) for t in range(TRIALS)]
    print("loser outcomes:", how)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_simultaneous_runs_postgres(small_inbox, tmp_path, postgres_url):
    how = [check_trial(small_inbox, tmp_path, postgres_url, t) for t in range(TRIALS)]
    print("loser outcomes:", how)
