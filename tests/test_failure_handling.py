"""Failure handling against real parts: real runs, a real SIGKILL, a real
dagster-daemon, SQLite and PostgreSQL instances, a local webhook receiver."""

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy
from sqlalchemy import select

from conftest import PG_ADMIN_URL  # noqa: F401  (the postgres_url fixture lives there)
from loan_engine_dagster.adapters import database
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.jobs import loan_engine_job
from loan_engine_dagster.orchestration.failures import dead_worker_sensor, loan_engine_failure_sensor
from loan_engine_dagster.orchestration.resources import (
    InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource,
)
from loan_engine_dagster.orchestration.run_records import KIND_TAG, PHASE_TAG
from test_sensors import Hook

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BATCH = "2026-02-19"
DEAD_WORKER_BOUND_SECONDS = 120


# ---------------------------------------------------------------- instances


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, tmp_path):
    """(environment for subprocesses, results database URL) of a Dagster
    instance on SQLite (the project's dagster.yaml) or PostgreSQL (the
    production deploy/dagster-postgres.yaml)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    if request.param == "sqlite":
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        results_url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        shutil.copy(ROOT / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
        env["DAGSTER_PG_URL"] = url  # postgresql+psycopg2://: SQLAlchemy 2.1 defaults to psycopg 3
        results_url = url
    return env, results_url


def instance_of(env):
    """The same instance the subprocesses use, opened in this process."""
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")}
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    if "DAGSTER_PG_URL" in env:
        os.environ["DAGSTER_PG_URL"] = env["DAGSTER_PG_URL"]
    try:
        return dg.DagsterInstance.get()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def huge_inbox(tmp_path_factory):
    """Large enough that a run lasts well beyond a short dead-worker grace after
    its first phase starts (the engine reads 20,000 loans in a few seconds)."""
    from loan_engine_dagster.adapters.sample import generate_inbox

    folder = tmp_path_factory.mktemp("huge_inbox")
    generate_inbox(folder, loans=100_000, existing=500_000, seed=5)
    return folder


@pytest.fixture(scope="module")
def big_inbox(tmp_path_factory):
    """Large enough that loading takes a second or two: time to kill a worker mid-phase."""
    from loan_engine_dagster.adapters.sample import generate_inbox

    folder = tmp_path_factory.mktemp("big_inbox")
    generate_inbox(folder, loans=20_000, existing=200_000, seed=5)
    return folder


def start_and_kill(env, inbox, out, results_url, phase="batch_inputs"):
    """Start `loan-engine run`, SIGKILL its process once `phase` has started.
    Returns the run id of the run left behind in STARTED."""
    process = start_run(env, inbox, out, results_url)
    return kill_in_phase(process, env, phase)


def runs_so_far(env) -> set[str]:
    instance = instance_of(env)
    try:
        return {r.run_id for r in instance.get_runs()}
    finally:
        instance.dispose()


def start_run(env, inbox, out, results_url):
    return with_runs_before(env, lambda: subprocess.Popen(
        [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox), "--output-dir", str(out),
         "--database-url", results_url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    ))


def with_runs_before(env, start):
    """Start a process, remembering the runs that existed before it: the run
    it creates is the one not among them. Taken after the start, the list
    could already hold that run (a run is created within 2 s)."""
    before = runs_so_far(env)
    process = start()
    process.runs_before = before
    return process


def kill_in_phase(process, env, phase, kill=True):
    """SIGKILL `process` once its run has started `phase` (or, with
    kill=False, just wait for that). Returns the run id."""
    instance = instance_of(env)
    earlier = process.runs_before
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode()
            runs = [r for r in instance.get_runs() if r.run_id not in earlier]
            if runs:
                starts = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_START)
                if any(e.dagster_event.step_key == phase for e in starts):
                    if not kill:
                        return runs[0].run_id
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
                    run = instance.get_run_by_id(runs[0].run_id)
                    assert run.status == dg.DagsterRunStatus.STARTED  # stuck, as in the old system
                    return run.run_id
            time.sleep(0.05)
        pytest.fail(f"phase {phase} never started")
    finally:
        if kill and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        instance.dispose()


def phase_killed_in(instance, run_id):
    """The last phase the run started: the one its killed worker was in. The
    test waits for a phase, then kills; on a fast day the next has begun."""
    return [e.dagster_event.step_key for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)][-1]


def leased_at(results_url, run_id):
    """When the run took its batch's lease, by the results database's clock."""
    engine = database.engine_for(results_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(database.batch_leases.c.acquired_at).where(database.batch_leases.c.run_id == run_id)
            ).scalar_one()
    finally:
        engine.dispose()


# The dead-worker grace of the tests that watch a healthy 100k run: the worker
# beats every 0.5 s (a quarter of the grace), and the run goes on for about
# 5 s after it takes its lease (7 s in all here), so the sensor can look past
# the grace while the run still works. With 4 s the run had ended on a fast day.
SHORT_GRACE = 2


def spared_past_its_grace(instance, run_id, results_url, grace):
    """The dead-worker sensor looks at a live run until its lease is older
    than the grace (a worker that never beat would be failed by then), and
    leaves it alone every time. Measured from the lease, not from a sleep,
    so a fast run cannot end before the sensor has looked long enough."""
    resources = {"results_db": ResultsDatabase(url=results_url)}
    taken = leased_at(results_url, run_id)
    while True:
        looked_at = time.time()
        result = dead_worker_sensor(dg.build_sensor_context(instance=instance, cursor="{}", resources=resources))
        assert result.skip_reason.skip_message == "no dead workers"  # alive: left alone
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED, "the run ended within the grace"
        if looked_at - taken > grace + 0.5:
            return
        time.sleep(0.25)


@contextlib.contextmanager
def running_daemon(env, tmp_path):
    """A real dagster-daemon on this workspace, stopped even when the test fails."""
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield tmp_path / "daemon.log"
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()


def cli(env, *args, input=None):
    return subprocess.run([str(BIN / "loan-engine"), *args], env=env, capture_output=True, text=True, input=input, timeout=600)


def incident_rows(results_url):
    engine = database.engine_for(results_url)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(database.incidents)).mappings()]
    engine.dispose()
    return rows


# ---------------------------------------------------------------- the SIGKILL test


@pytest.mark.slow
@pytest.mark.webserver
def test_killed_worker_is_failed_reported_and_rerun(big_inbox, tmp_path, backend):
    env, results_url = backend
    out = tmp_path / "out"
    run_id = start_and_kill(env, big_inbox, out, results_url)
    killed_at = time.monotonic()
    with instance_of(env) as instance:
        phase = phase_killed_in(instance, run_id)  # batch_inputs, or the next phase on a fast day

    listed = cli(env, "runs", "list", "--status", "running")
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout and phase in listed.stdout and str(big_inbox) in listed.stdout

    with Hook() as hook:
        daemon_env = dict(env, LOAN_ENGINE_DEAD_WORKER_SECONDS="5", LOAN_ENGINE_WEBHOOK_URL=hook.url,
                          LOAN_ENGINE_INBOX=str(tmp_path / "empty_inbox"))
        with running_daemon(daemon_env, tmp_path), instance_of(env) as instance:
            failed_after = None
            while time.monotonic() - killed_at < DEAD_WORKER_BOUND_SECONDS:
                if instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE:
                    failed_after = time.monotonic() - killed_at
                    break
                time.sleep(1)
            assert failed_after is not None, f"run not FAILED within {DEAD_WORKER_BOUND_SECONDS}s; see {tmp_path / 'daemon.log'}"
            print(f"SIGKILL to FAILED: {failed_after:.1f}s")
            messages = [e.message for e in instance.all_logs(run_id) if e.message]
            assert any("Run worker disappeared" in m and f"last phase {phase}" in m for m in messages)

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and KIND_TAG not in instance.get_run_by_id(run_id).tags:
                time.sleep(1)
            tags = instance.get_run_by_id(run_id).tags
            assert tags.get(PHASE_TAG) == phase and tags.get(KIND_TAG) == "infra"
            while time.monotonic() < deadline and not [m for m in hook.received if m.get("run_id")]:
                time.sleep(0.5)
        [note] = [m for m in hook.received if m.get("run_id") == run_id]
        assert note["kind"] == "infra" and note["phase"] == phase and note["batch_key"] == BATCH
        assert f"/runs/{run_id}" in note["text"] and "Run worker disappeared" in note["text"]

    [incident] = [r for r in incident_rows(results_url) if r["run_id"] == run_id]
    assert (incident["kind"], incident["phase"], incident["batch_key"]) == ("infra", phase, BATCH)
    # Nothing half-written: no batch folder, no rows.
    assert not out.exists() or list(out.iterdir()) == []  # not even a hidden staging folder
    engine = database.engine_for(results_url)
    assert database.batch_row_counts(engine, BATCH) == {"loan_facts": 0, "loan_exceptions": 0, "eligibility_results": 0}

    rerun = cli(env, "run", BATCH, "--inbox", str(big_inbox), "--output-dir", str(out), "--database-url", results_url)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 20_000
    engine.dispose()
    listed = cli(env, "runs", "list", "--status", "failed")
    assert run_id in listed.stdout and "infra" in listed.stdout


# ---------------------------------------------------------------- runs mark


@pytest.mark.slow
def test_runs_mark_paths(big_inbox, tmp_path, backend):
    env, results_url = backend
    first = start_and_kill(env, big_inbox, tmp_path / "out", results_url, phase="reference_data")
    reason = "worker host rebooted (ticket OPS-12)"
    marked = cli(env, "runs", "mark", first, "--as", "canceled", "--reason", reason)
    assert marked.returncode == 0, marked.stderr
    instance = instance_of(env)
    try:
        assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.CANCELED
        assert any(reason in (e.message or "") for e in instance.all_logs(first))
    finally:
        instance.dispose()

    again = cli(env, "runs", "mark", first, "--as", "failed")
    assert again.returncode == 1 and f"Run {first} is CANCELED, not in progress: nothing to mark." in again.stderr
    unknown = cli(env, "runs", "mark", "00000000-0000-0000-0000-000000000000", "--as", "failed")
    assert unknown.returncode == 1 and "No run with id 00000000-0000-0000-0000-000000000000" in unknown.stderr
    both = cli(env, "runs", "mark", first, "--older-than-minutes", "5", "--as", "failed")
    assert both.returncode == 2 and "either RUN_ID or --older-than-minutes" in both.stderr
    bad_status = cli(env, "runs", "mark", first, "--as", "deleted")
    assert bad_status.returncode == 2 and "'deleted' is not one of 'failed', 'canceled'" in bad_status.stderr

    second = start_and_kill(env, big_inbox, tmp_path / "out", results_url, phase="reference_data")
    # While a run of the batch is in progress (even a stuck one), no second one starts.
    refused = cli(env, "run", BATCH, "--inbox", str(big_inbox), "--output-dir", str(tmp_path / "out"),
                  "--database-url", results_url)
    assert refused.returncode == 2 and f"already has run {second} in progress (STARTED)" in refused.stderr
    declined = cli(env, "runs", "mark", "--older-than-minutes", "0", "--as", "failed", input="n\n")
    assert declined.returncode == 1 and second in declined.stdout and "Nothing changed." in declined.stdout
    accepted = cli(env, "runs", "mark", "--older-than-minutes", "0", "--as", "failed", "--yes")
    assert accepted.returncode == 0 and f"Marked {second} failed" in accepted.stdout
    none_left = cli(env, "runs", "list", "--status", "running")
    assert none_left.stdout.strip() == "No loan engine runs match."
    instance = instance_of(env)
    try:
        assert instance.get_run_by_id(second).status == dg.DagsterRunStatus.FAILURE
    finally:
        instance.dispose()


@pytest.mark.slow
def test_a_live_run_marked_by_hand_can_no_longer_save(big_inbox, tmp_path, backend):
    # Past bug: `runs mark` on a frozen worker left its lease; resumed, it saved
    # its rows, published its folder and turned its status back to SUCCESS.
    env, results_url = backend
    process = start_run(env, big_inbox, tmp_path / "out", results_url)
    run_id = kill_in_phase(process, env, "normalized_loans", kill=False)
    _freeze_between_writes(process, env, run_id)
    try:
        marked = cli(env, "runs", "mark", run_id, "--as", "failed", "--reason", "frozen host")
        assert marked.returncode == 0 and "its batch lease is revoked" in marked.stdout, marked.stdout + marked.stderr
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 1, output
    assert "FAILED" in output and run_id in output
    assert not (tmp_path / "out" / BATCH).exists()  # nothing published
    engine = sqlalchemy.create_engine(results_url)
    try:
        assert database.batch_row_counts(engine, BATCH) == {"loan_facts": 0, "loan_exceptions": 0, "eligibility_results": 0}
    finally:
        engine.dispose()
    instance = instance_of(env)
    try:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    finally:
        instance.dispose()


def _run_log_locked(env, run_id) -> bool:
    """Whether the run's own event-log file is locked by a writer (SQLite)."""
    path = Path(env["DAGSTER_HOME"]) / "history" / "runs" / f"{run_id}.db"
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc), exc
        return True
    finally:
        con.close()


