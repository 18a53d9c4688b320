"""Policy arithmetic every part shares: effective limits, GCRA parameters, reserved capacity.

GCRA (the generic cell rate algorithm) keeps one number per limited key, the theoretical
arrival time (TAT). With an emission interval T (the time one request "costs") and a burst
tolerance tau = T * burst, a request arriving at `now` is admitted iff
`max(TAT, now) - now <= tau`, and then `TAT = max(TAT, now) + T`. So `burst + 1` requests
pass at once, and over any window W at most `burst + 1 + floor(W / T)` are admitted.

Times are integer microseconds so the Lua script in Redis and the Python model of it compute
exactly the same thing. T is rounded *up*, so rounding can only make a limit stricter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tenantry.contract.resources import (
    ApiTenantSpec,
    EffectiveLimits,
    PolicyFields,
    RateLimitPolicySpec,
    ScaledDeployment,
)

MICROSECONDS_PER_MINUTE = 60_000_000


def route_name(method: str, path_template: str) -> str:
    """How a route is named in policies, limiter state and usage: `METHOD /template`."""
    return f"{method} {path_template}"


def effective_limits(
    policy: RateLimitPolicySpec, overrides: PolicyFields | None = None
) -> EffectiveLimits:
    """The tier's limits with a tenant's overrides applied, field by field.

    Raises `ValueError` naming the field when the merged result breaks a cross-field rule
    (e.g. a tenant overriding `burst` on a tier that has no `requestsPerMinute`).
    """
    changes = overrides.model_dump(exclude_none=True) if overrides is not None else {}
    merged = policy.model_dump() | changes
    # Re-validate the merge as a policy so the cross-field rules hold for the result too.
    checked = RateLimitPolicySpec.model_validate(merged)
    return EffectiveLimits(
        requests_per_minute=checked.requests_per_minute,
        burst=checked.burst or 0,
        monthly_quota=checked.monthly_quota,
        max_concurrent_jobs=checked.max_concurrent_jobs,
        job_priority=checked.job_priority,
        reserved_requests_per_second=checked.reserved_requests_per_second,
        failure_mode=checked.failure_mode,
        routes=list(checked.routes),
    )


@dataclass(frozen=True, slots=True)
class GcraParams:
    """GCRA parameters of one limit, in integer microseconds."""

    emission_interval_us: int
    burst_tolerance_us: int

    @property
    def limit(self) -> int:
        """Requests admitted at once from an idle start: the burst plus one."""
        return self.burst_tolerance_us // self.emission_interval_us + 1

    def max_admitted(self, window_us: int) -> int:
        """The most requests GCRA can admit in any window of `window_us` microseconds."""
        return self.limit + window_us // self.emission_interval_us


def gcra_params(requests_per_minute: int, burst: int) -> GcraParams:
    if requests_per_minute < 1:
        raise ValueError(f"requests_per_minute must be at least 1, got {requests_per_minute}")
    if burst < 0:
        raise ValueError(f"burst must not be negative, got {burst}")
    emission_interval = math.ceil(MICROSECONDS_PER_MINUTE / requests_per_minute)
    return GcraParams(emission_interval, emission_interval * burst)


@dataclass(frozen=True, slots=True)
class GcraDecision:
    allowed: bool
    tat_us: int  # the theoretical arrival time to store
    remaining: int  # requests that could still pass right now
    retry_after_us: int  # 0 when allowed; otherwise the wait before one would pass
    reset_after_us: int  # until the limit is fully replenished


def gcra_decide(params: GcraParams, tat_us: int | None, now_us: int, cost: int = 1) -> GcraDecision:
    """The reference GCRA step; the Lua script in the API implements exactly this."""
    interval, tolerance = params.emission_interval_us, params.burst_tolerance_us
    current = now_us if tat_us is None else max(tat_us, now_us)
    new_tat = current + interval * cost
    allow_at = new_tat - tolerance - interval
    if allow_at > now_us:
        retry_after = allow_at - now_us
        remaining = 0
        return GcraDecision(False, current, remaining, retry_after, current - now_us)
    remaining = (now_us - allow_at) // interval
    return GcraDecision(True, new_tat, remaining, 0, new_tat - now_us)


def reserved_capacity(tenants: Iterable[tuple[ApiTenantSpec, EffectiveLimits]]) -> float:
    """Requests/s the platform guarantees: the sum over tenants that are not suspended."""
    return sum(
        limits.reserved_requests_per_second for spec, limits in tenants if not spec.suspended
    )


def reserved_job_slots(tenants: Iterable[tuple[ApiTenantSpec, EffectiveLimits]]) -> int:
    """Concurrent jobs the platform guarantees: each active tenant's `maxConcurrentJobs`."""
    return sum(limits.max_concurrent_jobs for spec, limits in tenants if not spec.suspended)


def min_replicas_for(reserved: float, scaled: ScaledDeployment) -> int:
    """HPA floor: reserved ÷ capacity per replica, rounded up, within the declared bounds."""
    needed = math.ceil(reserved / scaled.capacity_per_replica - 1e-9) if reserved > 0 else 0
    return max(scaled.min_replicas, min(scaled.max_replicas, needed))
