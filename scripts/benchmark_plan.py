"""Time the purchase plan alone on a batch whose limits are breached.

    .venv/bin/python scripts/benchmark_plan.py --loans 100000 --existing 500000 --breached 16

The sample inbox respects every limit, so this moves some limits to halfway
between their `before` (existing assets only) and `to_purchase` values:
breached by the batch, curable by holding loans back. It then runs the
phases up to eligibility (not timed) and times the plan, which includes
building the limit rows, the solve and the re-evaluation that proves it.
Not a test: run it by hand and copy the figures into the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from loan_engine_dagster.adapters.inbox import find_batch
from loan_engine_dagster.adapters.loading import load_batch_inputs, load_reference
from loan_engine_dagster.adapters.sample import default_batch_date, generate_inbox
from loan_engine_dagster.rules import pipeline
from loan_engine_dagster.rules.config import Eligibility, Rules, default_rules
from loan_engine_dagster.rules.eligibility import OPS
from loan_engine_dagster.rules.reports import plan_lines


def breached(rules: Rules, checks, count: int) -> Rules:
    """Move up to `count` linear limits halfway from `before` towards `to_purchase`."""
    values = checks.set_index(["platform", "check_id"])
    moved, platforms = 0, {}
    for platform in ("prime", "sfy"):
        out = []
        for check in getattr(rules.eligibility, platform):
            row = values.loc[(platform, check.id)]
            linear = check.metric in ("balance_share", "count_share", "mean", "wavg") and check.limit is not None
            if moved < count and linear and row["before"] is not None and row["to_purchase"] is not None:
                before, after = float(row["before"]), float(row["to_purchase"])
                if (check.op in ("<", "<=") and after > before) or (check.op in (">", ">=") and after < before):
                    check = check.model_copy(update={"limit": before + 0.5 * (after - before)})
                    moved += 1
            out.append(check)
        platforms[platform] = out
    return rules.model_copy(update={"eligibility": Eligibility(**platforms)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loans", type=int, default=100_000)
    parser.add_argument("--existing", type=int, default=500_000)
    parser.add_argument("--breached", type=int, default=16, help="how many limits to breach")
    parser.add_argument("--mix", choices=("typical", "stress"), default="stress")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--inbox", type=Path, help="reuse this generated inbox instead of a temporary one")
    args = parser.parse_args()

    workdir = None if args.inbox else Path(tempfile.mkdtemp(prefix="loan-engine-plan-"))
    inbox = args.inbox or workdir / "inbox"
    if not (inbox / "current_assets.csv").exists():
        generate_inbox(inbox, loans=args.loans, existing=args.existing, seed=args.seed, stress=args.mix == "stress")
    rules = default_rules()
    files = find_batch(inbox, default_batch_date().isoformat(), rules.inbox.tape_lookback_days)
    reference, inputs = load_reference(files.reference, rules), load_batch_inputs(files, rules)
    normalized = pipeline.normalize(reference, inputs, rules, pipeline.resolve_pdate(inputs.notice_date))
    loans = pipeline.run_comap(pipeline.run_underwriting(normalized.loans, reference.grids, rules), reference.comap, rules)
    existing = pipeline.portfolio(reference, normalized)
    tight = breached(rules, pipeline.run_eligibility(loans, existing, rules).checks, args.breached)
    decisions = pipeline.run_eligibility(loans, existing, tight)
    checks = decisions.checks
    failing = sum(
        1 for r in checks.itertuples()
        if r.to_purchase is not None and not pd.isna(r.to_purchase) and r.status in ("pass", "fail")
        and not OPS[r.op](r.to_purchase, r.limit)
    )

    start = time.perf_counter()
    plan = pipeline.run_purchase_plan(decisions, existing, tight)
    seconds = time.perf_counter() - start
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{len(decisions.loans):,} buy loans ({int((decisions.loans['disposition'] == 'to_purchase').sum()):,} to purchase), "
          f"{len(existing):,} existing; {failing} limits breached on the loans to buy")
    print(f"purchase plan: {seconds:.2f} s")
    for platform, summary in plan.platforms.items():
        for line in plan_lines(platform, summary):
            print(line)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
