"""`scripts/benchmark.py`, the measure of a run's speed: it still runs the
real command end to end and prints what the README quotes. No timing is
asserted; only that every figure is there."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from loan_engine_dagster.definitions import defs

ROOT = Path(__file__).resolve().parent.parent
STEPS = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]  # one step per asset


def benchmark(*args, workdir, cwd=ROOT, ok=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME"))}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), *args, "--workdir", str(workdir)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_size_prints_each_step_the_overhead_and_the_ratio(tmp_path):
    out = benchmark("--loans", "40", "--existing", "100", "--mix", "stress", workdir=tmp_path)
    for step in STEPS:
        assert re.search(rf"^{step}\s+\d+\.\d\d\s+\d+\.\d\d", out, re.M), step
    for line in ("process start to first step", "events, checks, between steps", "whole `loan-engine run`",
                 "bare read of the same files", "peak RSS of the run process", "fixed cost of a run (smallest batch)"):
        assert line in out, line
    assert re.search(r"^ratio\s+\d+\.\d\dx$", out, re.M)


def test_against_runs_two_checkouts_in_alternating_pairs(tmp_path):
    out = benchmark("--loans", "2", "--existing", "10", "--repeat", "2", "--against", str(ROOT), workdir=tmp_path)
    rows = re.findall(r"^\s+(\d)\s+(\d+\.\d\d)\s+(\d+\.\d\d)\s+([+-]\d+\.\d\d)", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"], out
    for _, this, against, diff in rows:
        assert abs(float(this) - float(against) - float(diff)) < 0.011
    assert "over 2 pairs: wall median" in out
    assert "fixed cost" not in out  # a comparison only: no single-run report


def test_against_a_relative_folder_times_that_folder(tmp_path):
    """A relative source folder is the one beside the caller, not nothing:
    here its command is broken, so the comparison must fail. (Unresolved, the
    path meant nothing in the runs' work folder, and the editable install
    quietly ran this checkout's code instead.)"""
    old = tmp_path / "old"
    shutil.copytree(ROOT / "loan_engine_dagster", old / "loan_engine_dagster", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dagster.yaml", old)
    cli = old / "loan_engine_dagster" / "cli.py"
    source = cli.read_text()
    assert "def main() -> None:\n" in source
    cli.write_text(source.replace("def main() -> None:\n", "def main() -> None:\n    raise SystemExit('the old checkout ran')\n", 1))
    out = benchmark("--loans", "2", "--existing", "10", "--against", "old", workdir=tmp_path / "work", cwd=tmp_path, ok=False)
    assert "the old checkout ran" in out
