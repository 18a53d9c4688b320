"""UTC calendar months, the monthly quota's period: one arithmetic for the API, the worker
and the usage answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from tenantry.contract.months import (
    CurrentMonth,
    month_bounds,
    month_of,
    month_start,
    next_month,
    next_month_start,
)

moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
)


@given(moments)
def test_a_moment_lies_within_the_bounds_of_its_month(moment: datetime) -> None:
    start, end = month_bounds(month_of(moment))
    assert start == month_start(moment) <= moment < end == next_month_start(moment)
    assert (start.day, start.hour, start.minute, start.second, start.microsecond) == (1, 0, 0, 0, 0)
    assert month_of(end) == next_month(month_of(moment))
    assert month_of(end - timedelta(microseconds=1)) == month_of(moment)


def test_months_are_named_in_utc_and_roll_over_the_year() -> None:
    evening_in_new_york = datetime(2026, 11, 30, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert month_of(evening_in_new_york) == "2026-12"
    assert next_month("2026-12") == "2027-01"
    assert month_bounds("2028-02") == (
        datetime(2028, 2, 1, tzinfo=UTC),
        datetime(2028, 3, 1, tzinfo=UTC),
    )


@given(moments)
def test_the_current_month_is_recomputed_exactly_when_it_ends(moment: datetime) -> None:
    month = CurrentMonth()
    month.refresh(moment.timestamp())
    assert month.name == month_of(moment)
    assert month.ends_at == next_month_start(moment).timestamp()
    month.refresh(month.ends_at - 0.001)
    assert month.name == month_of(moment)
    month.refresh(month.ends_at)
    assert month.name == next_month(month_of(moment))