def _freeze_between_writes(process, env, run_id):
    """SIGSTOP the worker between two writes of its event log; frozen in the
    middle of one, it keeps the file locked (the next test covers that)."""
    for _ in range(200):
        os.killpg(process.pid, signal.SIGSTOP)
        if "DAGSTER_PG_URL" in env or not _run_log_locked(env, run_id):  # PostgreSQL locks no log for a writer
            return
        os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    pytest.fail("the worker was always in the middle of writing its event log")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # a PostgreSQL instance's log has no file lock
def test_a_run_whose_frozen_worker_holds_its_event_log_is_not_marked_but_told(big_inbox, tmp_path, backend):
    """A worker frozen in the middle of writing its event log keeps that file
    locked: `runs mark` failed with a bare `OperationalError: database is
    locked` (found when the freeze above landed inside a write). It revokes
    the lease, says what holds the file and what to do, and once the lock
    is gone the same command marks the run."""
    env, results_url = backend
    run_id = start_and_kill(env, big_inbox, tmp_path / "out", results_url, phase="reference_data")
    frozen = sqlite3.connect(Path(env["DAGSTER_HOME"]) / "history" / "runs" / f"{run_id}.db", isolation_level=None)
    frozen.execute("BEGIN IMMEDIATE")  # the lock a worker frozen inside a write holds
    try:
        refused = cli(env, "runs", "mark", run_id, "--as", "failed")
    finally:
        frozen.execute("ROLLBACK")
        frozen.close()
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        f"Run {run_id} not marked: its event log is locked by its worker, which is frozen in the middle of writing it "
        "(its batch lease is revoked); end the worker's process, then mark the run again")
    marked = cli(env, "runs", "mark", run_id, "--as", "failed")
    assert marked.returncode == 0 and f"Marked {run_id} failed" in marked.stdout, marked.stderr


