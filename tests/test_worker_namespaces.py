"""Dead-worker detection that does not depend on where the worker runs: a
`loan-engine run` in its own PID namespace (as in another container or on
another host) records a pid that means nothing, or something else, on the
daemon's machine. Its heartbeat in the results database is what counts."""

import os
import shutil
import signal
import subprocess
import time

import dagster as dg
import pytest

from loan_engine_dagster.adapters import database
from loan_engine_dagster.orchestration.run_records import KIND_TAG, PHASE_TAG, worker_pid
from test_failure_handling import (  # noqa: F401  (big_inbox is a fixture)
    BATCH, BIN, DEAD_WORKER_BOUND_SECONDS, ROOT, SHORT_GRACE, big_inbox, huge_inbox, cli, instance_of,
    kill_in_phase, phase_killed_in, running_daemon, spared_past_its_grace, with_runs_before,
)


def _namespaces_work() -> bool:
    try:
        probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$"],
                               capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "1"


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _namespaces_work(), reason="unshare --pid needs root (CAP_SYS_ADMIN) and util-linux"),
]


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(tmp_path / "home")
    return env, f"sqlite:///{tmp_path / 'results.db'}"


def start_in_namespace(env, inbox, out, results_url):
    """`loan-engine run` as pid 1 of a new PID namespace with its own /proc."""
    return with_runs_before(env, lambda: subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox),
         "--output-dir", str(out), "--database-url", results_url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    ))


def test_healthy_run_in_another_pid_namespace_stays_started_and_succeeds(huge_inbox, tmp_path, home, monkeypatch):
    env, results_url = home
    grace = SHORT_GRACE
    env["LOAN_ENGINE_DEAD_WORKER_SECONDS"] = str(grace)
    monkeypatch.setenv("LOAN_ENGINE_DEAD_WORKER_SECONDS", str(grace))
    process = start_in_namespace(env, huge_inbox, tmp_path / "out", results_url)
    run_id = kill_in_phase(process, env, "reference_data", kill=False)
    instance = instance_of(env)
    try:
        recorded = worker_pid(instance, run_id)
        host_pids = {int(p) for p in subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split()}
        # The pid the run recorded is not the worker's pid on this machine: a /proc lookup here would be wrong.
        assert recorded not in host_pids, (recorded, host_pids)
        spared_past_its_grace(instance, run_id, results_url, grace)
        output = process.communicate(timeout=600)[0].decode()
        assert process.returncode == 0, output
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert PHASE_TAG not in run.tags and KIND_TAG not in run.tags
        print(f"recorded pid {recorded}, host pids {sorted(host_pids)}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        instance.dispose()
    engine = database.engine_for(results_url)
    assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 100_000
    engine.dispose()


@pytest.mark.webserver
def test_killed_worker_in_another_pid_namespace_is_failed_within_two_minutes(big_inbox, tmp_path, home):
    """Default settings: a real daemon, the default 60 s grace and 30 s tick."""
    env, results_url = home
    out = tmp_path / "out"
    process = start_in_namespace(env, big_inbox, out, results_url)
    run_id = kill_in_phase(process, env, "batch_inputs")  # SIGKILL to the namespace's whole process group
    killed_at = time.monotonic()
    with instance_of(env) as instance:
        recorded = worker_pid(instance, run_id)
        phase = phase_killed_in(instance, run_id)  # batch_inputs, or the next phase on a fast day
    daemon_env = dict(env, LOAN_ENGINE_INBOX=str(tmp_path / "empty_inbox"))
    with running_daemon(daemon_env, tmp_path), instance_of(env) as instance:
        failed_after = None
        while time.monotonic() - killed_at < DEAD_WORKER_BOUND_SECONDS:
            if instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE:
                failed_after = time.monotonic() - killed_at
                break
            time.sleep(1)
        assert failed_after is not None, f"run not FAILED within {DEAD_WORKER_BOUND_SECONDS}s; see {tmp_path / 'daemon.log'}"
        print(f"namespace worker (recorded pid {recorded}) SIGKILL to FAILED: {failed_after:.1f}s")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and KIND_TAG not in instance.get_run_by_id(run_id).tags:
            time.sleep(1)
        tags = instance.get_run_by_id(run_id).tags
        assert tags.get(KIND_TAG) == "infra" and tags.get(PHASE_TAG) == phase
        [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert "Run worker disappeared" in failure.message and "sent no heartbeat" in failure.message
    # The batch is free again at once: the dead run's lease was revoked.
    rerun = cli(env, "run", BATCH, "--inbox", str(big_inbox), "--output-dir", str(out), "--database-url", results_url)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
