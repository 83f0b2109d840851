"""Portfolio concentration limits (business_rules.md section 9).

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
# A share computed in binary floating point lands a hair either side of a limit
# it meets exactly (61,103.12 / 244,412.48 is 25% in decimal, 0.25000000000000006
# in float). A limit therefore holds up to this much past it, relative to the
# limit; a strict one needs the value that much inside, the margin the purchase
# plan holds strict limits to (business rules, sections 9 and 12).
LIMIT_TOLERANCE = 1e-9
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


class PopulationArrays:
    """Population columns as numpy arrays, converted once for all checks:
    numbers and flags as they are, text as codes of its distinct values.

    `subset(rows)` gives the same arrays for some rows only, sliced from the
    whole population's: selecting rows of the frame itself instead would copy
    every text column through Arrow, the larger part of evaluating the limits."""

    def __init__(self, pop: pd.DataFrame, rows: np.ndarray | None = None, whole: dict | None = None) -> None:
        self._pop = pop
        self._rows = rows
        self._whole: dict[str, tuple[np.ndarray, pd.Index | None]] = {} if whole is None else whole
        self._arrays = self._whole if rows is None else {}  # a subset keeps its slices
        self.length = len(pop) if rows is None else int(np.count_nonzero(rows))

    def subset(self, rows: np.ndarray) -> PopulationArrays:
        """The rows where `rows` (a mask over the whole population) is set, in their order."""
        return PopulationArrays(self._pop, rows, self._whole)

    def _cached(self, key: str, convert) -> tuple[np.ndarray, pd.Index | None]:
        if key not in self._whole:
            self._whole[key] = convert(self._pop)
        if key not in self._arrays:
            values, uniques = self._whole[key]
            self._arrays[key] = (values[self._rows], uniques)
        return self._arrays[key]

    def get(self, column: str) -> tuple[np.ndarray, pd.Index | None]:
        def convert(pop: pd.DataFrame) -> tuple[np.ndarray, pd.Index | None]:
            values = pop[column]
            if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
                return values.to_numpy(), None
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            return codes, pd.Index(uniques)

        return self._cached(column, convert)

    def numbers(self, column: str) -> np.ndarray:
        return self._cached(f"{column} as float", lambda pop: (pop[column].to_numpy(dtype=float), None))[0]

    def flags(self, column: str) -> np.ndarray:
        return self._cached(f"{column} as bool", lambda pop: (pop[column].to_numpy(dtype=bool), None))[0]

    def compared(self, column: str, op: str, value) -> np.ndarray:
        """`column op value` as pandas compares them (text ordered as text), on
        these rows only: another platform's missing cells must not matter."""
        values = self._pop[column] if self._rows is None else self._pop[column][self._rows]
        return OPS[op](values, value).to_numpy(dtype=bool)

    def objects(self, column: str, where: np.ndarray) -> np.ndarray:
        """The column's values on the rows of this population where `where` is set."""
        positions = np.flatnonzero(where) if self._rows is None else np.flatnonzero(self._rows)[where]
        return self._pop[column].iloc[positions].to_numpy()


def limit_slack(limit: float) -> float:
    return LIMIT_TOLERANCE * max(abs(float(limit)), 1e-12)


def holds(value, op: str, limit: float):
    """Whether `value op limit` holds for a check's limit (a number or an array)."""
    slack = limit_slack(limit)
    if op == "<=":
        return value <= limit + slack
    if op == "<":
        return value <= limit - slack
    if op == ">=":
        return value >= limit - slack
    if op == ">":
        return value >= limit + slack
    raise ValueError(f"not a limit's comparison: {op}")


def filter_mask(pop: pd.DataFrame, check: Check, columns: PopulationArrays | None = None) -> np.ndarray:
    columns = columns or PopulationArrays(pop)
    mask = np.ones(columns.length, dtype=bool)
    for column, op, value in check.where:
        if column == "loan_program":
            column, value = "program_key", (
                [str(v).strip().casefold() for v in value] if op == "in" else " ".join(str(value).split()).casefold()
            )
        values, uniques = columns.get(column)
        if uniques is None:
            hit = np.isin(values, value) if op == "in" else OPS[op](values, value)
        elif op == "in":
            # A lookup per distinct value; the trailing False is where a missing cell (code -1) lands.
            hit = np.append(uniques.isin(value), False)[values]
        elif op in ("==", "!="):
            # Text compares by its distinct values; a missing cell (code -1) matches none.
            hit = OPS[op](values, uniques.get_loc(value) if value in uniques else -2)
        else:
            hit = columns.compared(column, op, value)
        mask &= np.asarray(hit, dtype=bool)
    return mask


def _share(
    weights: np.ndarray, base: np.ndarray, match: np.ndarray, total: float | None = None
) -> tuple[float | None, float, float]:
    total = weights[base].sum() if total is None else total
    part = weights[base & match].sum()
    return (None if total == 0 else float(part / total)), float(part), float(total)


def platform_bases(pop: pd.DataFrame, platform: str, columns: PopulationArrays | None = None) -> dict[str, np.ndarray]:
    """The three population bases of one platform; repurchased and excess
    assets never count."""
    in_base = ~pop["repurchase"].to_numpy(dtype=bool) & ~pop["excess_asset"].to_numpy(dtype=bool)
    is_buy = pop["is_buy"].to_numpy(dtype=bool)
    codes, uniques = (columns or PopulationArrays(pop)).get("platform")
    base = in_base & (codes == (uniques.get_loc(platform) if platform in uniques else -2))
    return {"value": base, "before": base & ~is_buy, "to_purchase": base & (~is_buy | pop["to_purchase"].to_numpy(dtype=bool))}


