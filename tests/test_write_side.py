"""The write side of a real `loan-engine run` under attack: the output folder
and the results database failing or changing under the run. Each fault is
made for real (links, files, a full file system, a replaced database); where
it must happen in the middle of a run, `before()` makes the run's own process
do it at a fixed point (tests/hostile/sitecustomize.py), never after a sleep."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
HOOKS = Path(__file__).parent / "hostile"
BATCH = "2026-02-19"


@pytest.fixture
def home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME", "HOSTILE_"))}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    (tmp_path / "dagster_home").mkdir()
    return env


def before(env, function: str, action: str) -> dict:
    """The run's process runs the Python statement `action` each time just
    before it calls `function` ("module:name", looked up on the module by
    its callers)."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(HOOKS), env.get("PYTHONPATH", "")]),
            "HOSTILE_BEFORE": function, "HOSTILE_ACTION": action}


def run(env, inbox, out, db_url, prefix=()):
    return subprocess.run(
        [*prefix, str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox), "--output-dir", str(out),
         "--database-url", db_url], capture_output=True, text=True, env=env, timeout=600)


def failure_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return next(line for line in result.stderr.splitlines() if " FAILED in phase " in line)


def test_a_batch_folder_that_is_a_link_is_replaced_and_what_it_points_to_is_left_alone(sample_inbox, tmp_path, home):
    """Past bug: the run published through the link: the folder it pointed
    to (a share, someone's folder) was moved aside and deleted with all it
    held, and the reports landed outside the output folder."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("someone else's file")
    (out / BATCH).symlink_to(elsewhere)
    result = run(home, sample_inbox, out, f"sqlite:///{tmp_path / 'r.db'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert (elsewhere / "keep.txt").read_text() == "someone else's file"
    assert not (out / BATCH).is_symlink() and (out / BATCH / "run_summary.json").is_file()
    assert [p.name for p in out.iterdir()] == [BATCH]  # nothing left aside


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_batch_folder_that_is_a_file_or_a_dangling_link_is_replaced_leaving_nothing_aside(sample_inbox, tmp_path, home, kind):
    """Past bugs: a file in the batch folder's place was moved aside and never
    removed (rmtree leaves files), and a link to nothing failed the save as
    [code] 'Not a directory'."""
    out = tmp_path / "out"
    out.mkdir()
    if kind == "file":
        (out / BATCH).write_text("not a folder")
    else:
        (out / BATCH).symlink_to(tmp_path / "gone")
    result = run(home, sample_inbox, out, f"sqlite:///{tmp_path / 'r.db'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (out / BATCH).is_symlink() and (out / BATCH / "run_summary.json").is_file()
    assert [p.name for p in out.iterdir()] == [BATCH]


# The phase before `exports` (called through the module): the intake phases have checked the output folder by then.
BEFORE_EXPORTS = "loan_engine_dagster.rules.pipeline:run_purchase_plan"


def test_an_output_folder_replaced_by_a_file_after_the_check_is_infra_naming_it(sample_inbox, tmp_path, home):
    """Past bug: `FAILED in phase exports [code]: [Errno 17] File exists: '/srv/outputs'`,
    sent to the developers as a bug, for a mount or a person's mistake."""
    out = tmp_path / "out"
    out.mkdir()
    env = before(home, BEFORE_EXPORTS, f"import os; p = {str(out)!r}; os.rmdir(p); open(p, 'w').write('x')")
    said = failure_line(run(env, sample_inbox, out, f"sqlite:///{tmp_path / 'r.db'}"))
    assert said.endswith(f" FAILED in phase exports [infra]: output folder {out} is a file, not a folder"), said
    assert out.read_text() == "x"  # left as it was


def save_retries(env, run_id: str) -> int:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            return len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))
    finally:
        del os.environ["DAGSTER_HOME"]


