"""What the limiter needs for one tenant on one route, compiled once (`compile_spec`) and
reused until the registry changes."""

from __future__ import annotations

from dataclasses import dataclass

from tenantry.contract.policy import GcraParams, gcra_params, route_name
from tenantry.contract.registry import TenantEntry
from tenantry.contract.resources import EffectiveLimits, FailureMode
from tenantry.contract.usage import limiter_key, usage_index_key

# The names of the limits, as the `RateLimit` headers and the refusals' `violated-policies`
# give them.
TENANT_POLICY = "tenant"
ROUTE_POLICY = "route"
QUOTA_POLICY = "monthly"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Everything the limiter needs for one tenant on one route; built once, reused."""

    tenant_id: str
    route: str  # the route's name: the usage field, and the limiter field of an override
    tenant_rate: GcraParams | None
    route_rate: GcraParams | None
    monthly_quota: int | None
    failure_mode: FailureMode
    tenant_limit: int  # requests admitted at once from idle, by the tenant's rate (0: none)
    route_limit: int  # the same by the route override's rate (0: none)
    limiter_key: str
    usage_index_key: str
    policy_header: bytes  # the `RateLimit-Policy` value: the same on every response


def compile_spec(
    tenant: TenantEntry, limits: EffectiveLimits, method: str, path_template: str
) -> LimitSpec:
    """The spec of `tenant` (with its effective `limits`) on the route `method path_template`,
    with the policy's override for that route if it has one."""
    override = next(
        (r for r in limits.routes if r.method.value == method and r.path == path_template), None
    )
    tenant_rate = (
        gcra_params(limits.requests_per_minute, limits.burst)
        if limits.requests_per_minute is not None
        else None
    )
    route_rate = gcra_params(override.requests_per_minute, override.burst) if override else None
    policies = []
    if tenant_rate is not None:
        policies.append(f'"{TENANT_POLICY}";q={limits.requests_per_minute};w=60')
    if override is not None:
        policies.append(f'"{ROUTE_POLICY}";q={override.requests_per_minute};w=60')
    if limits.monthly_quota is not None:
        policies.append(f'"{QUOTA_POLICY}";q={limits.monthly_quota};w=2592000')
    return LimitSpec(
        tenant_id=tenant.tenant_id,
        route=route_name(method, path_template),
        tenant_rate=tenant_rate,
        route_rate=route_rate,
        monthly_quota=limits.monthly_quota,
        failure_mode=limits.failure_mode,
        tenant_limit=tenant_rate.limit if tenant_rate is not None else 0,
        route_limit=route_rate.limit if route_rate is not None else 0,
        limiter_key=limiter_key(tenant.tenant_id),
        usage_index_key=usage_index_key(tenant.tenant_id),
        policy_header=", ".join(policies).encode(),
    )
