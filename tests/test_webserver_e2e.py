"""The real thing: dagster-webserver and dagster-daemon on 127.0.0.1, a batch
dropped into the inbox, and the sensor's run observed through GraphQL."""

import os
import shutil
import signal
import socket
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
