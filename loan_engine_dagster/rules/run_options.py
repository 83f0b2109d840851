"""Options a person types when launching a run (purchase date, IRR target),
checked before they can reach the rules: a typo is the launcher's data
problem, never a code bug."""

from __future__ import annotations

import datetime as dt
import math
import re

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
IRR_TARGET_RANGE = (0.0, 100.0)  # a percentage, exclusive at both ends: 8.05 means 8.05 %


class RunOptionError(Exception):
    """A run option that cannot be right. Deliberately not a ValueError:
    pydantic would fold it into a generic validation error and lose its kind."""

    kind = "data"

    def __init__(self, option: str, problem: str, *, well_written: bool = False) -> None:
        self.option = option
        self.problem = problem
        self.well_written = well_written  # written right, wrong all the same (a date out of range)
        super().__init__(f"run option {option}: {problem}")


def parse_pdate(value: str | dt.date | None) -> dt.date | None:
    """The purchase-date override, which must be a real date written YYYY-MM-DD,
    within the dates the engine's tables hold."""
    from .parsing import DATE_RANGE, FIRST_DATE, LAST_DATE  # parsing reads the rules, which read this module

    if value is None:
        return None
    if isinstance(value, dt.date):
        date = value
    else:
        text = str(value).strip()
        try:
            if not _ISO_DATE.fullmatch(text):
                raise ValueError
            date = dt.date.fromisoformat(text)
        except ValueError:
            raise RunOptionError("pdate", f"{value!r} is not a real date in YYYY-MM-DD form") from None
    if not FIRST_DATE.date() <= date <= LAST_DATE.date():
        # `9999-12-31` would pass here and fail the batch when the reports are written.
        raise RunOptionError("pdate", f"{value!r} is out of range ({DATE_RANGE})", well_written=True)
    return date


def check_irr_target(value: float | None) -> float | None:
    """The IRR Support Target, a percentage (8.05, not 0.0805 or 805)."""
    if value is None:
        return None
    low, high = IRR_TARGET_RANGE
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not low < value < high:
        raise RunOptionError("irr_target", f"{value!r} is not a percentage between {low:g} and {high:g} (e.g. 8.05)")
    if value < 1:  # 8.05 % typed as the fraction 0.0805: a target a hundred times too low
        raise RunOptionError("irr_target", f"{value!r} looks like a fraction: give the percentage (8.05 for 8.05 %)")
    return float(value)
