"""The `loan-engine` and `dagster job execute` command lines, as a person runs them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from test_sensors import Ticker, skip

from loan_engine_dagster.adapters.inbox import find_batch
from loan_engine_dagster.adapters.watch import batch_fingerprint
from loan_engine_dagster.rules.config import default_rules

BIN = Path(sys.executable).parent
BATCH = "2026-02-19"


def cli(*args, env=None, cwd=None):
    return subprocess.run([str(BIN / "loan-engine"), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture
def home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME"))}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    (tmp_path / "dagster_home").mkdir()
    return env


def locate(env, inbox, tmp_path):
    """Point the run at an inbox and at test folders through the environment."""
    env.update(LOAN_ENGINE_INBOX=str(inbox), LOAN_ENGINE_OUTPUT_DIR=str(tmp_path / "out"),
               LOAN_ENGINE_DATABASE_URL=f"sqlite:///{tmp_path / 'results.db'}")


def test_sample_inbox_command(tmp_path):
    result = cli("sample-inbox", str(tmp_path / "in"), "--loans", "40", "--existing", "50", "--batch", "2026-03-05")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "in" / "SFY_03-05-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx").is_file()
    assert (tmp_path / "in" / "Tape20Loans_03-04-2026.csv").is_file()
    bad = cli("sample-inbox", str(tmp_path / "x"), "--batch", "2026-13-01")
    assert bad.returncode == 2 and "is not a date in YYYY-MM-DD form" in bad.stderr


@pytest.mark.slow
def test_run_records_a_dagster_run_and_prints_summary(sample_inbox, tmp_path, home):
    locate(home, sample_inbox, tmp_path)
    result = cli("run", BATCH, "--pdate", "2026-02-24", env=home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loans offered:" in result.stdout and "600" in result.stdout
    assert "invalid_data" in result.stdout and f"outputs:        {tmp_path / 'out' / BATCH}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for platform in ("SFY", "PRIME"):  # the purchase plan, two lines per platform
        [at] = [i for i, line in enumerate(lines) if line.startswith(f"  plan {platform}:")]
        assert "buy" in lines[at] and "hold back" in lines[at] and "binding:" in lines[at + 1]
    assert "Warning" not in result.stdout + result.stderr  # e.g. Dagster's preview notice for per-batch checks
    os.environ["DAGSTER_HOME"] = home["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            [run] = instance.get_runs()
            assert run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "loan_engine_job"
            assert run.tags["dagster/partition"] == BATCH and run.tags["loan_engine/inbox"] == str(sample_inbox)
            assert instance.get_dynamic_partitions("batches") == [BATCH]
            # Tagged like the sensor's runs: the sensor sees these exact files already ran.
            files = find_batch(sample_inbox, BATCH, default_rules().inbox.tape_lookback_days)
            assert run.tags["loan_engine/fingerprint"] == batch_fingerprint(files)[:16]
            sensor = Ticker(instance, sample_inbox)
            assert not sensor.tick().run_requests
            second = sensor.tick()
            assert not second.run_requests and "already run with these exact files: 2026-02-19" in skip(second)
    finally:
        del os.environ["DAGSTER_HOME"]


# Runs a `loan-engine` command in this process and reports: every collection
# (its generation) made before the start-up's objects were frozen, the
# collector's state when the Dagster run starts, and at exit.
GC_PROBE = """
import atexit, gc, json, sys
import dagster as dg
from loan_engine_dagster.cli import main
early, at_run = [], []
gc.callbacks.append(lambda phase, info: phase == "start" and not gc.get_freeze_count() and early.append(info["generation"]))
execute_job = dg.execute_job
def watched(*args, **kwargs):
    at_run.append((gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()[0]))
    return execute_job(*args, **kwargs)
dg.execute_job = watched
atexit.register(lambda: print("probe", json.dumps({"early": early, "at_run": at_run, "enabled_at_exit": gc.isenabled()})))
sys.argv = ["loan-engine", *sys.argv[1:]]
main()
"""


def gc_probe(*args, env):
    result = subprocess.run([sys.executable, "-c", GC_PROBE, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("probe ")]
    seen = json.loads(line.removeprefix("probe "))
    return seen["early"], seen["at_run"], seen["enabled_at_exit"]


@pytest.mark.slow
def test_run_collects_garbage_only_after_start_up(sample_inbox, tmp_path, home):
    """No collection walks the start-up's objects; the Dagster run starts with
    the collector on, those objects frozen out of it, and its youngest
    generation collected every 10,000 allocations rather than Python's 700."""
    from loan_engine_dagster.cli import YOUNGEST_GENERATION_THRESHOLD

    locate(home, sample_inbox, tmp_path)
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", home["DAGSTER_HOME"])  # the project's own instance
    early, at_run, enabled_at_exit = gc_probe("run", BATCH, env=home)
    assert early == []
    [(enabled, frozen, youngest)] = at_run
    assert enabled and frozen > 100_000 and enabled_at_exit
    assert youngest == YOUNGEST_GENERATION_THRESHOLD > 700


