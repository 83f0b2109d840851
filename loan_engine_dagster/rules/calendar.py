"""Purchase date: the funding day that follows a sale notice."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import holidays

TUESDAY = 1


@lru_cache(maxsize=8)
def _us_holidays(year: int) -> holidays.HolidayBase:
    return holidays.country_holidays("US", years=[year, year + 1])


def is_us_business_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in _us_holidays(day.year)


def purchase_date(notice_date: dt.date) -> dt.date:
    """The first Tuesday strictly after the sale notice, moved to the next US
    business day when that Tuesday is a federal holiday."""
    days_ahead = (TUESDAY - notice_date.weekday() - 1) % 7 + 1
    day = notice_date + dt.timedelta(days=days_ahead)
    while not is_us_business_day(day):
        day += dt.timedelta(days=1)
    return day
