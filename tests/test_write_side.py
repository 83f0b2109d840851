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
