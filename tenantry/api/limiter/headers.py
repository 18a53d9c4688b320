"""The HTTP rate-limit headers of a decision: `RateLimit-Policy` and `RateLimit` (IETF httpapi
ratelimit-headers draft), and the older `X-RateLimit-Limit/Remaining/Reset`, which describe
the narrowest limit. Built for every response, so built directly as bytes."""

from __future__ import annotations

from tenantry.api.limiter.decision import Decision
from tenantry.api.limiter.spec import QUOTA_POLICY, ROUTE_POLICY, TENANT_POLICY, LimitSpec

_TENANT_ITEM = b'"' + TENANT_POLICY.encode() + b'";r=%d;t=%d'
_ROUTE_ITEM = b'"' + ROUTE_POLICY.encode() + b'";r=%d;t=%d'
_QUOTA_ITEM = b'"' + QUOTA_POLICY.encode() + b'";r=%d;t=%d'


def rate_limit_headers(spec: LimitSpec, decision: Decision) -> list[tuple[bytes, bytes]]:
    """The headers, as ASGI header pairs, of `decision` on the route and tenant of `spec`."""
    items: list[bytes] = []
    # The narrowest limit (the fewest requests remaining): remaining, limit, reset seconds.
    remaining = limit = reset = -1
    if spec.tenant_limit and decision.tenant_remaining >= 0:
        remaining, limit = decision.tenant_remaining, spec.tenant_limit
        reset = -(-decision.tenant_reset_us // 1_000_000)
        items.append(_TENANT_ITEM % (remaining, reset))
    if spec.route_limit and decision.route_remaining >= 0:
        route_reset = -(-decision.route_reset_us // 1_000_000)
        items.append(_ROUTE_ITEM % (decision.route_remaining, route_reset))
        if limit < 0 or decision.route_remaining < remaining:
            remaining, limit, reset = decision.route_remaining, spec.route_limit, route_reset
    if spec.monthly_quota is not None and decision.quota_used is not None:
        left = max(0, spec.monthly_quota - decision.quota_used)
        items.append(_QUOTA_ITEM % (left, decision.month_reset_s))
        if limit < 0:
            remaining, limit, reset = left, spec.monthly_quota, decision.month_reset_s
    headers: list[tuple[bytes, bytes]] = []
    if spec.policy_header:
        headers.append((b"ratelimit-policy", spec.policy_header))
    if items:
        headers.append((b"ratelimit", b", ".join(items)))
    if limit >= 0:
        if not decision.allowed:
            remaining, reset = 0, max(reset, decision.retry_after_s)
        headers += (
            (b"x-ratelimit-limit", b"%d" % limit),
            (b"x-ratelimit-remaining", b"%d" % remaining),
            (b"x-ratelimit-reset", b"%d" % reset),
        )
    return headers
