"""A database password given to `loan-engine run` reaches the worker and
nothing else: not run storage, event logs, tags, metadata or the UI's run config."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml

from conftest import PG_ADMIN_URL  # noqa: F401  (the postgres_url fixture lives there)
from loan_engine_dagster.adapters import database

BIN = Path(sys.executable).parent
BATCH = "2026-02-19"
PASSWORD = "Pw-7q2ZsecretX"  # trust auth accepts any password, so the run still connects


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under `root` whose bytes contain `needle` (SQLite files and their journals included)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def run_with_secret(inbox, tmp_path, postgres_url, via):
    """`loan-engine run` against PostgreSQL with a password in the URL; returns (env, result)."""
    secret_url = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    args = [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox), "--output-dir", str(tmp_path / "out")]
    if via == "option":
        args += ["--database-url", secret_url]
    else:
        env["LOAN_ENGINE_DATABASE_URL"] = secret_url
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return env, result


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("via", ["option", "environment"])
def test_database_password_never_reaches_run_storage(sample_inbox, tmp_path, postgres_url, via):
    env, result = run_with_secret(sample_inbox, tmp_path, postgres_url, via)
    home = Path(env["DAGSTER_HOME"])

    # The run really wrote to the database behind the secret URL.
    engine = database.engine_for(postgres_url)
    assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 600
    engine.dispose()

    assert files_holding(home, PASSWORD.encode()) == []
    assert files_holding(tmp_path / "out", PASSWORD.encode()) == []
    assert PASSWORD not in result.stdout + result.stderr
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            [run] = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.SUCCESS
            # What the UI shows as runConfigYaml, the tags, and every event's text and metadata.
            assert PASSWORD not in yaml.safe_dump(run.run_config)
            assert PASSWORD not in repr(run.tags)
            events = instance.all_logs(run.run_id)
            assert not [e for e in events if PASSWORD in repr(e)]
            [materialization] = [e for e in events if e.dagster_event and e.dagster_event.is_step_materialization
                                 and e.dagster_event.step_key == "results_database"]
            shown = materialization.dagster_event.step_materialization_data.materialization.metadata["database"].value
            assert shown.startswith("postgresql+psycopg2://postgres:***@127.0.0.1:5432/")
    finally:
        os.environ.pop("DAGSTER_HOME", None)


RUN_CONFIG_QUERY = """
query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { runConfigYaml tags { key value } } } }
"""


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.webserver
def test_ui_run_config_shows_no_password(sample_inbox, tmp_path, postgres_url):
    from test_webserver_e2e import ROOT, free_port, graphql, stop

    env, _ = run_with_secret(sample_inbox, tmp_path, postgres_url, "option")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            [run] = instance.get_runs()
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    port = free_port()
    with open(tmp_path / "webserver.log", "w") as log:
        webserver = subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml")],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, f"webserver did not come up; see {tmp_path / 'webserver.log'}"
                time.sleep(1)
            shown = graphql(f"http://127.0.0.1:{port}/graphql", RUN_CONFIG_QUERY, {"runId": run.run_id})["runOrError"]
        finally:
            stop(webserver)
    assert shown["__typename"] == "Run"
    assert str(sample_inbox) in shown["runConfigYaml"]  # the real run config, with its overrides
    assert PASSWORD not in shown["runConfigYaml"] and PASSWORD not in repr(shown["tags"])
