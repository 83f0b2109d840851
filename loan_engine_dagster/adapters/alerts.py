"""When a week's batch is due, and so when its absence deserves an alert."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class AlertPolicy:
    notice_weekday: int = 3  # the seller's sale notices are dated Thursdays
    alert_at: dt.time = dt.time(15, 0)
    zone: ZoneInfo = ZoneInfo("America/New_York")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "AlertPolicy":
        """LOAN_ENGINE_NOTICE_WEEKDAY (thursday), LOAN_ENGINE_ALERT_TIME (15:00),
        LOAN_ENGINE_ALERT_TZ (America/New_York). Bad values raise naming the variable."""
        weekday = env.get("LOAN_ENGINE_NOTICE_WEEKDAY", "thursday").strip().lower()
        if weekday not in WEEKDAYS:
            raise ValueError(f"LOAN_ENGINE_NOTICE_WEEKDAY must be a weekday name, not {weekday!r}")
        try:
            at = dt.time.fromisoformat(env.get("LOAN_ENGINE_ALERT_TIME", "15:00"))
        except ValueError:
            raise ValueError("LOAN_ENGINE_ALERT_TIME must be HH:MM") from None
        try:
            zone = ZoneInfo(env.get("LOAN_ENGINE_ALERT_TZ", "America/New_York"))
        except Exception:
            raise ValueError("LOAN_ENGINE_ALERT_TZ must be an IANA time zone such as America/New_York") from None
        return cls(notice_weekday=WEEKDAYS.index(weekday), alert_at=at, zone=zone)


def due_batch(now: dt.datetime, policy: AlertPolicy) -> str:
    """The batch key expected by now: the latest notice weekday whose alert
    time has passed."""
    local = now.astimezone(policy.zone)
    day = local.date() - dt.timedelta(days=(local.weekday() - policy.notice_weekday) % 7)
    if day == local.date() and local.time() < policy.alert_at:
        day -= dt.timedelta(days=7)  # this week's is not due yet; last week's still is
    return day.isoformat()
