"""The local instance's pooled SQLite event log: same files and results as
Dagster's own, connections reused, bounded, and safe with two writers."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from sqlalchemy.engine import Connection

from loan_engine_dagster.orchestration import sqlite_storage
from loan_engine_dagster.orchestration.sqlite_storage import PooledSqliteEventLogStorage

ROOT = Path(__file__).resolve().parents[1]

# A partitioned asset with a check, as the loan engine's assets are: its run
# writes materializations and check results to the index file as well as the run's.
ASSET_CODE = textwrap.dedent(
    """
    import warnings

    import dagster as dg

    # Partitioned checks, as the project's own (orchestration/checks.py says why the preview is accepted).
    warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)
    parts = dg.StaticPartitionsDefinition([str(i) for i in range(40)])

    @dg.asset(partitions_def=parts, check_specs=[dg.AssetCheckSpec("ok", asset="thing", partitions_def=parts)])
    def thing(context):
        yield dg.Output(int(context.partition_key))
        yield dg.AssetCheckResult(passed=True, check_name="ok")
    """
)


def _thing():
    namespace: dict = {}
    exec(ASSET_CODE, namespace)
    return namespace["thing"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _materializations(instance) -> int:
    return len(instance.fetch_materializations(dg.AssetKey("thing"), limit=1000).records)


def test_the_projects_instance_uses_the_pooled_event_log(home):
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        result = dg.materialize([_thing()], instance=instance, partition_key="3")
        assert result.success
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("thing"), "ok"), limit=5)
        assert [c.status.value for c in checks] == ["SUCCEEDED"]
        assert checks[0].partition == "3"


def test_an_instance_opened_by_its_folder_stores_there(tmp_path, monkeypatch):
    # As the UI tests and scripts open a home: no DAGSTER_HOME involved.
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert dg.materialize([_thing()], instance=instance, partition_key="4").success
    assert (tmp_path / "history" / "runs" / "index.db").is_file()


def test_connections_are_reused_not_reopened(home):
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        with storage.index_connection() as conn:
            first = conn.connection.dbapi_connection
        with storage.index_connection() as conn:
            assert conn.connection.dbapi_connection is first


def test_open_databases_are_bounded_and_the_oldest_closed(home):
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        run_ids = [f"run{i:03d}" for i in range(sqlite_storage.MAX_OPEN_DATABASES + 5)]
        engines = []
        for run_id in run_ids:
            with storage.run_connection(run_id):
                pass
            engines.append(storage._engines[run_id])
        assert len(storage._engines) == sqlite_storage.MAX_OPEN_DATABASES
        assert run_ids[0] not in storage._engines and run_ids[-1] in storage._engines
        assert engines[0].pool.checkedin() == 0  # disposed: its file is closed
        with storage.run_connection(run_ids[0]):  # and a closed one opens again on demand
            pass


def test_has_table_answers_inside_an_open_transaction(home):
    # The base class asks has_table while it holds the index transaction and
    # its lock; a has_table that took the lock would hang the run.
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        answers = []

        def ask():
            with storage.index_connection():
                answers.append(storage.has_table("asset_check_executions"))
                answers.append(storage.has_table("no_such_table"))

        worker = threading.Thread(target=ask, daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert answers == [True, False]


def test_a_home_made_by_dagsters_own_storage_reads_the_same(home):
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage) is SqliteEventLogStorage
        run_id = dg.materialize([_thing()], instance=instance, partition_key="1").run_id
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert any(e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_SUCCESS
                   for e in instance.all_logs(run_id))
        assert dg.materialize([_thing()], instance=instance, partition_key="2").success
        assert _materializations(instance) == 2


def test_wipe_leaves_a_working_event_log(home):
    with dg.DagsterInstance.get() as instance:
        assert dg.materialize([_thing()], instance=instance, partition_key="1").success
        instance.wipe()
        assert dg.materialize([_thing()], instance=instance, partition_key="2").success
        assert _materializations(instance) == 1


def test_two_processes_and_two_threads_write_one_instance_at_once(home):
    """Idle pooled connections hold no SQLite lock: another process runs
    while two threads of this one (as the daemon's sensor threads do) write
    the same index file, and nothing is lost or refused as locked."""
    script = ASSET_CODE + textwrap.dedent(
        """
        with dg.DagsterInstance.get() as instance:
            for key in range(20, 32):
                assert dg.materialize([thing], instance=instance, partition_key=str(key)).success
        """
    )
    other = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    with dg.DagsterInstance.get() as instance:
        errors = []

        def write(keys):
            try:
                for key in keys:
                    instance.report_runless_asset_event(dg.AssetMaterialization("thing", partition=str(key)))
            except Exception as exc:  # noqa: BLE001 - the assertion below shows it
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(range(start, start + 10),)) for start in (0, 10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        _, err = other.communicate(timeout=600)
        assert other.returncode == 0, err
        assert errors == []
        assert _materializations(instance) == 32
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("thing"), "ok"), limit=100)
        assert len(checks) == 12


def test_processes_opening_a_new_home_at_once_all_succeed(home, tmp_path):
    """Past bug: two first `loan-engine run`s on a new DAGSTER_HOME (or the
    webserver and the daemon) both created the storage's tables; one failed
    with "table runs already exists" or a duplicate alembic version (5 of 5
    tries with four processes released together). Opening is now serialized."""
    line = tmp_path / "start"
    line.mkdir()
    script = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        import dagster as dg
        import loan_engine_dagster.orchestration.sqlite_storage  # imported before the start, as in the CLI
        line = Path(sys.argv[1])
        (line / f"ready-{os.getpid()}").touch()
        while not (line / "go").exists():
            time.sleep(0.001)
        with dg.DagsterInstance.get() as instance:
            instance.get_runs()
        """
    )
    processes = [subprocess.Popen([sys.executable, "-c", script, str(line)], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    deadline = time.monotonic() + 120
    while len(list(line.glob("ready-*"))) < 4 and time.monotonic() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.01)
    (line / "go").touch()  # all four open the new home together
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], "\n".join(e[-600:] for e in errors)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to be two accounts")
def test_an_admin_opening_the_home_once_leaves_the_service_account_able_to(tmp_path):
    """Past bug (with a lock file): the first process to create it was an
    admin's (`sudo loan-engine runs list`), whose file the service account
    could not open for writing; every later run, the webserver and the daemon
    failed with PermissionError on the lock file."""
    home = Path(tempfile.mkdtemp(dir="/tmp"))  # a folder another account can reach, unlike pytest's
    try:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        os.chown(home, 1000, 1000)
        os.chown(home / "dagster.yaml", 1000, 1000)
        home.chmod(0o755)
        look = "import dagster as dg\nwith dg.DagsterInstance.get() as i:\n    print(len(i.get_runs()))"
        as_service = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        for prefix in (as_service, [], as_service):  # set up by the service, looked at by root, used again
            done = subprocess.run([*prefix, sys.executable, "-c", look], env=env, cwd="/tmp", capture_output=True, text=True)
            assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr[-2000:]
        assert not [p.name for p in home.iterdir() if "lock" in p.name]
    finally:
        shutil.rmtree(home)


