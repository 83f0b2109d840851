"""Concentration limits as an analyst reads them: shares as percentages,
balances in dollars, one line per result. Shared by the UI checks and the
summary workbook so both say the same thing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .config import SHARE_METRICS

# What a column's number means: dealer fees are stored as fractions but read
# as percentages; the lender price is already in percent points.
_COLUMN_UNITS = {"dealer_fee": ("%", 100.0), "lender_price": ("%", 1.0), "orig_balance": ("$", 1.0)}


@dataclass(frozen=True)
class Unit:
    symbol: str  # "%", "$" or "" (a plain number such as a FICO score)
    scale: float  # stored value x scale = displayed number

    def number(self, value) -> float | None:
        """The displayed number (to 4 decimals: enough to see a breach by a
        hair, short enough to read), or None for a missing value."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return round(float(value) * self.scale, 4)

    def text(self, value, decimals: int | None = None) -> str:
        number = self.number(value)
        if number is None:
            return "n/a"
        if self.symbol == "$":
            return f"${number:,.0f}" if decimals is None else f"${number:,.{decimals}f}"
        places = 1 if decimals is None else decimals
        return f"{number:,.{places}f}{self.symbol}"

    @property
    def label(self) -> str:
        return f" ({self.symbol})" if self.symbol else ""


def unit_of(metric: str, column: str | None) -> Unit:
    if metric in SHARE_METRICS:
        return Unit("%", 100.0)
    symbol, scale = _COLUMN_UNITS.get(column or "", ("", 1.0))
    return Unit(symbol, scale)


def dollars(amount) -> str:
    """$1.2M, $950K, $812: short enough for a one-line result."""
    if amount is None or (isinstance(amount, float) and math.isnan(amount)):
        return "n/a"
    value = float(amount)
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"${value / size:,.1f}{suffix}"
    return f"${value:,.0f}"


def dollars_exact(amount) -> str:
    return f"${float(amount):,.2f}"


def limit_text(op: str, limit: float, unit: Unit) -> str:
    return f"{op} {unit.text(limit)}"


def _value_text(value: float, limit: float, unit: Unit) -> str:
    """One decimal, more when one decimal would make a breach look like the limit itself."""
    for decimals in ((None, 2) if unit.symbol == "$" else (1, 2, 3, 4)):
        if unit.text(value, decimals) != unit.text(limit, decimals):
            return unit.text(value, decimals)
    return unit.text(value, 4)


def result_line(row: dict, unit: Unit) -> str:
    """"8.6% vs < 5.0%: fail, excess $18.5M", "4.1% vs < 5.0%: pass, headroom $1.2M"."""
    status = row["status"]
    if status == "no_data":
        return f"no data: no loans of this platform in the base (limit {limit_text(row['op'], row['limit'], unit)})"
    line = f"{_value_text(row['value'], row['limit'], unit)} vs {limit_text(row['op'], row['limit'], unit)}: {status}"
    excess = row.get("excess_balance")
    headroom = row.get("headroom_balance")
    if status == "fail" and excess is not None and not (isinstance(excess, float) and math.isnan(excess)):
        line += f", excess {dollars(excess)}"
    elif status == "pass" and headroom is not None and not (isinstance(headroom, float) and math.isnan(headroom)):
        line += f", headroom {dollars(headroom)}"
    return line


def check_title(platform: str, check_id: str, description: str) -> str:
    """"PRIME check_a: Standard, Term <= 144, FICO < 700"."""
    return f"{platform.upper()} {check_id}: {description}"


def metric_phrase(metric: str, column: str | None) -> str:
    names = {
        "balance_share": "share of balance", "count_share": "share of loans", "batch_balance_share": "share of the batch's balance",
        "max": "maximum", "mean": "average", "wavg": "balance-weighted average",
    }
    phrase = names.get(metric, metric)
    return f"{phrase} of {column}" if column and metric in ("max", "mean", "wavg") else phrase


CHART_METRICS = ("balance_share", "count_share")


def share_limits(checks: pd.DataFrame, platform: str) -> pd.DataFrame:
    """One platform's share limits in percent (value, before and to-purchase
    against the limit): the data of the summary workbook's chart. Limits of
    other units (FICO, dollars, lender price) would not share an axis."""
    rows = checks[(checks["platform"] == platform) & checks["metric"].isin(CHART_METRICS) & checks["limit"].notna()]
    percent = {name: pd.to_numeric(rows[name], errors="coerce").astype(float) * 100 for name in ("value", "before", "to_purchase")}
    return pd.DataFrame(
        {
            "check": rows["check_id"].to_numpy(),
            "description": rows["description"].to_numpy(),
            "limit (%)": (rows["limit"].astype(float) * 100).to_numpy(),
            "value (%)": percent["value"].to_numpy(),
            "before (%)": percent["before"].to_numpy(),
            "to_purchase (%)": percent["to_purchase"].to_numpy(),
            "status": rows["status"].to_numpy(),
        }
    )
