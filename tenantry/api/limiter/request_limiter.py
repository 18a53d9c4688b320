"""The `RequestLimiter`: one decision per admitted request.

Per request the admission layer calls `RequestLimiter.decide(spec)`; the answer comes from:
- the refusal cache: a tenant that was refused is refused again in process until its retry
  time, without a Redis call, so a client hammering past its limit costs Redis nothing;
- Redis: one script call (`script`) applies the rates, counts the quota and meters usage;
- the tenant's `failureMode` when Redis (on a cluster: the node serving the tenant) is
  unreachable: `open` admits, `closed` refuses with 503, `local` applies an in-process GCRA
  at the tenant's rate divided by the number of API processes (`api.processes`: replicas
  times workers). Admitted requests are then counted in `LocalUsage` and merged into Redis
  once it is back. Without any Redis (`tenantry dev`) the in-process limiter is the
  limiter, quota included.
"""

from __future__ import annotations

import math
import time

from tenantry.api.limiter.decision import Decision
from tenantry.api.limiter.in_process import InProcessLimits
from tenantry.api.limiter.local_usage import LocalUsage
from tenantry.api.limiter.script import ScriptCall, ScriptRunner, decision_from_reply
from tenantry.api.limiter.spec import QUOTA_POLICY, ROUTE_POLICY, TENANT_POLICY, LimitSpec
from tenantry.api.metrics import ApiMetrics, Cell
from tenantry.api.redis_pipeline import RedisReplyError, RedisUnavailableError
from tenantry.contract.months import CurrentMonth
from tenantry.contract.resources import FailureMode
from tenantry.contract.usage import minute_of

CLOSED_RETRY_AFTER_SECONDS = 1


class RequestLimiter:
    """Any Redis failure, an error reply included, falls back to the failure mode, so the
    limiter itself never turns a request into a 5xx."""

    def __init__(
        self,
        redis: ScriptRunner | None,
        *,
        processes: int,
        usage: LocalUsage,
        metrics: ApiMetrics,
    ) -> None:
        self._redis = redis
        self._usage = usage
        self._metrics = metrics
        self._in_process = InProcessLimits(processes)
        # (tenant, limit) → (refused until, violated policies, when the policy is full again)
        self._denied: dict[tuple[str, str], tuple[float, tuple[str, ...], float]] = {}
        self._month = CurrentMonth()
        self._decision_series: dict[tuple[str, bool], Cell] = {}
        self._calls: dict[tuple[str, str], ScriptCall] = {}  # (tenant, route) → this minute's

    def forget(self) -> None:
        """Drop cached refusals and script calls (limits may have changed with a new
        registry)."""
        self._denied.clear()
        self._calls = {}

    async def decide(self, spec: LimitSpec) -> Decision:
        wall = time.time()
        month = self._month
        if wall >= month.ends_at:
            month.refresh(wall)
        if self._denied:
            cached = self._cached_refusal(spec, wall)
            if cached is not None:
                cached.month_reset_s = math.ceil(month.ends_at - wall)
                return cached
        if self._redis is None:
            decision = self._in_process.decide(spec, int(wall * 1_000_000), month, True)
            self._record_local(spec, decision, wall)
        else:
            try:
                decision = decision_from_reply(await self._redis.run(self._call(spec, wall)))
            except (RedisUnavailableError, RedisReplyError):
                # The connection logs a node that fails, and fails its callers at once for a
                # moment after, so an outage costs no timeout per request.
                self._metrics.redis_errors.labels("limiter").inc()
                decision = self._without_redis(spec, wall)
        decision.month_reset_s = math.ceil(month.ends_at - wall)
        if QUOTA_POLICY in decision.violated:
            self._metrics.quota_rejections.inc()
            decision.retry_after_us = max(
                decision.retry_after_us, int((month.ends_at - wall) * 1_000_000)
            )
        if not decision.allowed and not decision.unavailable:
            self._remember_refusal(spec, decision, wall)
        series = (decision.source, decision.allowed)
        counted = self._decision_series.get(series)
        if counted is None:
            counted = self._decision_series[series] = self._metrics.limiter_decisions.cell(
                decision.source, "allowed" if decision.allowed else "refused"
            )
        counted[0] += 1
        return decision

    # --- Redis -------------------------------------------------------------------------

    def _call(self, spec: LimitSpec, wall: float) -> ScriptCall:
        minute = minute_of(wall)
        cell = (spec.tenant_id, spec.route)
        call = self._calls.get(cell)
        if call is None or call.minute != minute:
            call = self._calls[cell] = ScriptCall.build(spec, minute, self._month.name)
        return call

    # --- without Redis -----------------------------------------------------------------

    def _without_redis(self, spec: LimitSpec, wall: float) -> Decision:
        mode = spec.failure_mode
        if mode is FailureMode.CLOSED:
            return Decision(
                allowed=False,
                source="closed",
                retry_after_us=CLOSED_RETRY_AFTER_SECONDS * 1_000_000,
                unavailable=True,
            )
        if mode is FailureMode.LOCAL:
            decision = self._in_process.decide(spec, int(wall * 1_000_000), self._month, False)
        else:
            self._metrics.fail_open.inc()
            decision = Decision(allowed=True, source="open")
        self._record_local(spec, decision, wall)
        return decision

    def _record_local(self, spec: LimitSpec, decision: Decision, wall: float) -> None:
        if decision.allowed:
            self._usage.add(spec.tenant_id, minute_of(wall), spec.route)

    # --- refusal cache -----------------------------------------------------------------

    def _remember_refusal(self, spec: LimitSpec, decision: Decision, wall: float) -> None:
        """Cache a refusal until its retry time, with when the policy is full again (for the
        `t` of the headers the cached answers carry)."""
        if QUOTA_POLICY in decision.violated:
            ends = self._month.ends_at
            self._denied[(spec.tenant_id, QUOTA_POLICY)] = (ends, (QUOTA_POLICY,), ends)
        until = wall + decision.retry_after_us / 1_000_000
        if TENANT_POLICY in decision.violated:
            full_at = wall + decision.tenant_reset_us / 1_000_000
            self._denied[(spec.tenant_id, "")] = (until, (TENANT_POLICY,), full_at)
        if ROUTE_POLICY in decision.violated:
            full_at = wall + decision.route_reset_us / 1_000_000
            self._denied[(spec.tenant_id, spec.route)] = (until, (ROUTE_POLICY,), full_at)

    def _cached_refusal(self, spec: LimitSpec, wall: float) -> Decision | None:
        for cell in (
            (spec.tenant_id, QUOTA_POLICY),
            (spec.tenant_id, ""),
            (spec.tenant_id, spec.route),
        ):
            entry = self._denied.get(cell)
            if entry is None:
                continue
            until, violated, full_at = entry
            if wall >= until:
                del self._denied[cell]
                continue
            if violated == (QUOTA_POLICY,) and spec.monthly_quota is None:
                continue
            if violated == (ROUTE_POLICY,) and spec.route_rate is None:
                continue
            self._metrics.limiter_decisions.cell("cache", "refused")[0] += 1
            if violated == (QUOTA_POLICY,):
                self._metrics.quota_rejections.inc()
            return Decision(
                allowed=False,
                source="cache",
                violated=violated,
                retry_after_us=int((until - wall) * 1_000_000),
                tenant_remaining=0 if violated == (TENANT_POLICY,) else -1,
                route_remaining=0 if violated == (ROUTE_POLICY,) else -1,
                tenant_reset_us=int((full_at - wall) * 1_000_000),
                route_reset_us=int((full_at - wall) * 1_000_000),
            )
        return None