# ---------------------------------------------------------------- the failure sensor on real failed runs


def _materialize(instance, inbox, tmp_path, results_db, asset_selection=None):
    """A real loan_engine_job run, with resources pointed at test folders."""
    instance.add_dynamic_partitions("batches", [BATCH])
    resources = {"inbox": InboxResource(path=str(inbox)), "outputs": OutputsResource(root=str(tmp_path / "out")),
                 "results_db": results_db, "rules": RulesResource(), "notifier": Notifier()}
    defs = dg.Definitions(assets=dg.load_assets_from_modules([assets]), jobs=[loan_engine_job], resources=resources)
    return defs.resolve_job_def("loan_engine_job").execute_in_process(
        instance=instance, partition_key=BATCH, raise_on_error=False, asset_selection=asset_selection)


def _run_failure_sensor(instance, run_id, results_url, hook_url):
    run = instance.get_run_by_id(run_id)
    [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="loan_engine_failure_sensor", dagster_event=failure.dagster_event, dagster_instance=instance,
        dagster_run=run, resources={"results_db": ResultsDatabase(url=results_url),
                                    "notifier": Notifier(webhook_url=hook_url, webserver_url="http://ui.local:3000")},
    ).for_run_failure()
    loan_engine_failure_sensor(context)
    return instance.get_run_by_id(run_id).tags


