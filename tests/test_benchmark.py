"""`scripts/benchmark.py`, the measure of a run's speed: it still runs the
real command end to end and prints what the README quotes. No timing is
asserted; only that every figure is there."""

import os
import re
import subprocess
import sys
from pathlib import Path

from loan_engine_dagster.definitions import defs

ROOT = Path(__file__).resolve().parent.parent
STEPS = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]  # one step per asset


def benchmark(*args, workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME"))}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), *args, "--workdir", str(workdir)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


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
