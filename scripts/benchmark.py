"""Time one batch at a given size, phase by phase.

    .venv/bin/python scripts/benchmark.py --loans 100000 --existing 500000 --mix typical
    .venv/bin/python scripts/benchmark.py --loans 100000 --existing 500000 --mix stress

Generates a sample inbox (not timed as part of the batch), then runs every
phase as the Dagster assets do, without the orchestrator, and prints seconds,
rows/s per phase and the process's peak memory. Not a test: run it by hand
and copy the figures into the README with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from loan_engine_dagster.adapters.batch import PhaseTimer, process_batch
from loan_engine_dagster.adapters.sample import default_batch_date, generate_inbox
from loan_engine_dagster.rules.config import default_rules

RULE_PHASES = ("normalized_loans", "underwriting", "comap", "eligibility", "purchase_plan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loans", type=int, default=100_000)
    parser.add_argument("--existing", type=int, default=500_000)
    parser.add_argument("--mix", choices=("typical", "stress"), default="typical")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", help="default: a SQLite file in the work folder")
    parser.add_argument("--workdir", type=Path, help="keep inbox and outputs here (default: a temporary folder)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loan-engine-bench-"))
    inbox, out = workdir / "inbox", workdir / "outputs"
    shutil.rmtree(out, ignore_errors=True)
    rules = default_rules()
    batch = default_batch_date().isoformat()

    start = time.perf_counter()
    generate_inbox(inbox, loans=args.loans, existing=args.existing, seed=args.seed, stress=args.mix == "stress")
    generated = time.perf_counter() - start

    timer = PhaseTimer()
    start = time.perf_counter()
    result = process_batch(inbox, batch, output_root=out, rules=rules, timer=timer,
                           database_url=args.database_url or f"sqlite:///{workdir / 'results.db'}")
    total = time.perf_counter() - start
    summary = result["summary"]
    rejected = summary["by_disposition"].get("rejected", {}).get("loans", 0)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"batch {batch}: {args.loans:,} buy loans, {args.existing:,} existing assets, mix {args.mix}, "
          f"{rejected:,} rejected ({rejected / max(args.loans, 1):.0%})")
    print(f"sample inbox generated in {generated:.1f} s (not part of the batch)")
    print(f"{'phase':<18}{'seconds':>9}{'rows/s':>14}")
    rows = args.loans + args.existing
    for phase, seconds in timer.seconds.items():
        print(f"{phase:<18}{seconds:>9.2f}{rows / seconds if seconds else 0:>14,.0f}")
    rules_seconds = sum(timer.seconds[p] for p in RULE_PHASES)
    print(f"{'rules alone':<18}{rules_seconds:>9.2f}{rows / rules_seconds:>14,.0f}")
    print(f"{'whole batch':<18}{total:>9.2f}{rows / total:>14,.0f}")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"outputs: {result['output_dir']}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
