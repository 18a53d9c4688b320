"""Policy arithmetic: overrides, GCRA against a reference model, reserved capacity."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tenantry.contract.policy import effective_limits as merge
from tenantry.contract.policy import (
    gcra_decide,
    gcra_params,
    min_replicas_for,
    reserved_capacity,
    reserved_job_slots,
)
from tenantry.contract.resources import (
    ApiTenantSpec,
    FailureMode,
    JobPriority,
    PolicyOverrides,
    RateLimitPolicySpec,
    ScaledDeployment,
)

STANDARD = RateLimitPolicySpec(requests_per_minute=600, burst=50, monthly_quota=1000)


def test_overrides_replace_only_the_fields_they_name() -> None:
    limits = merge(STANDARD, PolicyOverrides(monthly_quota=5000, failure_mode=FailureMode.CLOSED))
    assert limits.requests_per_minute == 600
    assert limits.burst == 50
    assert limits.monthly_quota == 5000
    assert limits.failure_mode is FailureMode.CLOSED
    assert limits.job_priority is JobPriority.DEFAULT
    assert limits.max_concurrent_jobs == 4


def test_no_overrides_gives_the_tier_itself() -> None:
    assert merge(STANDARD).model_dump(exclude={"routes"}) == {
        "requests_per_minute": 600,
        "burst": 50,
        "monthly_quota": 1000,
        "max_concurrent_jobs": 4,
        "job_priority": JobPriority.DEFAULT,
        "reserved_requests_per_second": 0.0,
        "failure_mode": FailureMode.OPEN,
    }


def test_override_breaking_a_rule_of_the_merged_result_is_refused() -> None:
    with pytest.raises(ValidationError, match="reservedRequestsPerSecond cannot exceed"):
        merge(STANDARD, PolicyOverrides(reserved_requests_per_second=11))


def test_emission_interval_rounds_up_so_rounding_never_loosens_a_limit() -> None:
    assert gcra_params(60, 0).emission_interval_us == 1_000_000
    assert gcra_params(7, 0).emission_interval_us == 8_571_429  # 60e6 / 7 = 8571428.57...
    assert gcra_params(600, 50).burst_tolerance_us == 50 * 100_000
    assert gcra_params(600, 50).limit == 51


@pytest.mark.parametrize(("rpm", "burst"), [(0, 0), (-1, 0), (60, -1)])
def test_gcra_params_refuse_impossible_limits(rpm: int, burst: int) -> None:
    with pytest.raises(ValueError, match="must"):
        gcra_params(rpm, burst)


class SlidingReference:
    """An independent model of 'rate r with burst b': a virtual scheduler that admits a
    request iff the requests it has admitted so far, spread one interval apart starting no
    earlier than now, leave it at most `burst` intervals ahead of now."""

    def __init__(self, interval: int, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self.next_free: int | None = None

    def admit(self, now: int) -> bool:
        start = now if self.next_free is None else max(self.next_free, now)
        if start - now > self.burst * self.interval:
            return False
        self.next_free = start + self.interval
        return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rpm=st.integers(min_value=1, max_value=100_000),
    burst=st.integers(min_value=0, max_value=50),
    gaps=st.lists(st.integers(min_value=0, max_value=3_000_000), min_size=1, max_size=200),
)
def test_gcra_matches_the_reference_model_and_never_exceeds_the_window_bound(
    rpm: int, burst: int, gaps: list[int]
) -> None:
    params = gcra_params(rpm, burst)
    reference = SlidingReference(params.emission_interval_us, burst)
    tat: int | None = None
    now = 1_000_000_000
    admitted_at: list[int] = []
    for gap in gaps:
        now += gap
        decision = gcra_decide(params, tat, now)
        assert decision.allowed == reference.admit(now)
        if decision.allowed:
            tat = decision.tat_us
            admitted_at.append(now)
            assert decision.retry_after_us == 0
            assert 0 <= decision.remaining <= burst
        else:
            assert decision.retry_after_us > 0
            # Waiting exactly the advertised time gets the request through.
            assert gcra_decide(params, tat, now + decision.retry_after_us).allowed
    # In any window, no more than burst + 1 + window / interval requests get through.
    for i, start in enumerate(admitted_at):
        for j in range(i, len(admitted_at)):
            window = admitted_at[j] - start
            assert j - i + 1 <= params.max_admitted(window)


def test_a_burst_passes_at_once_then_the_rate_applies() -> None:
    params = gcra_params(60, 4)  # one a second, five at once
    tat, now, results = None, 0, []
    for _ in range(7):
        decision = gcra_decide(params, tat, now)
        results.append(decision.allowed)
        tat = decision.tat_us if decision.allowed else tat
    assert results == [True] * 5 + [False] * 2
    assert gcra_decide(params, tat, now).retry_after_us == 1_000_000


def _tenant(suspended: bool) -> ApiTenantSpec:
    return ApiTenantSpec.model_validate(
        {"displayName": "t", "policyRef": {"name": "standard"}, "suspended": suspended}
    )


def test_reserved_capacity_counts_active_tenants_only() -> None:
    tier = merge(RateLimitPolicySpec(requests_per_minute=600, reserved_requests_per_second=2.5))
    tenants = [(_tenant(False), tier), (_tenant(False), tier), (_tenant(True), tier)]
    assert reserved_capacity(tenants) == 5.0
    assert reserved_job_slots(tenants) == 8


@pytest.mark.parametrize(
    ("reserved", "expected"),
    [(0, 2), (500, 2), (1000, 2), (1001, 3), (2500, 5), (999_999, 10)],
)
def test_min_replicas_is_reserved_over_capacity_rounded_up_within_bounds(
    reserved: float, expected: int
) -> None:
    scaled = ScaledDeployment(
        deployment="api", min_replicas=2, max_replicas=10, capacity_per_replica=500
    )
    assert min_replicas_for(reserved, scaled) == expected