def test_runs_commands_collect_garbage(home):
    """`runs list` reads every run's event log: its collector must be on."""
    early, at_run, enabled_at_exit = gc_probe("runs", "list", env=home)
    assert early == [] and at_run == [] and enabled_at_exit


@pytest.mark.slow
def test_run_structural_error_is_readable_and_nonzero(sample_inbox, tmp_path, home):
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    pd.read_csv(inbox / "current_assets.csv", dtype=str).drop(columns=["Purchase_Date"]).to_csv(inbox / "current_assets.csv", index=False)
    result = cli("run", BATCH, "--inbox", str(inbox), "--output-dir", str(tmp_path / "out"),
                 "--database-url", f"sqlite:///{tmp_path / 'r.db'}", env=home)
    assert result.returncode == 1
    assert "FAILED in phase reference_data [data]" in result.stderr
    assert "file 'current_assets.csv', column 'Purchase_Date': required column missing" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_run_incomplete_batch_and_bad_key(tmp_path, home):
    result = cli("run", BATCH, "--inbox", str(tmp_path), env=home)
    assert result.returncode == 2
    assert "missing SFY exhibit, PRIME exhibit, a tape dated 2026-02-15..2026-02-19, MASTER_SHEET.xlsx" in result.stderr
    bad = cli("run", "19-02-2026", env=home)
    assert bad.returncode == 2 and "is not YYYY-MM-DD" in bad.stderr


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_run_names_an_inbox_that_is_no_folder(tmp_path, home, where):
    # Past bug: read as an empty folder, the batch was "not complete" with all
    # seven files missing, and the seller was asked for files that were there.
    inbox = tmp_path / "no" / "such" / "folder"
    if where == "a file":
        inbox = tmp_path / "inbox.txt"
        inbox.write_text("not a folder")
    result = cli("run", BATCH, "--inbox", str(inbox), env=home)
    assert result.returncode == 2
    problem = "does not exist" if where == "missing" else "is not a folder"
    assert result.stderr.startswith(f"inbox folder {inbox} {problem}; ")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert "missing" not in result.stderr and "Traceback" not in result.stderr
    locate(home, inbox, tmp_path)  # the environment's inbox is checked the same way
    assert cli("run", BATCH, env=home).stderr == result.stderr


def test_an_empty_inbox_folder_is_told_as_such(tmp_path, home):
    """An unmounted share is an empty folder (its mount point): the batch's
    seven files "missing" sent on-call to the seller."""
    empty = tmp_path / "mnt" / "inbox"
    empty.mkdir(parents=True)
    result = cli("run", BATCH, "--inbox", str(empty), env=home)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("; the inbox folder is empty: if the files land on a share, check that it is mounted")
    (empty / "files_required").mkdir()  # the files beside it, not in it: the folder read is the one named
    (empty / "MASTER_SHEET.xlsx").write_bytes(b"x")
    result = cli("run", BATCH, "--inbox", str(empty), env=home)
    assert result.stderr.strip().endswith(f"; {empty / 'files_required'} is empty, and an inbox holding a files_required "
                                          "folder is read from there: put the files in it, or remove it")


@pytest.mark.parametrize("locked", ["inbox", "above it"])
def test_run_names_an_inbox_folder_it_may_not_read(sample_inbox, tmp_path, home, unreadable, locked):
    """Past bug: a bare `loan-engine: PermissionError` (exit 1), and from the
    UI a run classified [data], sending on-call to the seller."""
    inbox = tmp_path / "share" / "inbox"
    shutil.copytree(sample_inbox, inbox)
    unreadable.make(inbox if locked == "inbox" else inbox.parent)
    result = subprocess.run([*unreadable.prefix, str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox)],
                            capture_output=True, text=True, env=home, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"inbox folder {inbox} cannot be read: permission denied to this process's account; "
                                     "give it read and search access to the folder (and search access to the folders above it)")


def test_run_names_an_inbox_on_a_share_whose_server_is_gone(dead_share, home):
    """Past bug: `loan-engine: OSError` (exit 1), and the sensors' ticks failed."""
    result = cli("run", BATCH, "--inbox", str(dead_share), env=home)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"inbox folder {dead_share} cannot be read (Transport endpoint is not connected); "
                                     "if it is a network share, check that it is mounted and that its server answers")