@pytest.mark.slow
def test_data_failure_is_tagged_recorded_and_notified(sample_inbox, tmp_path, backend):
    env, results_url = backend
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    sfy = next(inbox.glob("SFY_*.xlsx"))
    sfy.write_text("not a workbook")
    instance = instance_of(env)
    try:
        result = _materialize(instance, inbox, tmp_path, ResultsDatabase(url=results_url))
        assert not result.success
        with Hook() as hook:
            tags = _run_failure_sensor(instance, result.run_id, results_url, hook.url)
        assert tags[PHASE_TAG] == "batch_inputs" and tags[KIND_TAG] == "data"
        [note] = hook.received
        assert note["text"].startswith(f"loan_engine_job FAILED for batch {BATCH} in phase batch_inputs [data]: StructuralError: ")
        assert sfy.name in note["text"] and note["text"].endswith(f"http://ui.local:3000/runs/{result.run_id}")
        [row] = incident_rows(results_url)
        assert (row["run_id"], row["kind"], row["error_type"]) == (result.run_id, "data", "StructuralError")
        assert "not a readable workbook" in row["cause"]
        # Filtering the run list on the tag works in the instance's storage.
        tagged = instance.get_runs(filters=dg.RunsFilter(tags={KIND_TAG: "data"}))
        assert [r.run_id for r in tagged] == [result.run_id]
    finally:
        instance.dispose()


