"""Portfolio concentration limits (spec section 9).

Each check runs on three populations of one platform: `value` (all valid buy
loans plus existing assets; it decides the status), `before` (existing assets
only) and `to_purchase` (loans to buy plus existing assets). The base of a
population leaves out repurchased and excess assets.
"""

from __future__ import annotations

import operator

import numpy as np
import pandas as pd

from .config import Check, Rules
from .parsing import text_key

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
POPULATION_COLUMNS = [
    "seller_loan_number", "platform", "loan_program", "type", "term", "fico", "apr", "lender_price",
    "orig_balance", "promo_term", "dealer_fee", "new_programs", "property_state", "repurchase", "excess_asset",
]


def build_population(buy: pd.DataFrame, existing: pd.DataFrame) -> pd.DataFrame:
    """Valid buy loans and existing assets in one frame, with `is_buy` and
    `to_purchase` marking where each row belongs."""
    valid = buy[~buy["invalid"]]
    pop = pd.concat(
        [
            valid[POPULATION_COLUMNS].assign(is_buy=True, to_purchase=(valid["disposition"] == "to_purchase").to_numpy()),
            existing[POPULATION_COLUMNS].assign(is_buy=False, to_purchase=False),
        ],
        ignore_index=True,
    )
    pop["program_key"] = text_key(pop["loan_program"])
    pop["new_programs"] = pop["new_programs"].astype(bool)
    return pop


def filter_mask(pop: pd.DataFrame, check: Check) -> np.ndarray:
    mask = np.ones(len(pop), dtype=bool)
    for column, op, value in check.where:
        if column == "loan_program":
            column, value = "program_key", (
                [str(v).strip().casefold() for v in value] if op == "in" else " ".join(str(value).split()).casefold()
            )
        values = pop[column]
        hit = values.isin(value) if op == "in" else OPS[op](values, value)
        mask &= hit.to_numpy(dtype=bool)
    return mask


def _share(weights: np.ndarray, base: np.ndarray, match: np.ndarray) -> tuple[float | None, float, float]:
    total = weights[base].sum()
    part = weights[base & match].sum()
    return (None if total == 0 else float(part / total)), float(part), float(total)


def metric_value(check: Check, pop: pd.DataFrame, base: np.ndarray, match: np.ndarray, balance: np.ndarray):
    """The check's metric over one population base; None when the base is
    empty or has zero balance."""
    if not base.any() or balance[base].sum() == 0:
        return None
    if check.metric in ("balance_share", "batch_balance_share"):
        return _share(balance, base, match)[0]
    if check.metric == "count_share":
        return float(match[base].sum() / base.sum())
    if check.metric == "distribution":
        by_state = pd.Series(balance[base]).groupby(pop["property_state"].to_numpy()[base]).sum()
        shares = (by_state / balance[base].sum()).sort_values(ascending=False, kind="stable")
        return {str(k): float(v) for k, v in shares.items()}
    column = pop[check.column].to_numpy(dtype=float)[base]
    if check.metric == "max":
        return float(column.max())
    if check.metric == "mean":
        return float(column.mean())
    if check.metric == "wavg":
        return float((column * balance[base]).sum() / balance[base].sum())
    raise ValueError(f"unknown metric {check.metric}")


def evaluate_checks(pop: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """One row per (platform, check) with the three population values, the
    status and, for a breached balance share, the excess balance and the
    batch's loans that make up the subset, largest first."""
    balance = pop["orig_balance"].to_numpy(dtype=float)
    in_base = ~pop["repurchase"].to_numpy(dtype=bool) & ~pop["excess_asset"].to_numpy(dtype=bool)
    is_buy = pop["is_buy"].to_numpy(dtype=bool)
    to_purchase = pop["to_purchase"].to_numpy(dtype=bool)
    rows = []
    for platform, checks in (("prime", rules.eligibility.prime), ("sfy", rules.eligibility.sfy)):
        base = in_base & (pop["platform"] == platform).to_numpy()
        bases = {"value": base, "before": base & ~is_buy, "to_purchase": base & (~is_buy | to_purchase)}
        for check in checks:
            match = filter_mask(pop, check) if check.where else np.ones(len(pop), dtype=bool)
            if check.metric == "batch_balance_share":
                values = {"value": metric_value(check, pop, base & is_buy, match, balance), "before": None, "to_purchase": None}
            else:
                values = {name: metric_value(check, pop, b, match, balance) for name, b in bases.items()}
            value = values["value"]
            if value is None:
                status = "no_data"
            elif check.limit is None:
                status = "info"
            else:
                status = "pass" if OPS[check.op](value, check.limit) else "fail"
            excess, contributors = None, []
            if status == "fail" and check.metric in ("balance_share", "count_share"):
                subset = bases["value"] & match
                if check.metric == "balance_share" and 0 <= check.limit < 1:
                    _, s, b = _share(balance, bases["value"], match)
                    excess = (s - check.limit * b) / (1 - check.limit)
                mine = subset & is_buy
                order = np.argsort(-balance[mine], kind="stable")
                contributors = [
                    {"seller_loan_number": n, "orig_balance": float(v)}
                    for n, v in zip(
                        pop["seller_loan_number"].to_numpy()[mine][order], balance[mine][order], strict=True
                    )
                ]
            rows.append(
                {
                    "platform": platform,
                    "check_id": check.id,
                    "description": check.description,
                    "metric": check.metric,
                    "column": check.column,
                    "op": check.op,
                    "limit": check.limit,
                    "value": value,
                    "before": values["before"],
                    "to_purchase": values["to_purchase"],
                    "status": status,
                    "excess_balance": excess,
                    "contributors": contributors,
                }
            )
    return pd.DataFrame(rows)


def summarize_checks(checks: pd.DataFrame) -> dict:
    by_status = checks.groupby(["platform", "status"]).size()
    return {
        "checks": int(len(checks)),
        "by_platform": {
            p: {s: int(n) for s, n in by_status[p].items()} for p in by_status.index.get_level_values(0).unique()
        },
        "failed": [
            {"platform": r.platform, "check_id": r.check_id, "excess_balance": r.excess_balance}
            for r in checks[checks["status"] == "fail"].itertuples()
        ],
    }
