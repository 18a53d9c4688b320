"""UTC calendar months, the period of a monthly quota: the one place their arithmetic lives.

A month is named `YYYY-MM` (the quota counter's key, the usage answer) and runs from its
first midnight UTC up to, not including, the next month's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def month_of(moment: datetime) -> str:
    """The `YYYY-MM` name of the UTC month `moment` falls in."""
    return moment.astimezone(UTC).strftime("%Y-%m")


def month_start(moment: datetime) -> datetime:
    """The first instant of the UTC month `moment` falls in."""
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    """The first instant of the UTC month after the one `moment` falls in."""
    start = month_start(moment)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The start of the month named `month` and the start of the next one."""
    start = datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
    return start, next_month_start(start)


def next_month(month: str) -> str:
    """The name of the month after the month named `month`."""
    return month_of(month_bounds(month)[1])


@dataclass(slots=True)
class CurrentMonth:
    """The current UTC month's name and end, recomputed only when it ends (the limiter asks
    on every request)."""

    name: str = ""
    ends_at: float = 0.0  # Unix seconds

    def refresh(self, now: float) -> None:
        if now < self.ends_at:
            return
        moment = datetime.fromtimestamp(now, UTC)
        self.name = month_of(moment)
        self.ends_at = next_month_start(moment).timestamp()