@pytest.mark.slow
def test_database_outage_is_retried_then_infra(sample_inbox, tmp_path):
    """The run takes its batch's lease in the results database before the
    first phase: a database that stays down fails the run there, after the
    retries, before any file is read or any report written."""
    unreachable = "postgresql+psycopg2://postgres@127.0.0.1:9/nowhere"  # nothing listens on port 9
    with dg.instance_for_test() as instance:
        result = _materialize(instance, sample_inbox, tmp_path,
                              ResultsDatabase(url=unreachable, connect_retries=2, retry_wait_seconds=0))
        assert not result.success
        assert result.dagster_run.job_name == "loan_engine_job"
        retries = [e.message for e in instance.all_logs(result.run_id) if "results database unreachable, retry" in (e.message or "")]
        assert len(retries) == 2
        assert not instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
        with Hook() as hook:
            tags = _run_failure_sensor(instance, result.run_id, f"sqlite:///{tmp_path / 'incidents.db'}", hook.url)
        assert tags[PHASE_TAG] == "run" and tags[KIND_TAG] == "infra"
        assert hook.received[0]["error_type"] == "PreflightError"  # names the database, password hidden
        assert not (tmp_path / "out").exists()  # no report of a run whose rows could not be saved


@pytest.mark.parametrize(("holds", "since"), [
    ("an open read", "before the run"), ("unsaved changes", "before the run"), ("unsaved changes", "the save"),
])
def test_a_results_database_another_program_keeps_locked_is_named(sample_inbox, tmp_path, monkeypatch, holds, since):
    """Past bug: a database browser left with unsaved changes (or a `sqlite3`
    shell inside BEGIN) on the results database failed every run after four
    minutes of retries with a bare `database is locked`, naming nothing."""
    from loan_engine_dagster.adapters.incidents import classify, one_line
    from loan_engine_dagster.orchestration.run_records import stop_point

    db = tmp_path / "results.db"
    database.engine_for(f"sqlite:///{db}").dispose()
    other = sqlite3.connect(db, isolation_level=None)

    def lock():
        if not other.in_transaction:
            other.execute("BEGIN IMMEDIATE" if holds == "unsaved changes" else "BEGIN")
            other.execute("SELECT COUNT(*) FROM loan_facts").fetchone()

    if since == "before the run":
        lock()
    else:  # the program takes the lock just as the run's save begins
        save = database.save_batch
        monkeypatch.setattr(database, "save_batch", lambda *a, **k: lock() or save(*a, **k))
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_SECONDS", 1)  # the real wait is a minute per try
    try:
        with dg.instance_for_test() as instance:
            result = _materialize(instance, sample_inbox, tmp_path,
                                  ResultsDatabase(url=f"sqlite:///{db}", connect_retries=1, retry_wait_seconds=0))
            assert not result.success
            stop = stop_point(instance, result.run_id)
    finally:
        if other.in_transaction:
            other.rollback()
        other.close()
    said = one_line(stop.message, stop.error_type)
    assert said.startswith(f"results database sqlite:///{db} is locked by another program: "), said
    assert classify(stop.phase, stop.error_type, stop.message) == "infra"
    assert stop.phase == (None if since == "before the run" else "results_database")
    assert not (tmp_path / "out" / BATCH).exists()