def test_a_process_stopped_while_opening_the_home_is_named_not_waited_for_forever(home, monkeypatch):
    monkeypatch.setattr(sqlite_storage, "SETUP_WAIT_SECONDS", 0.2)
    holder = os.open(home, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a process stopped in the middle of opening it holds it
    try:
        with pytest.raises(sqlite_storage.StorageSetupBusy, match=f"opening the Dagster instance in {home}"):
            dg.DagsterInstance.get()
    finally:
        os.close(holder)
    with dg.DagsterInstance.get() as instance:  # and once it is gone, the home opens
        assert instance.get_runs() == []


def _events_of(instance, run_id: str, event_type: dg.DagsterEventType) -> int:
    return sum(1 for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type == event_type)


def test_a_runs_planned_events_are_written_as_one_batch(home, monkeypatch):
    batches = []
    store_batch = PooledSqliteEventLogStorage.store_event_batch

    def spy(self, events):
        batches.append([e.dagster_event.event_type for e in events])
        store_batch(self, events)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_event_batch", spy)
    with dg.DagsterInstance.get() as instance:
        run_id = dg.materialize([_thing()], instance=instance, partition_key="5").run_id
        planned = {dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}
        assert [sorted(b, key=str) for b in batches] == [sorted(planned, key=str)]
        for event_type in planned:
            assert _events_of(instance, run_id, event_type) == 1
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("thing"), "ok"), limit=5)
        assert [(c.status.value, c.partition) for c in checks] == [("SUCCEEDED", "5")]


def test_a_batch_that_fails_midway_leaves_nothing_and_is_stored_again_one_by_one(home, monkeypatch, capfd):
    # The check's planned row fails inside the batch, after the batch has
    # written the materialization's events. All of it must roll back, or
    # Dagster's one-by-one retry would store those events twice.
    store_check = PooledSqliteEventLogStorage.store_asset_check_event

    def fails_in_a_batch(self, event, event_id):
        if self._open_batch() is not None:
            raise RuntimeError("disk full")
        store_check(self, event, event_id)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_asset_check_event", fails_in_a_batch)
    with dg.DagsterInstance.get() as instance:
        run_id = dg.materialize([_thing()], instance=instance, partition_key="6").run_id
        assert "Exception while storing event batch: disk full" in capfd.readouterr().err
        for event_type in (dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED):
            assert _events_of(instance, run_id, event_type) == 1
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("thing"), "ok"), limit=5)
        assert [(c.status.value, c.partition) for c in checks] == [("SUCCEEDED", "6")]
        # and the storage is usable again: the lock was released, the batch closed
        assert dg.materialize([_thing()], instance=instance, partition_key="7").success


def test_a_batch_whose_run_file_fails_to_commit_leaves_the_index_untouched(home, monkeypatch, capfd):
    # The two files commit one after the other. If the run's file fails at its
    # commit (a full disk), the index must not keep the batch: Dagster's
    # one-by-one retry would then insert the check's planned row twice and
    # refuse the run with a unique-key error.
    in_batch: list[Connection] = []  # the batch's connections, once its events are written
    store_event = PooledSqliteEventLogStorage.store_event
    commit = Connection._commit_impl

    def recording(self, event):
        store_event(self, event)
        batch = self._open_batch()
        if batch is not None:
            in_batch[:] = batch.connections.values()

    def failing_commit(self):
        if any(self is c for c in in_batch) and "index.db" not in str(self.engine.url):
            in_batch.clear()  # once: the retry's commits go through
            raise RuntimeError("disk full")
        return commit(self)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_event", recording)
    monkeypatch.setattr(Connection, "_commit_impl", failing_commit)
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([_thing()], instance=instance, partition_key="8")
        assert result.success
        assert "Exception while storing event batch: disk full" in capfd.readouterr().err
        for event_type in (dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED):
            assert _events_of(instance, result.run_id, event_type) == 1
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("thing"), "ok"), limit=5)
        assert [(c.status.value, c.partition) for c in checks] == [("SUCCEEDED", "8")]
