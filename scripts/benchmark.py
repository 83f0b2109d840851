"""Time the real `loan-engine run` against the bare reading of its input files.

    .venv/bin/python scripts/benchmark.py --loans 100000 --mix stress
    .venv/bin/python scripts/benchmark.py --loans 100000 --mix typical --repeat 3
    .venv/bin/python scripts/benchmark.py --scaling            # 25k, 50k, 100k, 200k buy loans

For each size it generates a sample inbox (existing assets 5x the buy loans
unless --existing is given; not timed), then, in the same invocation:

- reads the same input files bare: every sheet of every workbook through
  calamine into a DataFrame, the CSV files through pandas' pyarrow reader;
- runs `loan-engine run BATCH` as a subprocess, with a fresh DAGSTER_HOME (its
  SQLite storage created beforehand, as once per home; timed apart) and
  a fresh SQLite results database each time, exactly as a user would;
- reads that run's Dagster event log to split the wall clock into per-step
  times (one row per step found, whatever the job holds), the work inside each
  asset (its `elapsed_seconds` metadata), the IO manager (`inputs`: step
  start to its last input loaded, resources and events included; `output`:
  the output handed over to its pickle written) and the rest (process start-up before the first step, the
  gaps between steps and after the last one);
- reports the peak RSS of the run process (its own VmHWM, read while it
  runs) and its CPU seconds (from wait4),
  and the bare read's CPU seconds: on a machine shared with other work the
  CPU ratio moves much less than the wall-clock one;
- runs the same command on the smallest batch the generator makes (2 buy
  loans, 10 existing): the fixed cost of any run, which the rest of a run's
  time is compared with.

To compare two versions of the code, run them in alternating pairs on the
same inbox (the order swapped at every pair) and read the differences:

    .venv/bin/python scripts/benchmark.py --loans 100000 --mix typical --repeat 8 --against /tmp/old

Not a test: the machine's load makes single timings noisy. Use --repeat and
read the best; copy the figures into the README with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
from python_calamine import CalamineWorkbook

from loan_engine_dagster.adapters.sample import default_batch_date, generate_inbox

ROOT = Path(__file__).resolve().parent.parent
LOAN_ENGINE = Path(sys.executable).with_name("loan-engine")
SCALING_SIZES = (25_000, 50_000, 100_000, 200_000)
FLOOR_LOANS, FLOOR_EXISTING = 2, 10


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def bare_read(inbox: Path) -> tuple[float, float]:
    """Wall and CPU seconds to read every input file into DataFrames, nothing else."""
    cpu = _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))
    start = time.perf_counter()
    for path in sorted(inbox.iterdir()):
        if path.suffix == ".xlsx":
            workbook = CalamineWorkbook.from_path(str(path))
            for name in workbook.sheet_names:
                pd.DataFrame(workbook.get_sheet_by_name(name).to_python(skip_empty_area=False), dtype=object)
        elif path.suffix == ".csv":
            pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")
    return time.perf_counter() - start, _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - cpu


class _PeakRss:
    """The child's own high-water mark (VmHWM), read while it runs. wait4's
    ru_maxrss would also count this benchmark's own memory, which the child
    holds for a moment between fork and exec."""

    def __init__(self, pid: int) -> None:
        self.mib = 0.0
        self._status = Path(f"/proc/{pid}/status")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.02):
            try:
                text = self._status.read_text()
            except OSError:  # the process has exited
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.mib = max(self.mib, int(line.split()[1]) / 1024)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_loan_engine(inbox: Path, batch: str, workdir: Path, code: Path | None = None) -> dict:
    """One real `loan-engine run` in a fresh Dagster instance; wall seconds,
    peak RSS and the run's event log. The instance is new and empty, but its
    SQLite storage is created before the clock starts, as the first
    `loan-engine run`, UI start or `dagster instance migrate` does once per
    DAGSTER_HOME; that one-time cost is reported on its own."""
    home = workdir / "dagster_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy((code or ROOT) / "dagster.yaml", home / "dagster.yaml")  # the instance config of the code timed
    db = workdir / "results.db"
    db.unlink(missing_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    if code is not None:  # another checkout of the project, e.g. to compare with an earlier commit
        env["PYTHONPATH"] = str(code)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().get_runs()"], env=env, check=True)
    instance_setup = time.perf_counter() - start
    # Files written before the clock starts (a new inbox, the last run's
    # outputs) are flushed now: their write-back would otherwise compete with
    # the run's own fsyncs (its commits and reports), by however much
    # happened to come before.
    os.sync()
    program = [str(LOAN_ENGINE)]
    if code is not None:
        program = [sys.executable, "-m", "loan_engine_dagster.cli"]
    command = [*program, "run", batch, "--inbox", str(inbox), "--output-dir", str(workdir / "outputs"),
               "--database-url", f"sqlite:///{db}"]
    log = workdir / "run.log"
    with open(log, "wb") as out:
        started_at = time.time()
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = _PeakRss(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        peak.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"loan-engine run failed (exit {process.returncode}):\n{log.read_text()[-3000:]}")
    return {"wall": wall, "cpu": _cpu_seconds(usage), "started_at": started_at, "max_rss_mib": peak.mib,
            "events": event_log(home), "output": log.read_text(), "instance_setup": instance_setup}


def event_log(home: Path) -> list:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        if len(runs) != 1:
            sys.exit(f"expected one run in the fresh instance, found {len(runs)}")
        return list(instance.all_logs(runs[0].run_id))


def phases(run: dict) -> dict:
    """Per step: wall seconds, work inside the asset, IO manager load and store."""
    steps: dict[str, dict] = defaultdict(lambda: {"load": 0.0, "store": 0.0, "compute": 0.0})
    first_step = last_step = None
    run_start = None
    for entry in run["events"]:
        event = entry.dagster_event
        if event is None:
            continue
        kind, ts, step = event.event_type_value, entry.timestamp, entry.step_key
        if kind == "RUN_START":
            run_start = ts
        if step is None:
            continue
        row = steps[step]
        if kind == "STEP_START":
            row["start"] = row["mark"] = ts
            first_step = ts if first_step is None else min(first_step, ts)
        elif kind == "LOADED_INPUT":
            row["load"] += ts - row["mark"]
            row["mark"] = ts
        elif kind == "STEP_OUTPUT":
            row["mark"] = ts
        elif kind == "HANDLED_OUTPUT":
            row["store"] += ts - row["mark"]
            row["mark"] = ts
        elif kind == "ASSET_MATERIALIZATION":
            elapsed = event.step_materialization_data.materialization.metadata.get("elapsed_seconds")
            if elapsed is not None:
                row["compute"] += float(elapsed.value)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            row["end"] = ts
            last_step = ts if last_step is None else max(last_step, ts)
    ordered = dict(sorted(((k, v) for k, v in steps.items() if "start" in v), key=lambda kv: kv[1]["start"]))
    for row in ordered.values():
        row["wall"] = row["end"] - row["start"]
    return {
        "steps": ordered,
        "to_run_start": (run_start or first_step) - run["started_at"],
        "to_first_step": first_step - run["started_at"],
        "after_last_step": run["started_at"] + run["wall"] - last_step,
    }


def one_size(loans: int, existing: int, mix: str, repeat: int, workdir: Path, seed: int, code: Path | None) -> dict:
    inbox = inbox_for(loans, existing, mix, workdir, seed)
    batch = default_batch_date().isoformat()
    best = None
    for attempt in range(repeat):
        read, read_cpu = bare_read(inbox)
        run = run_loan_engine(inbox, batch, workdir, code)
        run["read"], run["read_cpu"] = read, read_cpu
        run["phases"] = phases(run)
        print(f"  try {attempt + 1}: whole run {run['wall']:.2f} s, bare read {read:.2f} s, "
              f"ratio {run['wall'] / read:.2f}x, peak RSS {run['max_rss_mib']:,.0f} MiB", flush=True)
        if best is None or run["wall"] < best["wall"]:
            best = run
    return best


def inbox_for(loans: int, existing: int, mix: str, workdir: Path, seed: int) -> Path:
    inbox = workdir / f"inbox-{loans}-{existing}-{mix}-{seed}"
    if not inbox.is_dir():
        start = time.perf_counter()
        generate_inbox(inbox, loans=loans, existing=existing, seed=seed, stress=mix == "stress")
        print(f"  sample inbox generated in {time.perf_counter() - start:.1f} s (not timed below)", flush=True)
    return inbox


def alternating_pairs(loans: int, existing: int, mix: str, pairs: int, workdir: Path, seed: int,
                      code: Path | None, against: Path) -> None:
    """The same run of two checkouts in turn on the same inbox, the order
    swapped at every pair. The machine drifts by up to a second between sets
    of runs; within a pair both sides meet the same conditions, so the
    differences are what compares two versions of the code."""
    inbox = inbox_for(loans, existing, mix, workdir, seed)
    batch = default_batch_date().isoformat()
    sides = {"this": code or ROOT, "against": against}  # both started the same way: python -m, from a source folder
    diffs, cpu_diffs = [], []
    print(f"{'pair':>4}{'this s':>9}{'against s':>11}{'difference':>12}{'this CPU s':>12}{'against CPU s':>15}")
    for pair in range(pairs):
        order = ("this", "against") if pair % 2 == 0 else ("against", "this")
        runs = {side: run_loan_engine(inbox, batch, workdir, sides[side]) for side in order}
        diff, cpu_diff = runs["this"]["wall"] - runs["against"]["wall"], runs["this"]["cpu"] - runs["against"]["cpu"]
        diffs.append(diff)
        cpu_diffs.append(cpu_diff)
        print(f"{pair + 1:>4}{runs['this']['wall']:>9.2f}{runs['against']['wall']:>11.2f}{diff:>+12.2f}"
              f"{runs['this']['cpu']:>12.2f}{runs['against']['cpu']:>15.2f}", flush=True)
    faster = sum(d < 0 for d in diffs)
    print(f"this checkout minus the other, over {pairs} pairs: wall median {statistics.median(diffs):+.2f} s, "
          f"mean {statistics.fmean(diffs):+.2f} s (faster in {faster} of {pairs}); "
          f"CPU median {statistics.median(cpu_diffs):+.2f} s")


def report(loans: int, existing: int, mix: str, run: dict) -> None:
    p = run["phases"]
    steps = p["steps"]
    rejected = next((line for line in run["output"].splitlines() if line.strip().startswith("rejected:")), "").split()
    print(f"\n{loans:,} buy loans, {existing:,} existing assets, mix {mix}"
          + (f", {rejected[1]} rejected" if len(rejected) > 1 else ""))
    print(f"{'step':<34}{'wall s':>8}{'asset s':>9}{'inputs s':>9}{'output s':>9}")
    for step, row in steps.items():
        print(f"{step:<34}{row['wall']:>8.2f}{row['compute']:>9.2f}{row['load']:>9.2f}{row['store']:>9.2f}")
    in_steps = sum(r["wall"] for r in steps.values())
    compute = sum(r["compute"] for r in steps.values())
    io = sum(r["load"] + r["store"] for r in steps.values())
    first, last = min(r["start"] for r in steps.values()), max(r["end"] for r in steps.values())
    print(f"{'sum of steps':<34}{in_steps:>8.2f}{compute:>9.2f}"
          f"{sum(r['load'] for r in steps.values()):>9.2f}{sum(r['store'] for r in steps.values()):>9.2f}")
    print("Dagster overhead:")
    print(f"  process start to run start         {p['to_run_start']:>6.2f} s")
    print(f"  process start to first step        {p['to_first_step']:>6.2f} s")
    print(f"  inputs + outputs (IO manager)      {io:>6.2f} s")
    print(f"  events, checks, between steps      {(last - first) - compute - io:>6.2f} s")
    print(f"  last step to process exit          {p['after_last_step']:>6.2f} s")
    print(f"whole `loan-engine run`              {run['wall']:>6.2f} s")
    print(f"bare read of the same files          {run['read']:>6.2f} s")
    print(f"ratio                                {run['wall'] / run['read']:>6.2f}x")
    print(f"CPU seconds, run / bare read         {run['cpu']:>6.2f} / {run['read_cpu']:.2f} = {run['cpu'] / run['read_cpu']:.2f}x"
          "  (steadier than wall time on a busy machine)")
    print(f"peak RSS of the run process          {run['max_rss_mib']:>6,.0f} MiB")
    print(f"(not in the run: creating the instance's SQLite storage, once per DAGSTER_HOME: {run['instance_setup']:.2f} s,"
          " Python start-up and `import dagster` included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loans", type=int, default=100_000)
    parser.add_argument("--existing", type=int, help="default: 5x the buy loans")
    parser.add_argument("--mix", choices=("typical", "stress"), default="stress")
    parser.add_argument("--scaling", action="store_true", help=f"whole-run time at {', '.join(f'{n:,}' for n in SCALING_SIZES)} buy loans")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest run is reported")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--code", type=Path, help="run the loan engine from this source folder instead (e.g. `git archive` of main)")
    parser.add_argument("--against", type=Path, help="compare with this source folder in alternating pairs (--repeat pairs)")
    parser.add_argument("--workdir", type=Path, help="keep inboxes (reused across invocations) and outputs here")
    args = parser.parse_args()
    if args.against is not None and args.scaling:
        parser.error("--against compares one size at a time; give --loans instead of --scaling")
    # Runs start in the work folder: a relative source folder must not change meaning there.
    args.code, args.against = (p.resolve() if p is not None else None for p in (args.code, args.against))

    # The code timed is compiled first, as scripts/setup.sh compiles the
    # project: where PYTHONDONTWRITEBYTECODE is set, a source folder without
    # current bytecode (another checkout, a file edited since setup) would be
    # compiled again by every run (0.05 s here for the whole project, more
    # beside a busy core): a bias of the timing against that code.
    for code in {args.code or ROOT, args.against or ROOT}:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "loan_engine_dagster")], check=True)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="loan-engine-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pandas {pd.__version__}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    sizes = SCALING_SIZES if args.scaling else (args.loans,)
    results = []
    try:
        for loans in sizes:
            existing = args.existing if args.existing and not args.scaling else 5 * loans
            compared = f": {args.code or ROOT} against {args.against}" if args.against is not None else ""
            print(f"\n== {loans:,} buy loans, {existing:,} existing, {args.mix}{compared}", flush=True)
            if args.against is not None:  # one size (--scaling is refused): the pairs are the whole report
                alternating_pairs(loans, existing, args.mix, args.repeat, workdir, args.seed, args.code, args.against)
                return
            run = one_size(loans, existing, args.mix, args.repeat, workdir, args.seed, args.code)
            report(loans, existing, args.mix, run)
            results.append((loans, run))
        # What any batch costs, however small: imports, the instance, the run's
        # events. The part of a run that grows with the batch is the rest.
        print(f"\n== the smallest batch ({FLOOR_LOANS} buy loans, {FLOOR_EXISTING} existing), {args.mix}", flush=True)
        floor = one_size(FLOOR_LOANS, FLOOR_EXISTING, args.mix, args.repeat, workdir, args.seed, args.code)
        print(f"fixed cost of a run (smallest batch)  {floor['wall']:>6.2f} s wall, {floor['cpu']:.2f} CPU s, "
              f"start-up to first step {floor['phases']['to_first_step']:.2f} s")
        for loans, run in results:
            print(f"  {loans:>8,} buy loans: whole run {run['wall']:.2f} s = fixed {floor['wall']:.2f} s + "
                  f"{run['wall'] - floor['wall']:.2f} s that grows with the batch "
                  f"({(run['wall'] - floor['wall']) / run['read']:.2f}x the bare read)")
        if len(results) > 1:
            print("\nscaling (whole run, seconds per 1,000 buy loans):")
            for loans, run in results:
                print(f"  {loans:>8,} buy loans  {run['wall']:>7.2f} s  {1000 * run['wall'] / loans:>6.3f} s/1k  "
                      f"read {run['read']:>6.2f} s  ratio {run['wall'] / run['read']:.2f}x  CPU {run['cpu']:>6.1f} s  "
                      f"RSS {run['max_rss_mib']:,.0f} MiB")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