def platform_checks(rules: Rules) -> tuple[tuple[str, list[Check]], ...]:
    return (("prime", rules.eligibility.prime), ("sfy", rules.eligibility.sfy))


def check_match(pop: pd.DataFrame, check: Check, columns: PopulationArrays | None = None) -> np.ndarray:
    """The rows inside the check's filter (every row when it has none)."""
    columns = columns or PopulationArrays(pop)
    return filter_mask(pop, check, columns) if check.where else np.ones(columns.length, dtype=bool)


def metric_value(check: Check, pop: pd.DataFrame, base: np.ndarray, match: np.ndarray, balance: np.ndarray,
                 columns: PopulationArrays | None = None, total: float | None = None):
    """The check's metric over one population base; None when the base is
    empty or has zero balance. `total` is the base's balance, `balance[base].sum()`,
    if already summed."""
    total = balance[base].sum() if total is None else total
    if total == 0:  # (an empty base sums to 0 too)
        return None
    if check.metric in ("balance_share", "batch_balance_share"):
        return _share(balance, base, match, total)[0]
    if check.metric == "count_share":
        return float(match[base].sum() / base.sum())
    if check.metric == "distribution":
        # Grouped by the states' codes (integers group fast), then named and
        # put in the order of the states' names as grouping by name would.
        codes, states = (columns or PopulationArrays(pop)).get("property_state")
        present = base & (codes >= 0)
        by_code = pd.Series(balance[present]).groupby(codes[present]).sum()
        by_state = pd.Series(by_code.to_numpy(), index=states[by_code.index.to_numpy()]).sort_index()
        shares = (by_state / total).sort_values(ascending=False, kind="stable")
        return {str(k): float(v) for k, v in shares.items()}
    column = (columns or PopulationArrays(pop)).numbers(check.column)[base]
    if check.metric == "max":
        return float(column.max())
    if check.metric == "mean":
        return float(column.mean())
    if check.metric == "wavg":
        return float((column * balance[base]).sum() / total)
    raise ValueError(f"unknown metric {check.metric}")


def evaluate_checks(
    pop: pd.DataFrame, rules: Rules, *, value_only: bool = False, keep: np.ndarray | None = None,
    whole: PopulationArrays | None = None,
) -> pd.DataFrame:
    """One row per (platform, check) with the three population values, the
    status and, for a breached balance share, the excess balance and the
    batch's loans that make up the subset, largest first. `value_only` skips
    `before` and `to_purchase` (left null) when only the status is wanted;
    `keep` evaluates the population of those rows only, as `pop[keep]` would
    without copying it. `whole` holds `pop`'s arrays, if already made."""
    rows = []
    whole = whole or PopulationArrays(pop)
    for platform, checks in platform_checks(rules):
        # Every base of a platform lies inside its `value` base: each check
        # then works on that platform's rows only, in the same order, so the
        # sums are those of the whole population's masks.
        bases = platform_bases(pop, platform, whole)
        inside = bases["value"] if keep is None else bases["value"] & keep
        bases = {name: b[inside] for name, b in bases.items()}
        base = bases["value"]
        columns = whole.subset(inside)
        balance = columns.numbers("orig_balance")
        is_buy = columns.flags("is_buy")
        # Each base's balance, summed once for the platform's checks (the same sum, so the same figures)
        totals = {name: balance[b].sum() for name, b in bases.items()}
        for check in checks:
            match = check_match(pop, check, columns)
            if check.metric == "batch_balance_share":
                values = {"value": metric_value(check, pop, base & is_buy, match, balance, columns), "before": None,
                          "to_purchase": None}
            else:
                values = {name: None if value_only and name != "value"
                          else metric_value(check, pop, b, match, balance, columns, totals[name])
                          for name, b in bases.items()}
            value = values["value"]
            if value is None:
                status = "no_data"
            elif check.limit is None:
                status = "info"
            else:
                status = "pass" if holds(value, check.op, check.limit) else "fail"
            excess, contributors = None, []
            if status == "fail" and check.metric in ("balance_share", "count_share"):
                subset = bases["value"] & match
                if check.metric == "balance_share" and 0 <= check.limit < 1:
                    _, s, b = _share(balance, bases["value"], match, totals["value"])
                    excess = (s - check.limit * b) / (1 - check.limit)
                mine = subset & is_buy
                order = np.argsort(-balance[mine], kind="stable")
                contributors = [
                    {"seller_loan_number": n, "orig_balance": float(v)}
                    for n, v in zip(
                        columns.objects("seller_loan_number", mine)[order], balance[mine][order], strict=True
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
                    "headroom_balance": None if value_only else headroom_balance(
                        check, bases["to_purchase"], match, balance, totals["to_purchase"]),
                }
            )
    return pd.DataFrame(rows)


def headroom_balance(check: Check, base: np.ndarray, match: np.ndarray, balance: np.ndarray,
                     total: float | None = None) -> float | None:
    """For a balance share that passes on the loans to buy plus existing: how
    much more balance inside the filter could still be bought, `(L*B - S) /
    (1 - L)`. For a strict `<` it is the bound itself, not reachable exactly."""
    if check.metric != "balance_share" or check.limit is None or check.op not in ("<", "<=") or not 0 <= check.limit < 1:
        return None
    share, s, b = _share(balance, base, match, total)
    if share is None or not holds(share, check.op, check.limit):
        return None
    return float((check.limit * b - s) / (1 - check.limit))


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