@pytest.mark.slow
def test_dead_worker_sensor_spares_live_workers_and_fails_dead_ones(huge_inbox, tmp_path, monkeypatch):
    env, results_url = {**{k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))},
                        "DAGSTER_HOME": str(tmp_path)}, f"sqlite:///{tmp_path / 'r.db'}"
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    grace = SHORT_GRACE
    monkeypatch.setenv("LOAN_ENGINE_DEAD_WORKER_SECONDS", str(grace))
    env["LOAN_ENGINE_DEAD_WORKER_SECONDS"] = str(grace)
    process = start_run(env, huge_inbox, tmp_path / "out", results_url)
    run_id = kill_in_phase(process, env, "batch_inputs", kill=False)
    instance = instance_of(env)
    resources = {"results_db": ResultsDatabase(url=results_url)}
    try:
        spared_past_its_grace(instance, run_id, results_url, grace)
        assert process.poll() is None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        time.sleep(grace + 1)
        first = dead_worker_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert first.skip_reason.skip_message.startswith("first tick")  # a fresh daemon looks before it acts
        result = dead_worker_sensor(dg.build_sensor_context(instance=instance, cursor="{}", resources=resources))
        assert result.skip_reason.skip_message == f"marked FAILED: {run_id}"
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"Run worker disappeared: run {run_id}" in failure.message
        assert f"(worker process {process.pid} on " in failure.message
        # Finished runs are never touched again.
        again = dead_worker_sensor(dg.build_sensor_context(instance=instance, cursor="{}", resources=resources))
        assert again.skip_reason.skip_message == "no dead workers"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        instance.dispose()


def test_dead_worker_setting_is_validated(monkeypatch):
    monkeypatch.setenv("LOAN_ENGINE_DEAD_WORKER_SECONDS", "two minutes")
    with dg.instance_for_test() as instance, pytest.raises(Exception, match="LOAN_ENGINE_DEAD_WORKER_SECONDS must be a number"):
        dead_worker_sensor(dg.build_sensor_context(instance=instance, cursor="{}", resources={"results_db": ResultsDatabase(url="sqlite://")}))


def test_failure_sensor_ignores_other_jobs(tmp_path):
    @dg.asset
    def broken():
        raise RuntimeError("not ours")

    with dg.instance_for_test() as instance:
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        with Hook() as hook:
            tags = _run_failure_sensor(instance, result.run_id, f"sqlite:///{tmp_path / 'i.db'}", hook.url)
        assert PHASE_TAG not in tags and hook.received == []


@pytest.mark.slow
@pytest.mark.webserver
def test_daemon_retries_a_run_whose_worker_died(big_inbox, tmp_path):
    """A sensor-launched run loses its worker; the run is failed as infra and
    the daemon retries it, and the retry succeeds."""
    from loan_engine_dagster.orchestration.run_records import worker_pid

    home, inbox, out = tmp_path / "home", tmp_path / "inbox", tmp_path / "out"
    home.mkdir()
    inbox.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    results_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), LOAN_ENGINE_INBOX=str(inbox), LOAN_ENGINE_OUTPUT_DIR=str(out),
               LOAN_ENGINE_DATABASE_URL=results_url, LOAN_ENGINE_DEAD_WORKER_SECONDS="15")
    with running_daemon(env, tmp_path), instance_of(env) as instance:
        for path in big_inbox.iterdir():
            shutil.copy(path, inbox / path.name)
        deadline = time.monotonic() + 240
        first = None
        while time.monotonic() < deadline and first is None:
            for run in instance.get_runs():
                starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                if any(e.dagster_event.step_key == "batch_inputs" for e in starts):
                    first = run
            time.sleep(0.05)
        assert first is not None, f"the sensor launched no run; see {tmp_path / 'daemon.log'}"
        os.kill(worker_pid(instance, first.run_id), signal.SIGKILL)
        killed_in = phase_killed_in(instance, first.run_id)

        retry = None
        while time.monotonic() < deadline + 240:
            retries = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": first.run_id}))
            if retries and retries[0].status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
                retry = retries[0]
                break
            time.sleep(1)
        assert retry is not None, f"no finished retry; see {tmp_path / 'daemon.log'}"
        assert retry.status == dg.DagsterRunStatus.SUCCESS
        assert retry.tags["dagster/retry_number"] == "1"
        # Every phase again, not from the failed step: the dead worker may have
        # reported a phase whose pickle it never wrote.
        again = {e.dagster_event.step_key for e in instance.all_logs(retry.run_id, of_type=dg.DagsterEventType.STEP_START)}
        assert {"batch_inputs", "reference_data", "results_database"} <= again
        original = instance.get_run_by_id(first.run_id)
        assert original.status == dg.DagsterRunStatus.FAILURE
        while time.monotonic() < deadline + 360 and KIND_TAG not in instance.get_run_by_id(first.run_id).tags:
            time.sleep(1)
        tags = instance.get_run_by_id(first.run_id).tags
        assert tags[KIND_TAG] == "infra" and tags[PHASE_TAG] == killed_in

    assert (out / BATCH / "loan_decisions.csv").is_file()
    engine = database.engine_for(results_url)
    assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 20_000
    engine.dispose()