def test_an_entry_it_may_not_look_at_does_not_block_the_batch(sample_inbox, tmp_path, unreadable):
    """Past bug: a link named like no input (`seller notes.txt`) into a folder
    the account may not enter stopped every run of the inbox with a bare
    PermissionError."""
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    private = tmp_path / "private"
    private.mkdir()
    (private / "notes.txt").write_text("x")
    (inbox / "seller notes.txt").symlink_to(private / "notes.txt")
    unreadable.make(private)
    look = (f"from loan_engine_dagster.adapters.inbox import find_batch\n"
            f"print(find_batch({str(inbox)!r}, {BATCH!r}, 4).complete)")
    result = subprocess.run([*unreadable.prefix, sys.executable, "-c", look], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]


@pytest.mark.parametrize(("name", "code", "before"), [
    # The batch's own files are hashed before a run starts: refused there.
    ("SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx", 2, ""),
    # The buyer's files are read by the run's first phase.
    ("MASTER_SHEET.xlsx", 1, "FAILED in phase reference_data [infra]: "),
])
def test_run_names_a_file_it_may_not_read(sample_inbox, tmp_path, home, unreadable, name, code, before):
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    unreadable.make(inbox / name)
    result = subprocess.run(
        [*unreadable.prefix, str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox), "--output-dir", str(tmp_path / "out"),
         "--database-url", f"sqlite:///{tmp_path / 'r.db'}"], capture_output=True, text=True, env=home, timeout=600)
    assert result.returncode == code, result.stdout + result.stderr
    said = f"file '{name}' cannot be read: permission denied to this process's account ({inbox / name}); give it read access (and search access to the folders it is in) and re-run"
    last = result.stderr.strip().splitlines()[-1]  # after Dagster's first-use notice, when it gets that far
    assert last.endswith(before + said) and (before or last == said)
    assert "Traceback" not in result.stdout + result.stderr
    if code == 2:  # stopped before registering the batch: no partition for a batch that never ran
        with dg.DagsterInstance.from_config(home["DAGSTER_HOME"]) as instance:
            assert instance.get_dynamic_partitions("batches") == []


def test_a_full_disk_under_the_reports_is_told_as_the_machine_naming_the_file(sample_inbox, tmp_path, home, full_disk):
    """Past bug: `FAILED in phase exports [code]: Failed to write file: No space
    left on device (os error 28)`: sent to the developers as a bug, naming no
    file (the writer's own error was the one shown, not the one naming it)."""
    result = cli("run", BATCH, "--inbox", str(sample_inbox), "--output-dir", str(full_disk),
                 "--database-url", f"sqlite:///{tmp_path / 'r.db'}", env=home)
    assert result.returncode == 1, result.stdout + result.stderr
    said = next(line for line in result.stderr.splitlines() if "FAILED in phase" in line)
    # Past bug too: the Rust writer's own `ZipWriter::drop: failed to finalize
    # archive: Io(Os { code: 28, ... })` came first, glued to this line.
    assert said.startswith("Run ") and "ZipWriter" not in result.stderr, result.stderr
    assert " FAILED in phase exports [infra]: writing " in said and f" {full_disk}/" in said
    assert said.endswith("No space left on device (os error 28)") or said.endswith("No space left on device"), said
    assert list(full_disk.iterdir()) == []  # the half-written reports went with the failure



@pytest.mark.parametrize("minutes", ["nan", "inf"])
def test_minutes_must_be_a_number(home, minutes):
    for command in (("runs", "mark", "--as", "failed", "--yes"), ("runs", "list")):
        result = cli(*command, "--older-than-minutes", minutes, env=home)
        assert result.returncode == 2 and "is not a number of minutes" in result.stderr


@pytest.mark.slow
def test_dagster_job_execute_once_batch_registered(sample_inbox, tmp_path, home):
    locate(home, sample_inbox, tmp_path)
    os.environ["DAGSTER_HOME"] = home["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("batches", [BATCH])
    finally:
        del os.environ["DAGSTER_HOME"]
    result = subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "loan_engine_dagster", "-j", "loan_engine_job",
         "--tags", json.dumps({"dagster/partition": BATCH})],
        capture_output=True, text=True, env=home, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / BATCH / "run_summary.json").read_text())["loans_offered"] == 600
    os.environ["DAGSTER_HOME"] = home["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            [run] = instance.get_runs()
            # launched with only dagster/partition, it still carries the batch and its files' fingerprint
            files = find_batch(sample_inbox, BATCH, default_rules().inbox.tape_lookback_days)
            assert run.tags["loan_engine/batch"] == BATCH and run.tags["loan_engine/inbox"] == str(sample_inbox)
            assert run.tags["loan_engine/fingerprint"] == batch_fingerprint(files)[:16]
    finally:
        del os.environ["DAGSTER_HOME"]