def loan_rows(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from loan_facts").fetchone()[0]


def test_a_results_database_on_a_full_disk_is_infra_naming_it_and_not_retried(sample_inbox, tmp_path, home, full_disk):
    """Past bug: `FAILED in phase results_database [infra]: database or disk
    is full`, naming neither the disk nor the database, and only after three
    retries 10 s apart that met the same full disk."""
    db = full_disk / "results.db"  # its tables fit; the batch's rows do not
    said = failure_line(run(home, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    assert said.endswith(f" FAILED in phase results_database [infra]: results database sqlite:///{db}: "
                         "database or disk is full"), said
    assert save_retries(home, said.split()[1]) == 0
    assert sorted(p.name for p in full_disk.iterdir()) == ["results.db"]  # no journal left behind
    assert loan_rows(db) == 0
    assert not (tmp_path / "out" / BATCH).exists()  # nothing published without its rows


BEFORE_SAVE = "loan_engine_dagster.adapters.database:save_batch"


MOVED = "its file was deleted or replaced while the run was using it (attempt to write a readonly database)"


def test_a_results_database_deleted_during_the_run_says_so_not_read_only(sample_inbox, tmp_path, home):
    """Past bug: `... [infra]: attempt to write a readonly database` for a
    database file deleted under the run: on-call checked permissions that
    were fine."""
    db = tmp_path / "results.db"
    env = before(home, BEFORE_SAVE, f"import os; os.remove({str(db)!r})")
    said = failure_line(run(env, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    assert said.endswith(f" FAILED in phase results_database [infra]: results database sqlite:///{db}: {MOVED}"), said
    assert save_retries(home, said.split()[1]) == 0
    assert not (tmp_path / "out" / BATCH).exists()


def test_a_results_database_deleted_during_the_run_is_not_made_again_empty(sample_inbox, tmp_path, home):
    """Past bug: handing the batch back as the command ended created a new,
    empty results database where the deleted one was: the next run saved
    there and succeeded, the history of every earlier batch silently gone
    from where people look for it."""
    db = tmp_path / "results.db"
    env = before(home, BEFORE_SAVE, f"import os; os.remove({str(db)!r})")
    failure_line(run(env, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    assert not db.exists()


def test_a_results_database_that_lost_the_batchs_lease_row_says_so(sample_inbox, tmp_path, home):
    """Past bug: a results database emptied or restored from an older copy
    during the run (no lease row for the batch any more) was told as `its
    lease was revoked (the run was marked failed)`: nobody had marked it."""
    db = tmp_path / "results.db"
    env = before(home, BEFORE_SAVE, f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
                                    "c.execute('delete from batch_leases'); c.commit(); c.close()")
    said = failure_line(run(env, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    run_id = said.split()[1]
    assert said.endswith(
        f" FAILED in phase results_database [infra]: Run {run_id} no longer holds batch {BATCH}: the results database "
        f"sqlite:///{db} has no lease of the batch any more (emptied, or replaced by another copy, during the run). "
        "Nothing was written; the batch's rows and reports are still those of the holder."), said
    assert loan_rows(db) == 0
    assert not (tmp_path / "out" / BATCH).exists()


def test_a_results_database_replaced_by_another_file_during_the_run_is_infra_naming_it(sample_inbox, tmp_path, home):
    """Past bug: `FAILED in phase results_database [code]: file is not a
    database`: a bug for the developers, naming no file (the same file at
    the start of a run was already infra, named)."""
    db = tmp_path / "results.db"
    env = before(home, BEFORE_SAVE, f"import os; os.remove({str(db)!r}); open({str(db)!r}, 'w').write('notes\\n' * 200)")
    said = failure_line(run(env, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    # SQLite says the one or the other, depending on whether the save's connection was opened before the swap.
    named = f" FAILED in phase results_database [infra]: results database sqlite:///{db}: "
    assert said.endswith((named + "file is not a database", named + MOVED)), said
    assert db.read_text() == "notes\n" * 200
    assert not (tmp_path / "out" / BATCH).exists()


def test_a_results_database_made_read_only_during_the_run_is_infra_naming_it_and_not_retried(
        sample_inbox, tmp_path, home, unreadable):
    """Past bug: `... [infra]: attempt to write a readonly database`, naming
    no database, after three retries that met the same refusal."""
    folder = tmp_path / "db"
    folder.mkdir()
    db = folder / "results.db"
    env = before(home, BEFORE_SAVE, f"import os; os.chmod({str(db)!r}, 0o444); os.chmod({str(folder)!r}, 0o555)")
    try:
        said = failure_line(run(env, sample_inbox, tmp_path / "out", f"sqlite:///{db}", prefix=unreadable.prefix))
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    assert said.endswith(f" FAILED in phase results_database [infra]: results database sqlite:///{db}: "
                         "attempt to write a readonly database"), said
    assert save_retries(home, said.split()[1]) == 0
    assert loan_rows(db) == 0
    assert not (tmp_path / "out" / BATCH).exists()


@pytest.mark.postgres
def test_a_results_database_turned_read_only_during_the_run_is_infra_naming_it(sample_inbox, tmp_path, home, postgres_url):
    """A PostgreSQL results database that stops taking writes while a batch
    is reviewed (a fail-over to a standby, a database set read-only for
    maintenance). Past bug: `FAILED in phase exports [code]: cannot execute
    SELECT FOR UPDATE in a read-only transaction`, naming no database."""
    name = postgres_url.rsplit("/", 1)[1]
    admin = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    env = before(home, BEFORE_EXPORTS, "from sqlalchemy import create_engine, text; "
                 f"e = create_engine({admin!r}, isolation_level='AUTOCOMMIT'); "
                 f"c = e.connect(); c.execute(text('ALTER DATABASE \"{name}\" SET default_transaction_read_only = on')); "
                 "c.close(); e.dispose()")
    said = failure_line(run(env, sample_inbox, tmp_path / "out", postgres_url))
    assert said.endswith(f" FAILED in phase exports [infra]: results database {postgres_url}: "
                         "cannot execute SELECT FOR UPDATE in a read-only transaction"), said
    assert not (tmp_path / "out" / BATCH).exists()


# Writes each phase's result to storage; the save starts only once the exports' one is written.
PICKLE_WRITE = "loan_engine_dagster.orchestration.io_manager:_write_pickle"


@pytest.mark.parametrize("gone", ["output folder", "staging folder", "output folder now a file"])
def test_staged_reports_gone_before_the_save_are_infra_saying_what_went(sample_inbox, tmp_path, home, gone):
    """Past bug: `FAILED in phase results_database [code]: the staged reports
    ... are gone (a later run of batch 2026-02-19 replaced them)`: a bug for
    the developers, and a later run that never was, when the output folder
    had been deleted or its share unmounted."""
    out, db = tmp_path / "out", tmp_path / "r.db"
    victim = f"{str(out)!r}" if gone != "staging folder" else f"next(__import__('pathlib').Path({str(out)!r}).glob('.*staging*'))"
    then = f"; open({str(out)!r}, 'w').write('x')" if gone == "output folder now a file" else ""
    env = before(home, PICKLE_WRITE, f"import shutil\nif '/exports/' in str(args[0]): shutil.rmtree({victim}){then}")
    said = failure_line(run(env, sample_inbox, out, f"sqlite:///{db}"))
    run_id = said.split()[1]
    staging = out / f".{BATCH}.staging-{run_id}"
    if gone == "output folder":
        expected = (f"output folder {out} is gone (deleted, or its share unmounted, during the run), and with it the "
                    f"reports staged in it; restore or mount it, then re-run the whole batch")
    elif gone == "output folder now a file":
        expected = (f"output folder {out} was replaced by a file during the run, and the reports staged in it are "
                    "gone; put the folder back, then re-run the whole batch")
    else:
        expected = (f"the staged reports {staging} are gone (removed during the run, or by a later run of batch "
                    f"{BATCH}); re-run the whole batch")
    assert said.endswith(f" FAILED in phase results_database [infra]: {expected}"), said
    assert loan_rows(db) == 0


@pytest.fixture
def mounted_batch_folder(tmp_path):
    """The batch folder in the output folder is a mount point (a share someone mounted there)."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount")
    out, share = tmp_path / "out", tmp_path / "share"
    (out / BATCH).mkdir(parents=True)
    share.mkdir()
    (share / "theirs.txt").write_text("the share's own file")
    mounted = subprocess.run(["mount", "--bind", str(share), str(out / BATCH)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    try:
        yield out, share
    finally:
        subprocess.run(["umount", "-l", str(out / BATCH)], capture_output=True)


def test_a_batch_folder_that_is_a_mount_point_is_infra_saying_so(sample_inbox, tmp_path, home, mounted_batch_folder):
    """Past bug: `FAILED in phase results_database [code]: [Errno 16] Device
    or resource busy: '.../2026-02-19' -> '.../.2026-02-19.old-...'`: a bug
    for the developers, for a share mounted where the reports go."""
    out, share = mounted_batch_folder
    db = tmp_path / "r.db"
    said = failure_line(run(home, sample_inbox, out, f"sqlite:///{db}"))
    assert said.endswith(
        f" FAILED in phase results_database [infra]: batch folder {out / BATCH} cannot be replaced: it is a mount "
        "point, or in use (Device or resource busy); unmount it (reports are published by renaming the batch "
        "folder), then re-run"), said
    assert [p.name for p in share.iterdir()] == ["theirs.txt"]
    assert loan_rows(db) == 0


def logged(env, run_id: str, words: str) -> list[str]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            return [e.message for e in instance.all_logs(run_id) if words in (e.message or "")]
    finally:
        del os.environ["DAGSTER_HOME"]


def test_a_results_database_already_full_at_the_start_is_named_at_once(sample_inbox, tmp_path, home, full_disk):
    """Past bug: three `results database unreachable, retry ... in 10s`
    warnings for a database that answered, then `FAILED in phase run
    [infra]: database or disk is full`, naming no database."""
    from loan_engine_dagster.adapters import database

    db = full_disk / "results.db"
    database.engine_for(f"sqlite:///{db}").dispose()  # its tables, made while there was room
    with open(full_disk / "filler", "wb", buffering=0) as filler:  # then the disk fills up
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
    said = failure_line(run(home, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    assert said.endswith(f" FAILED in phase run [infra]: results database sqlite:///{db}: database or disk is full"), said
    assert logged(home, said.split()[1], "results database unreachable") == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("writer", ["json", "csv through pandas", "workbook cell by cell"])
def test_every_report_writer_names_its_file_on_a_full_disk(full_disk, writer):
    """Past bug: the JSON reports, a CSV with numbers (pandas' writer) and a
    workbook with charts or mixed columns (XlsxWriter's) said only `[Errno
    28] No space left on device` on a full disk; which of a batch's dozen
    files, on which disk, was left to guess. The Rust writers' errors were
    named already."""
    import numpy as np
    import pandas as pd

    from loan_engine_dagster.adapters.outputs import write_csv, write_json, write_workbook

    path = full_disk / {"json": "r.json", "csv through pandas": "r.csv", "workbook cell by cell": "r.xlsx"}[writer]
    write = {
        "json": lambda: write_json({"rows": ["x" * 100] * 2000}, path),
        "csv through pandas": lambda: write_csv(pd.DataFrame({"row": np.arange(50_000)}), path),
        "workbook cell by cell": lambda: write_workbook(pd.DataFrame({"mixed": [1, "x", 2.5] * 20_000}), path),
    }[writer]
    with pytest.raises(Exception) as raised:
        write()
    assert str(raised.value).startswith(f"writing {path}: "), str(raised.value)
    assert "No space left on device" in str(raised.value)


def test_a_workbook_failing_on_a_full_disk_leaves_no_open_file_to_complain_later(full_disk):
    """Past bug: XlsxWriter's zip file, left open by the failed save, was
    closed by the garbage collector later, which printed `Exception ignored
    in: <function ZipFile.__del__>` and a traceback to the terminal (and kept
    the file open until then)."""
    import gc

    import pandas as pd

    from loan_engine_dagster.adapters.outputs import write_workbook

    ignored = []
    hook, sys.unraisablehook = sys.unraisablehook, ignored.append
    try:
        path = full_disk / "r.xlsx"
        with pytest.raises(Exception, match="No space left on device"):
            write_workbook(pd.DataFrame({"mixed": [1, "x", 2.5] * 20_000}), path)
        gc.collect()
        open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    finally:
        sys.unraisablehook = hook
    assert ignored == []
    assert not any(str(full_disk) in f for f in open_files), open_files


@pytest.fixture
def postgres_on_a_full_disk():
    """A fresh PostgreSQL database whose files live on a 12 MiB file system
    (a tablespace on a tmpfs), with the tables made, then `fill()` leaves
    `room` KiB free. Needs root and the server on this machine."""
    import shutil
    import tempfile
    import uuid

    from sqlalchemy import create_engine, text

    from conftest import PG_ADMIN_URL
    from loan_engine_dagster.adapters import database

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small file system")
    folder = Path(tempfile.mkdtemp(prefix="loan-engine-pg-", dir="/tmp"))  # the server's account must reach it
    folder.chmod(0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    shutil.chown(folder, "postgres", "postgres")
    name = f"loan_engine_full_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE TABLESPACE {name} LOCATION '{folder}'"))
            conn.execute(text(f"CREATE DATABASE {name} TABLESPACE {name}"))
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        database.engine_for(url).dispose()

        def fill(room: int) -> None:
            free = shutil.disk_usage(folder).free // 1024
            with open(folder / "filler", "wb") as filler:
                filler.write(b"\0" * (free - room) * 1024)

        yield url, fill
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f"DROP TABLESPACE IF EXISTS {name}"))
        admin.dispose()
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        folder.rmdir()


@pytest.mark.postgres
def test_a_postgresql_results_database_on_a_full_disk_is_infra_naming_it_and_not_retried(
        sample_inbox, tmp_path, home, postgres_on_a_full_disk):
    """Past bug: PostgreSQL's disk_full is an OperationalError, so the save
    was retried three times 10 s apart, then told without the database."""
    url, fill = postgres_on_a_full_disk
    fill(256)  # room for the run's lease, not for the batch's rows
    said = failure_line(run(home, sample_inbox, tmp_path / "out", url))
    assert f" FAILED in phase results_database [infra]: results database {url}: could not extend file " in said, said
    assert said.endswith(": No space left on device"), said
    assert save_retries(home, said.split()[1]) == 0
    assert not (tmp_path / "out" / BATCH).exists()


def test_a_sqlite_results_database_in_a_folder_that_does_not_exist_is_told_at_once(sample_inbox, tmp_path, home):
    """Past bug: three `results database unreachable, retry ... in 10s`
    warnings, then `cannot be reached (OperationalError: unable to open
    database file)`: 30 s for a typo, and not a word of the missing folder
    (a relative path's folder is made; an absolute path's was never)."""
    db = tmp_path / "no-such-folder" / "results.db"
    said = failure_line(run(home, sample_inbox, tmp_path / "out", f"sqlite:///{db}"))
    assert said.endswith(f" FAILED in phase run [infra]: results database sqlite:///{db} cannot be opened: its folder "
                         f"{db.parent} does not exist (create it, or mount the share it is on)"), said
    assert logged(home, said.split()[1], "results database unreachable") == []
    assert not db.parent.exists() and not (tmp_path / "out").exists()


def test_an_output_folder_on_a_share_whose_server_is_gone_is_told_like_the_inbox(sample_inbox, tmp_path, home, dead_share):
    """Past bug: `FAILED in phase batch_inputs [infra]: [Errno 107] Transport
    endpoint is not connected: '/srv/outputs'`: the kernel's words, where
    the same share under the inbox gets a sentence saying what to check."""
    out = dead_share / "outputs"
    said = failure_line(run(home, sample_inbox, out, f"sqlite:///{tmp_path / 'r.db'}"))
    assert " FAILED in phase reference_data [infra]: " in said or " FAILED in phase batch_inputs [infra]: " in said, said
    assert said.endswith(f"[infra]: output folder {out} cannot be reached (Transport endpoint is not connected); if it "
                         "is a network share, check that it is mounted and that its server answers"), said


def test_staged_reports_on_a_share_whose_server_is_gone_say_so(dead_share):
    """Second read: the check for the staged reports met the kernel's bare
    "[Errno 107] Transport endpoint is not connected" on a dead share."""
    from loan_engine_dagster.adapters.outputs import StagedReportsMissing, require_staged

    with pytest.raises(StagedReportsMissing, match="cannot be reached .*check that it is mounted"):
        require_staged(dead_share / ".2026-02-19.staging-r", "2026-02-19")


# Just before the save's commit: the process dies with its reports swapped in.
KILL_AT_COMMIT = (
    "import os, signal, threading, sqlalchemy.engine.default as d\n"
    "_commit = d.DefaultDialect.do_commit\n"
    "def _die(self, connection):\n"
    "    if threading.current_thread() is threading.main_thread():  # the save; not the lease's heartbeat\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return _commit(self, connection)\n"
    "d.DefaultDialect.do_commit = _die"
)


def _shown_run(out: Path) -> str:
    return json.loads((out / BATCH / "run_summary.json").read_text())["run_id"]


def _rows_run(db: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return {run for (run,) in conn.execute("select distinct run_id from loan_facts")}


def test_a_worker_killed_between_swapping_its_reports_in_and_its_commit_is_mended_by_the_next_run(
        sample_inbox, tmp_path, home):
    """SIGKILL, for real, at the one moment the reports and the rows disagree:
    the killed run's reports are in the batch folder, the rows are still the
    previous run's. The next run puts the previous reports back before
    anything else, so that they agree again even if it fails later; a run
    that succeeds replaces both, and nothing of the killed run is left."""
    out, db = tmp_path / "out", tmp_path / "r.db"
    first = run(home, sample_inbox, out, f"sqlite:///{db}")
    assert first.returncode == 0, first.stdout + first.stderr
    previous = _shown_run(out)

    killed = run(before(home, "loan_engine_dagster.adapters.batch:swapped_in", KILL_AT_COMMIT), sample_inbox, out,
                 f"sqlite:///{db}")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    dead = _shown_run(out)
    assert dead != previous and _rows_run(db) == {previous}  # the fault: reports of one run, rows of another
    assert [p.name for p in out.glob(f".{BATCH}.old-*")]  # the previous reports, set aside by the swap

    refused = run(home, sample_inbox, out, f"sqlite:///{db}")
    assert refused.returncode == 2 and f"already has run {dead} in progress" in refused.stderr, refused.stderr
    marked = subprocess.run([str(BIN / "loan-engine"), "runs", "mark", dead, "--as", "failed"], capture_output=True,
                            text=True, env=home, timeout=120)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "saved" not in marked.stdout  # killed before its commit: the rows are another run's

    # The next run fails in a later phase: by then reports and rows agree again.
    failed = run(before(home, "loan_engine_dagster.orchestration.assets:stage_batch_outputs", "raise RuntimeError('x')"),
                 sample_inbox, out, f"sqlite:///{db}")
    run_id = failure_line(failed).split()[1]
    assert _shown_run(out) == previous and _rows_run(db) == {previous}
    assert _repairs(home, run_id) == [f"batch folder: put back the reports of run {previous}, whose rows the results "
                                      f"database holds (the folder held run {dead}'s reports)"]

    again = run(home, sample_inbox, out, f"sqlite:///{db}")
    assert again.returncode == 0, again.stdout + again.stderr
    latest = _shown_run(out)
    assert latest not in (previous, dead) and _rows_run(db) == {latest}
    assert not list(out.glob(f".{BATCH}.*"))  # no hidden copies or staging folders left


def _repairs(env, run_id: str) -> list[str]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        return [e.user_message for e in instance.all_logs(run_id) if e.user_message.startswith("batch folder:")]


def test_a_run_marked_failed_before_it_took_the_batch_writes_nothing(sample_inbox, tmp_path, home):
    """Past bug (hostile pass): a run marked failed by on-call in the moment
    between its start and its taking the batch's lease went on without a
    lease: it overwrote the rows and reports of the batch's holder and ended
    SUCCESS though marked failed. The real `runs mark` runs here from inside
    that moment."""
    out, db = tmp_path / "out", tmp_path / "r.db"
    first = run(home, sample_inbox, out, f"sqlite:///{db}")
    assert first.returncode == 0, first.stdout + first.stderr
    holder = _shown_run(out)
    mark_at_setup = (
        "import subprocess, sys\n"
        "from loan_engine_dagster.orchestration import resources as r\n"
        "_setup = r.ResultsDatabase.setup_for_execution\n"
        "def _marked_first(self, context):\n"
        "    if not _marked_first.__dict__.get('done'):  # once: Dagster sets the resource up again to read the result\n"
        "        _marked_first.done = True\n"
        f"        subprocess.run([{str(BIN / 'loan-engine')!r}, 'runs', 'mark', context.run.run_id, '--as', 'failed'],\n"
        "                       check=True, capture_output=True)\n"
        "    return _setup(self, context)\n"
        "r.ResultsDatabase.setup_for_execution = _marked_first"
    )
    said = failure_line(run(before(home, "loan_engine_dagster.adapters.files:read_ahead", mark_at_setup), sample_inbox,
                            out, f"sqlite:///{db}"))
    run_id = said.split()[1]
    assert said.endswith(f" FAILED in phase batch_inputs [infra]: Run {run_id} was marked failed before it took batch "
                         f"{BATCH}: it writes nothing; the batch's rows and reports are still those of its holder"), said
    assert _shown_run(out) == holder and _rows_run(db) == {holder}
    assert not list(out.glob(f".{BATCH}.*"))
    os.environ["DAGSTER_HOME"] = home["DAGSTER_HOME"]
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_run_whose_batch_was_taken_over_while_it_wrote_its_reports_says_so(sample_inbox, tmp_path, home):
    """Past bug (hostile pass): a live run marked failed while it wrote its
    reports, the batch then run again: the new run cleared the first one's
    staging folder, and the first failed as `[code]` with a bare `No such file
    or directory`, sending on-call to the developers."""
    out, db = tmp_path / "out", tmp_path / "r.db"
    plain = {k: v for k, v in home.items() if not k.startswith("HOSTILE_")}
    take_over = (
        "import builtins, os, subprocess\n"
        "if not getattr(builtins, '_taken_over', False):\n"
        "    builtins._taken_over = True\n"
        "    run_id = args[1].parent.name.split('staging-')[1]\n"
        f"    subprocess.run([{str(BIN / 'loan-engine')!r}, 'runs', 'mark', run_id, '--as', 'failed'], check=True,\n"
        "                   capture_output=True)\n"
        f"    subprocess.run([{str(BIN / 'loan-engine')!r}, 'run', {BATCH!r}, '--inbox', {str(sample_inbox)!r},\n"
        f"                    '--output-dir', {str(out)!r}, '--database-url', {f'sqlite:///{db}'!r}],\n"
        f"                   check=True, capture_output=True, env={plain!r})\n"
    )
    said = failure_line(run(before(home, "loan_engine_dagster.adapters.outputs:write_json", take_over), sample_inbox, out,
                            f"sqlite:///{db}"))
    run_id, holder = said.split()[1], _shown_run(out)
    assert said.endswith(f" FAILED in phase exports [infra]: Run {run_id} no longer holds batch {BATCH}: run {holder} "
                         "took the batch over. Nothing was written; the batch's rows and reports are still those of the "
                         "holder."), said
    assert holder != run_id and _rows_run(db) == {holder}
    assert not list(out.glob(f".{BATCH}.*"))


def test_an_exhibit_re_delivered_while_the_run_reads_it_is_infra_and_saves_nothing(sample_inbox, tmp_path, home):
    out, db = tmp_path / "out", tmp_path / "r.db"
    re_deliver = (
        "import builtins, os, shutil\n"
        "if args[1].name.startswith('SFY_') and not getattr(builtins, '_delivered', False):\n"
        "    builtins._delivered = True\n"
        "    shutil.copy(args[1], args[1].with_name('.upload.tmp'))\n"
        "    os.rename(args[1].with_name('.upload.tmp'), args[1])\n"
    )
    said = failure_line(run(before(home, "loan_engine_dagster.adapters.loading:describe_file", re_deliver), sample_inbox,
                            out, f"sqlite:///{db}"))
    sfy = next(sample_inbox.glob("SFY_*")).name
    assert said.endswith(f" FAILED in phase batch_inputs [infra]: {sfy} changed while this run read it (a new delivery?): "
                         "nothing of this run is saved; run the batch again on the files as they are now"), said
    assert loan_rows(db) == 0 and not (out / BATCH).exists()
    again = run(home, sample_inbox, out, f"sqlite:///{db}")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_run_that_finds_other_files_than_it_was_started_for_saves_nothing(sample_inbox, tmp_path, home):
    """Past bug (hostile pass): the sensor checks that a delivery is whole when
    it asks for a run, and the run read the files by name when it started: a
    tape an upload tool was writing again by then was read half written, and
    the run succeeded, tagged as the whole delivery. Here the tape changes
    between `loan-engine run` taking the fingerprint and the phase reading it."""
    out, db = tmp_path / "out", tmp_path / "r.db"
    tape = next(sample_inbox.glob("Tape20Loans_*"))
    half = f"open({str(tape)!r}, 'r+b').truncate({tape.stat().st_size // 2})"
    said = failure_line(run(before(home, "loan_engine_dagster.orchestration.assets:load_batch_inputs", half),
                            sample_inbox, out, f"sqlite:///{db}"))
    assert " FAILED in phase batch_inputs [infra]: the batch's files are not the delivery this run was started for " in said
    assert said.endswith("nothing of this run is saved, and the inbox sensor starts a run for the files once they "
                         "stay the same"), said
    assert loan_rows(db) == 0 and not (out / BATCH).exists()


# Just after the save's commit: the process dies with its rows and reports
# saved, before any event says so.
KILL_AFTER_COMMIT = KILL_AT_COMMIT.replace(
    "        os.kill(os.getpid(), signal.SIGKILL)\n    return _commit(self, connection)\n",
    "        _commit(self, connection)\n        os.kill(os.getpid(), signal.SIGKILL)\n    return _commit(self, connection)\n",
)


def _killed_after_its_commit(env, inbox, out, db) -> str:
    killed = run(before(env, "loan_engine_dagster.adapters.batch:swapped_in", KILL_AFTER_COMMIT), inbox, out,
                 f"sqlite:///{db}")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    dead = _shown_run(out)
    assert _rows_run(db) == {dead}  # saved and published, and the run never said so
    return dead


def test_a_worker_killed_after_its_commit_is_failed_by_the_dead_worker_sensor_saying_nothing_is_lost(
        sample_inbox, tmp_path, home, monkeypatch):
    """Dagster shows the run FAILED (its last events never came), but its
    results are the batch's: the failure says so, for on-call and in the
    incident, and the run is not retried (a retry would compute and save the
    same batch again)."""
    import shutil
    import time

    import dagster as dg

    from loan_engine_dagster.orchestration.failures import RESULTS_SAVED, build_incident, dead_worker_sensor
    from loan_engine_dagster.orchestration.resources import Notifier, ResultsDatabase
    from loan_engine_dagster.orchestration.run_records import (
        MAX_RETRIES_TAG, RESULTS_SAVED_TAG, WILL_RETRY_TAG, latest_good_run,
    )

    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", Path(home["DAGSTER_HOME"]) / "dagster.yaml")
    grace = 2
    monkeypatch.setenv("LOAN_ENGINE_DEAD_WORKER_SECONDS", str(grace))
    monkeypatch.setenv("DAGSTER_HOME", home["DAGSTER_HOME"])
    out, db = tmp_path / "out", tmp_path / "r.db"
    dead = _killed_after_its_commit(home, sample_inbox, out, db)
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.STARTED
        # A run the daemon launched may be retried; `loan-engine run`'s never are.
        instance.add_run_tags(dead, {MAX_RETRIES_TAG: "2"})
        time.sleep(grace + 1)
        results_db = ResultsDatabase(url=f"sqlite:///{db}")
        result = dead_worker_sensor(dg.build_sensor_context(instance=instance, cursor="{}",
                                                            resources={"results_db": results_db}))
        assert result.skip_reason.skip_message == f"marked FAILED: {dead}"
        run_after = instance.get_run_by_id(dead)
        assert run_after.status == dg.DagsterRunStatus.FAILURE
        assert run_after.tags[WILL_RETRY_TAG] == "false"
        # Tagged with its own id, and its retry setting back for re-executions started from it by hand.
        assert run_after.tags[RESULTS_SAVED_TAG] == dead and run_after.tags[MAX_RETRIES_TAG] == "2"
        assert latest_good_run(instance, BATCH).run_id == dead  # for the inbox sensor: its files ran
        incident = build_incident(instance, run_after, Notifier(), "run failed")
        assert incident.kind == "infra" and incident.phase == "results_database"
        assert incident.cause.startswith(f"Run worker disappeared: run {dead} (batch {BATCH}) sent no heartbeat")
        assert incident.cause.endswith(f"Its {RESULTS_SAVED.removeprefix('its ')}."), incident.cause
    assert _shown_run(out) == dead and _rows_run(db) == {dead}  # nothing undone


def test_runs_mark_on_a_run_killed_after_its_commit_says_its_results_were_saved(
        sample_inbox, tmp_path, home, monkeypatch):
    import shutil

    import dagster as dg

    from loan_engine_dagster.orchestration.failures import RESULTS_SAVED
    from loan_engine_dagster.orchestration.run_records import MAX_RETRIES_TAG, RESULTS_SAVED_TAG, WILL_RETRY_TAG

    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", Path(home["DAGSTER_HOME"]) / "dagster.yaml")
    out, db = tmp_path / "out", tmp_path / "r.db"
    dead = _killed_after_its_commit(home, sample_inbox, out, db)
    monkeypatch.setenv("DAGSTER_HOME", home["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        instance.add_run_tags(dead, {MAX_RETRIES_TAG: "2"})  # as a run the daemon launched
    marked = subprocess.run([str(BIN / "loan-engine"), "runs", "mark", dead, "--as", "failed"], capture_output=True,
                            text=True, env=home, timeout=120)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert marked.stdout.strip().endswith(f"its batch lease is revoked; {RESULTS_SAVED}"), marked.stdout
    with dg.DagsterInstance.get() as instance:
        tags = instance.get_run_by_id(dead).tags
    assert (tags[WILL_RETRY_TAG], tags[RESULTS_SAVED_TAG], tags[MAX_RETRIES_TAG]) == ("false", dead, "2")
    assert _shown_run(out) == dead and _rows_run(db) == {dead}