@pytest.mark.slow
@pytest.mark.webserver
def test_hung_run_is_stopped_by_max_runtime(huge_inbox, tmp_path):
    """Run monitoring stops a run that outlives its maximum run time; here 1 s
    instead of 2 hours, on the huge inbox (its run lasts about 6.5 s), so it
    counts as hung. (With 2 s, the big inbox's run of under 3 s left the
    monitor, polling every second, too small a window: a full suite once saw
    the run succeed first.)"""
    import yaml

    home, inbox = tmp_path / "home", tmp_path / "inbox"
    home.mkdir()
    inbox.mkdir()
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config["run_monitoring"].update(max_runtime_seconds=1, poll_interval_seconds=1)
    config["run_retries"]["max_retries"] = 0
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), LOAN_ENGINE_INBOX=str(inbox), LOAN_ENGINE_OUTPUT_DIR=str(tmp_path / "out"),
               LOAN_ENGINE_DATABASE_URL=f"sqlite:///{tmp_path / 'results.db'}")
    with running_daemon(env, tmp_path), instance_of(env) as instance:
        for path in huge_inbox.iterdir():
            shutil.copy(path, inbox / path.name)
        deadline = time.monotonic() + 240
        run = None
        while time.monotonic() < deadline:
            runs = instance.get_runs()
            if runs and runs[0].status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
                                           dg.DagsterRunStatus.SUCCESS):
                run = runs[0]
                break
            time.sleep(1)
        assert run is not None, f"no finished run; see {tmp_path / 'daemon.log'}"
        # Monitoring cancels, then fails the run; if the worker acknowledges the
        # cancel first the run ends CANCELED. Either way it is stopped and reported.
        assert run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        messages = " ".join(e.message or "" for e in instance.all_logs(run.run_id))
        assert "maximum runtime of 1 seconds" in messages
        while time.monotonic() < deadline and KIND_TAG not in instance.get_run_by_id(run.run_id).tags:
            time.sleep(1)
        assert instance.get_run_by_id(run.run_id).tags[KIND_TAG] == "infra"



@pytest.mark.slow
def test_timeout_sensor_reports_runs_canceled_for_runtime_but_not_by_hand(big_inbox, tmp_path):
    from loan_engine_dagster.orchestration.failures import loan_engine_timeout_sensor

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    results_url = f"sqlite:///{tmp_path / 'results.db'}"
    timed_out = start_and_kill(env, big_inbox, tmp_path / "out", results_url, phase="reference_data")
    with instance_of(env) as instance:
        # What run monitoring writes when a run outlives its maximum runtime.
        instance.report_run_canceling(instance.get_run_by_id(timed_out),
                                      message="Canceling due to exceeding maximum runtime of 7200 seconds.")
        instance.report_run_canceled(instance.get_run_by_id(timed_out))
    by_hand = start_and_kill(env, big_inbox, tmp_path / "out", results_url, phase="reference_data")
    with instance_of(env) as instance, Hook() as hook:
        instance.report_run_canceling(instance.get_run_by_id(by_hand), message="Canceled from the UI.")
        instance.report_run_canceled(instance.get_run_by_id(by_hand))
        for run_id in (timed_out, by_hand):
            [event] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
            context = dg.build_run_status_sensor_context(
                sensor_name="loan_engine_timeout_sensor", dagster_event=event.dagster_event, dagster_instance=instance,
                dagster_run=instance.get_run_by_id(run_id),
                resources={"results_db": ResultsDatabase(url=results_url), "notifier": Notifier(webhook_url=hook.url)},
            )
            loan_engine_timeout_sensor(context)
        tags = instance.get_run_by_id(timed_out).tags
        assert tags[KIND_TAG] == "infra" and tags[PHASE_TAG] == "reference_data"
        assert KIND_TAG not in instance.get_run_by_id(by_hand).tags
        assert [m["run_id"] for m in hook.received] == [timed_out]
        assert "maximum runtime of 7200 seconds" in hook.received[0]["cause"]

