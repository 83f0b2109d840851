"""The real thing: dagster-webserver and dagster-daemon on 127.0.0.1, a batch
dropped into the inbox, and the sensor's run observed through GraphQL."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from loan_engine_dagster.adapters import database

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BATCH = "2026-02-19"
DEADLINE_SECONDS = 300

RUNS_QUERY = """
{ runsOrError { __typename ... on Runs { results { runId status jobName tags { key value } } } } }
"""
SENSOR_QUERY = """
query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  __typename ... on Sensor { sensorState { status ticks(limit: 3) { status skipReason error { message } } } } } }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def graphql(url: str, query: str, variables=None) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


@pytest.mark.webserver
@pytest.mark.slow
def test_sensor_launches_successful_run(sample_inbox, tmp_path):
    home, inbox, out = tmp_path / "home", tmp_path / "inbox", tmp_path / "out"
    home.mkdir()
    inbox.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOAN_ENGINE_")}
    env.update(DAGSTER_HOME=str(home), LOAN_ENGINE_INBOX=str(inbox), LOAN_ENGINE_OUTPUT_DIR=str(out),
               LOAN_ENGINE_DATABASE_URL=db_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("webserver", "daemon")}
    workspace = str(ROOT / "workspace.yaml")
    # As scripts/ui.sh does: the instance's storage exists before two
    # processes start, or both create it and one dies on the race.
    subprocess.run([str(BIN / "dagster"), "instance", "info"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    processes = [
        subprocess.Popen([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
                         cwd=tmp_path, env=env, stdout=logs["webserver"], stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", workspace],
                         cwd=tmp_path, env=env, stdout=logs["daemon"], stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "webserver did not come up"
            time.sleep(1)
        for path in sample_inbox.iterdir():
            shutil.copy(path, inbox / path.name)

        run = None
        while time.monotonic() < deadline:
            runs = graphql(url, RUNS_QUERY)["runsOrError"]["results"]
            ours = [r for r in runs if {"key": "dagster/partition", "value": BATCH} in r["tags"]]
            if ours and ours[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                run = ours[0]
                break
            time.sleep(3)
        if run is None:
            sensor = graphql(url, SENSOR_QUERY, {"selector": {"repositoryLocationName": "loan_engine_dagster",
                                                             "repositoryName": "__repository__", "sensorName": "inbox_sensor"}})
            pytest.fail(f"no finished run within {DEADLINE_SECONDS}s; sensor: {sensor}")
        assert run["status"] == "SUCCESS", run
        assert run["jobName"] == "loan_engine_job"
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/sensor_name"] == "inbox_sensor" and tags["loan_engine/batch"] == BATCH
        assert (out / BATCH / "loan_decisions.csv").is_file()
        engine = database.engine_for(db_url)
        assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 600
        engine.dispose()
    finally:
        for process in processes:
            stop(process)
        for log in logs.values():
            log.close()


@pytest.mark.webserver
@pytest.mark.slow
def test_a_sensor_run_whose_worker_is_killed_after_its_commit_is_not_run_again(sample_inbox, tmp_path):
    """The real daemon: the inbox sensor's run is killed (SIGKILL) in the
    results_database step just after its commit. The code server that
    launched it fails it within a second; Dagster's run retries do not start
    it again (the run held its retries around the commit), the failure
    sensor finds its results saved (the incident says so, the run is tagged
    with its own id), and the inbox sensor does not start the batch again."""
    import dagster as dg
    from test_failure_handling import instance_of
    from test_write_side import KILL_AFTER_COMMIT, before

    from loan_engine_dagster.orchestration.run_records import JOB_NAME, MAX_RETRIES_TAG, RESULTS_SAVED_TAG, WILL_RETRY_TAG

    home, inbox, out = tmp_path / "home", tmp_path / "inbox", tmp_path / "out"
    home.mkdir()
    inbox.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    db = tmp_path / "results.db"
    db_url = f"sqlite:///{db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "HOSTILE_"))}
    env.update(DAGSTER_HOME=str(home), LOAN_ENGINE_INBOX=str(inbox), LOAN_ENGINE_OUTPUT_DIR=str(out),
               LOAN_ENGINE_DATABASE_URL=db_url, LOAN_ENGINE_DEAD_WORKER_SECONDS="4")
    subprocess.run([str(BIN / "dagster"), "instance", "info"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=120)
    # The daemon, the code server it starts and the code server's run worker
    # all load the hook; only the run worker's results_database step calls
    # swapped_in, so only the run worker dies.
    hostile = before(env, "loan_engine_dagster.adapters.batch:swapped_in", KILL_AFTER_COMMIT)
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                              cwd=tmp_path, env=hostile, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    instance = instance_of(env)
    started = time.monotonic()
    try:
        for path in sample_inbox.iterdir():
            shutil.copy(path, inbox / path.name)

        def runs() -> list:
            return list(instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME)))

        dead = None
        deadline = started + 240
        while dead is None:
            assert daemon.poll() is None, f"the daemon died: {(tmp_path / 'daemon.log').read_text()[-3000:]}"
            failed = [run for run in runs() if run.status == dg.DagsterRunStatus.FAILURE]
            if failed:
                dead = failed[-1]  # the first one (runs come newest first)
                break
            assert time.monotonic() < deadline, f"no run failed within 240 s: {[(r.run_id, r.status) for r in runs()]}"
            time.sleep(2)
        failed_after = time.monotonic() - started
        # Several ticks of the run retries daemon and of the inbox sensor (30 s).
        time.sleep(65)
        assert daemon.poll() is None, f"the daemon died: {(tmp_path / 'daemon.log').read_text()[-3000:]}"

        run = instance.get_run_by_id(dead.run_id)
        failures = instance.get_records_for_run(dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        said = [record.event_log_entry.dagster_event.message or "" for record in failures]
        engine_events = [record.event_log_entry.dagster_event.message or "" for record in
                         instance.get_records_for_run(dead.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records]
        story = (f"failed after {failed_after:.0f}s; tags {dict(run.tags)}; failure {said}; engine events "
                 f"{[m for m in engine_events if 'signal' in m or 'disappeared' in m or 'exited' in m]}; all runs "
                 f"{[(r.run_id, r.status.value, r.tags.get('dagster/parent_run_id'), r.tags.get('dagster/sensor_name')) for r in runs()]}")
        assert run.tags.get("dagster/sensor_name") == "inbox_sensor", story
        assert run.status == dg.DagsterRunStatus.FAILURE, story
        assert run.tags.get(RESULTS_SAVED_TAG) == run.run_id, story
        assert run.tags.get(WILL_RETRY_TAG) == "false", story
        # Its retries were held at 0 around the commit; the failure sensor put dagster.yaml's back (for re-executions).
        assert run.tags.get(MAX_RETRIES_TAG) == "2", story
        with sqlite3.connect(db) as conn:  # the failure sensor's incident row
            causes = [cause for (cause,) in conn.execute("select cause from incidents where run_id = ?", (run.run_id,))]
        assert len(causes) == 1 and "its results were saved before it stopped" in causes[0].casefold(), (causes, story)
        assert [r.run_id for r in runs()] == [run.run_id], story  # no retry, no second run from the sensor
        assert json.loads((out / BATCH / "run_summary.json").read_text())["run_id"] == run.run_id
        with sqlite3.connect(db) as conn:
            assert {r for (r,) in conn.execute("select distinct run_id from loan_facts")} == {run.run_id}
        print(f"killed run {run.run_id} failed {failed_after:.0f}s after the daemon started")
    finally:
        stop(daemon)
        log.close()
        instance.dispose()
