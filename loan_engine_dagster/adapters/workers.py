"""Is a run's worker process still there? Read from /proc, so it works for
the default run launcher, whose workers run on the daemon's machine."""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A process that started this much later than the run cannot be its worker:
# the pid was reused.
PID_REUSE_SLACK_SECONDS = 5.0


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


def process_alive(pid: int, run_started_at: float | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, given the run's start time, is
    not a newer process that inherited the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # The command name may hold spaces and parentheses; fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X", "x"):
        return False
    if run_started_at is not None:
        started = _boot_time() + start_ticks / _CLOCK_TICKS
        if started > run_started_at + PID_REUSE_SLACK_SECONDS:
            return False
    return True
