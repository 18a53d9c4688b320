"""The request limiter: rate limits, the monthly quota and usage metering in one Redis call.

Per request the API calls `RequestLimiter.decide(spec)`, where `spec` (a `LimitSpec`,
compiled once per tenant and route and reused until the registry changes) carries everything
the Lua script `limiter.lua` needs. The script runs by SHA (`EVALSHA`), is loaded on first
use and again whenever Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).

A tenant that was refused is refused again from an in-process cache until its retry time,
without a Redis call, so a client hammering past its limit costs Redis nothing.

When Redis is unreachable the tenant's `failureMode` decides: `open` admits, `closed` refuses
with 503, `local` applies an in-process GCRA at the tenant's rate divided by the number of API
replicas. Admitted requests are then counted in `LocalUsage` and merged into Redis once it
is back. Without any Redis (`tenantry dev`) the in-process limiter is the limiter, quota
included.
"""

from __future__ import annotations

import hashlib
import math
import time
from calendar import monthrange
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
import structlog

from tenantry.api.metrics import ApiMetrics
from tenantry.api.redis_pipeline import (
    PipelinedRedis,
    RedisReplyError,
    RedisUnavailableError,
    pack,
)
from tenantry.contract.policy import GcraParams, gcra_decide, gcra_params
from tenantry.contract.registry import TenantEntry
from tenantry.contract.resources import EffectiveLimits, FailureMode
from tenantry.contract.usage import (
    limiter_key,
    minute_of,
    month_of,
    quota_key,
    usage_bucket_key,
    usage_index_key,
)

SCRIPT = files("tenantry.api").joinpath("limiter.lua").read_bytes()
SCRIPT_SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest()

TENANT_POLICY = "tenant"
ROUTE_POLICY = "route"
QUOTA_POLICY = "monthly"
QUOTA_KEEP_SECONDS = 35 * 24 * 3600  # beyond the month's end, so last month stays readable
REDIS_RETRY_SECONDS = 0.5  # after a failure, requests skip Redis this long (no timeout each)
CLOSED_RETRY_AFTER_SECONDS = 1

log = structlog.get_logger("tenantry.api.limiter")


def route_name(method: str, path_template: str) -> str:
    """How a route is named in policies, limiter state and usage: `METHOD /template`."""
    return f"{method} {path_template}"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Everything the limiter needs for one tenant on one route; built once, reused."""

    tenant_id: str
    route: str
    tenant_rate: GcraParams | None
    route_rate: GcraParams | None
    monthly_quota: int | None
    failure_mode: FailureMode
    requests_per_minute: int | None
    route_requests_per_minute: int | None
    limiter_key: str
    usage_index_key: str
    policy_header: bytes


def compile_spec(tenant: TenantEntry, limits: EffectiveLimits, method: str, path: str) -> LimitSpec:
    route = route_name(method, path)
    override = next((r for r in limits.routes if r.method.value == method and r.path == path), None)
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
        route=route,
        tenant_rate=tenant_rate,
        route_rate=route_rate,
        monthly_quota=limits.monthly_quota,
        failure_mode=limits.failure_mode,
        requests_per_minute=limits.requests_per_minute,
        route_requests_per_minute=override.requests_per_minute if override else None,
        limiter_key=limiter_key(tenant.tenant_id),
        usage_index_key=usage_index_key(tenant.tenant_id),
        policy_header=", ".join(policies).encode(),
    )


@dataclass(slots=True)
class Decision:
    """One limiter answer, and what the response headers say about it."""

    allowed: bool
    source: str  # redis | cache | local | open | closed
    violated: tuple[str, ...] = ()
    retry_after_us: int = 0
    tenant_remaining: int = -1
    tenant_reset_us: int = 0
    route_remaining: int = -1
    route_reset_us: int = 0
    quota_used: int | None = None
    month_reset_s: int = 0
    unavailable: bool = False  # refused because Redis is down and the tenant fails closed

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.retry_after_us / 1_000_000))

    def headers(self, spec: LimitSpec) -> list[tuple[bytes, bytes]]:
        """`RateLimit-Policy`, `RateLimit` (IETF httpapi draft) and `X-RateLimit-*`."""
        items: list[str] = []
        narrowest: tuple[int, int, int] | None = None  # (remaining, limit, reset seconds)
        if spec.tenant_rate is not None and self.tenant_remaining >= 0:
            reset = math.ceil(self.tenant_reset_us / 1_000_000)
            items.append(f'"{TENANT_POLICY}";r={self.tenant_remaining};t={reset}')
            narrowest = (self.tenant_remaining, spec.tenant_rate.limit, reset)
        if spec.route_rate is not None and self.route_remaining >= 0:
            reset = math.ceil(self.route_reset_us / 1_000_000)
            items.append(f'"{ROUTE_POLICY}";r={self.route_remaining};t={reset}')
            if narrowest is None or self.route_remaining < narrowest[0]:
                narrowest = (self.route_remaining, spec.route_rate.limit, reset)
        if spec.monthly_quota is not None and self.quota_used is not None:
            left = max(0, spec.monthly_quota - self.quota_used)
            items.append(f'"{QUOTA_POLICY}";r={left};t={self.month_reset_s}')
            if narrowest is None:
                narrowest = (left, spec.monthly_quota, self.month_reset_s)
        if not self.allowed and narrowest is not None:
            narrowest = (0, narrowest[1], max(narrowest[2], self.retry_after_s))
        headers: list[tuple[bytes, bytes]] = []
        if spec.policy_header:
            headers.append((b"ratelimit-policy", spec.policy_header))
        if items:
            headers.append((b"ratelimit", ", ".join(items).encode()))
        if narrowest is not None:
            headers += [
                (b"x-ratelimit-limit", str(narrowest[1]).encode()),
                (b"x-ratelimit-remaining", str(narrowest[0]).encode()),
                (b"x-ratelimit-reset", str(narrowest[2]).encode()),
            ]
        return headers


_VIOLATIONS = ((1, TENANT_POLICY), (2, ROUTE_POLICY), (4, QUOTA_POLICY))


@dataclass
class _Month:
    """The current UTC month, recomputed only when it ends."""

    name: str = ""
    ends_at: float = 0.0

    def refresh(self, now: float) -> None:
        if now < self.ends_at:
            return
        moment = datetime.fromtimestamp(now, UTC)
        self.name = month_of(moment)
        days = monthrange(moment.year, moment.month)[1]
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        self.ends_at = start.timestamp() + days * 86400


class LocalUsage:
    """Admitted requests counted in process while Redis is away (or absent, in dev).

    Bounded by `max_entries` (tenant, minute, route) cells; a request that finds no room is
    counted in `tenantry_api_usage_dropped` and logged, never lost silently.
    """

    def __init__(self, max_entries: int, metrics: ApiMetrics) -> None:
        self._max_entries = max_entries
        self._metrics = metrics
        self._counts: dict[tuple[str, int, str], int] = {}
        self.held = 0

    def add(self, tenant_id: str, minute: int, route: str, count: int = 1) -> bool:
        cell = (tenant_id, minute, route)
        if cell not in self._counts and len(self._counts) >= self._max_entries:
            self._metrics.usage_dropped.inc(count)
            log.warning("usage_dropped", tenant=tenant_id, minute=minute, requests=count)
            return False
        self._counts[cell] = self._counts.get(cell, 0) + count
        self.held += count
        self._metrics.usage_held.set(self.held)
        return True

    def take(self) -> dict[tuple[str, int, str], int]:
        """Everything held, removed from the store (give back what could not be merged)."""
        taken, self._counts = self._counts, {}
        self.held = 0
        self._metrics.usage_held.set(0)
        return taken

    def give_back(self, cells: dict[tuple[str, int, str], int]) -> None:
        for (tenant_id, minute, route), count in cells.items():
            self.add(tenant_id, minute, route, count)

    def by_minute(self, tenant_id: str) -> dict[int, int]:
        totals: dict[int, int] = {}
        for (tenant, minute, _route), count in self._counts.items():
            if tenant == tenant_id:
                totals[minute] = totals.get(minute, 0) + count
        return totals


async def merge_local_usage(client: aioredis.Redis, usage: LocalUsage, metrics: ApiMetrics) -> int:
    """Add what was counted in process to the Redis buckets, one transaction per tenant
    (each tenant's keys share a slot). What fails to merge goes back to `usage`."""
    cells = usage.take()
    by_tenant: dict[str, dict[tuple[str, int, str], int]] = {}
    for cell, count in cells.items():
        by_tenant.setdefault(cell[0], {})[cell] = count
    merged = 0
    for tenant_id, tenant_cells in by_tenant.items():
        try:
            async with client.pipeline(transaction=True) as pipe:
                quota: dict[str, int] = {}
                for (_, minute, route), count in tenant_cells.items():
                    bucket = usage_bucket_key(tenant_id, minute)
                    pipe.hincrby(bucket, "", count)
                    pipe.hincrby(bucket, route, count)
                    pipe.zadd(usage_index_key(tenant_id), {str(minute): minute})
                    month = month_of(datetime.fromtimestamp(minute, UTC))
                    quota[month] = quota.get(month, 0) + count
                for month, count in quota.items():
                    pipe.incrby(quota_key(tenant_id, month), count)
                    pipe.expire(quota_key(tenant_id, month), QUOTA_KEEP_SECONDS, nx=True)
                await pipe.execute()
        except (aioredis.RedisError, OSError) as error:
            metrics.redis_errors.labels("usage_merge").inc()
            log.warning("usage_merge_failed", tenant=tenant_id, error=str(error))
            usage.give_back(tenant_cells)
            continue
        count = sum(tenant_cells.values())
        merged += count
        metrics.usage_merged.inc(count)
    if merged:
        log.info("usage_merged", requests=merged)
    return merged


@dataclass
class _InProcessLimits:
    """GCRA and quota in process: the whole limiter in dev, the `local` failure mode else."""

    replicas: int
    tats: dict[tuple[str, str], int] = field(default_factory=dict)
    quota_used: dict[tuple[str, str], int] = field(default_factory=dict)
    _scaled: dict[GcraParams, GcraParams] = field(default_factory=dict)

    def scale(self, params: GcraParams) -> GcraParams:
        """Each of N replicas gets 1/N of the rate and of the burst."""
        if self.replicas == 1:
            return params
        scaled = self._scaled.get(params)
        if scaled is None:
            interval = params.emission_interval_us * self.replicas
            burst = params.burst_tolerance_us // params.emission_interval_us // self.replicas
            scaled = self._scaled[params] = GcraParams(interval, interval * burst)
        return scaled

    def decide(self, spec: LimitSpec, now_us: int, month: _Month, with_quota: bool) -> Decision:
        violated: list[str] = []
        retry = 0
        decision = Decision(allowed=True, source="local")
        updates: list[tuple[tuple[str, str], int]] = []
        for policy, params, field_name in (
            (TENANT_POLICY, spec.tenant_rate, ""),
            (ROUTE_POLICY, spec.route_rate, spec.route),
        ):
            if params is None:
                continue
            cell = (spec.tenant_id, field_name)
            step = gcra_decide(self.scale(params), self.tats.get(cell), now_us)
            if policy == TENANT_POLICY:
                decision.tenant_remaining, decision.tenant_reset_us = (
                    step.remaining,
                    (step.reset_after_us),
                )
            else:
                decision.route_remaining, decision.route_reset_us = (
                    step.remaining,
                    (step.reset_after_us),
                )
            if step.allowed:
                updates.append((cell, step.tat_us))
            else:
                violated.append(policy)
                retry = max(retry, step.retry_after_us)
        quota_cell = (spec.tenant_id, month.name)
        if with_quota:
            used = self.quota_used.get(quota_cell, 0)
            decision.quota_used = used
            if spec.monthly_quota is not None and used >= spec.monthly_quota:
                violated.append(QUOTA_POLICY)
        if violated:
            decision.allowed = False
            decision.violated = tuple(violated)
            decision.retry_after_us = retry
            return decision
        for cell, tat in updates:
            self.tats[cell] = tat
        if with_quota:
            decision.quota_used = self.quota_used[quota_cell] = (
                self.quota_used.get(quota_cell, 0) + 1
            )
        return decision


class RequestLimiter:
    """One decision per request: from the refusal cache, from Redis (one script call), or,
    without Redis, by the tenant's failure mode. Any Redis failure, an error reply included,
    falls back the same way, so the limiter itself never turns a request into a 5xx."""

    def __init__(
        self,
        redis: PipelinedRedis | None,
        *,
        replicas: int,
        usage: LocalUsage,
        metrics: ApiMetrics,
    ) -> None:
        self._redis = redis
        self._usage = usage
        self._metrics = metrics
        self._in_process = _InProcessLimits(replicas)
        # (tenant, limit) → (refused until, violated policies, when the policy is full again)
        self._denied: dict[tuple[str, str], tuple[float, tuple[str, ...], float]] = {}
        self._redis_down_until = 0.0
        self._month = _Month()
        self._decision_series: dict[tuple[str, bool], Any] = {}
        # (tenant, route) → (minute, the EVALSHA command encoded for that minute): the
        # arguments change only with the minute (and the month), so they are encoded once.
        self._packed: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.redis_healthy = redis is not None

    def forget(self) -> None:
        """Drop cached refusals and encoded calls (limits may have changed with a new
        registry)."""
        self._denied.clear()
        self._packed = {}

    async def decide(self, spec: LimitSpec) -> Decision:
        wall = time.time()
        month = self._month
        month.refresh(wall)
        cached = self._cached_refusal(spec, wall)
        if cached is not None:
            cached.month_reset_s = math.ceil(month.ends_at - wall)
            return cached
        if self._redis is None:
            decision = self._in_process.decide(spec, int(wall * 1_000_000), month, True)
            self._record_local(spec, decision, wall)
        elif wall < self._redis_down_until:
            decision = self._without_redis(spec, wall)
        else:
            try:
                decision = await self._call_script(spec, wall)
                if not self.redis_healthy:
                    log.info("redis_available")
                self.redis_healthy = True
            except (RedisUnavailableError, RedisReplyError) as error:
                self._metrics.redis_errors.labels("limiter").inc()
                if self.redis_healthy:
                    log.warning("redis_unavailable", error=str(error))
                self.redis_healthy = False
                self._redis_down_until = wall + REDIS_RETRY_SECONDS
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
        counter = self._decision_series.get(series)
        if counter is None:
            counter = self._decision_series[series] = self._metrics.limiter_decisions.labels(
                decision.source, "allowed" if decision.allowed else "refused"
            )
        counter.inc()
        return decision

    # --- Redis -------------------------------------------------------------------------

    async def _call_script(self, spec: LimitSpec, wall: float) -> Decision:
        assert self._redis is not None
        minute = minute_of(wall)
        cell = (spec.tenant_id, spec.route)
        cached = self._packed.get(cell)
        if cached is not None and cached[0] == minute:
            packed = cached[1]
        else:
            args = script_arguments(spec, minute, self._month.name)
            packed = pack([b"EVALSHA", SCRIPT_SHA, *args])
            self._packed[cell] = (minute, packed)
        try:
            reply = await self._redis.execute_packed(packed)
        except RedisReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            await self._redis.execute(b"SCRIPT", b"LOAD", SCRIPT)
            reply = await self._redis.execute_packed(packed)
        return decision_from_reply(reply)

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
        if not self._denied:
            return None
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
            self._metrics.limiter_decisions.labels("cache", "refused").inc()
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


def decision_from_reply(reply: Iterable[int]) -> Decision:
    (
        admitted,
        violated,
        tenant_remaining,
        tenant_reset,
        retry_after,
        used,
        route_remaining,
        route_reset,
    ) = reply
    return Decision(
        allowed=admitted == 1,
        source="redis",
        violated=tuple(name for bit, name in _VIOLATIONS if violated & bit),
        retry_after_us=retry_after,
        tenant_remaining=tenant_remaining,
        tenant_reset_us=tenant_reset,
        route_remaining=route_remaining,
        route_reset_us=route_reset,
        quota_used=used,
    )


def script_arguments(
    spec: LimitSpec, minute: int, month: str, now_us: int | None = None
) -> list[Any]:
    """`EVALSHA` arguments after the SHA. `now_us` replaces Redis' clock: only tests
    replaying a sequence against the reference model pass it."""
    tenant, route = spec.tenant_rate, spec.route_rate
    return [
        4,
        spec.limiter_key,
        quota_key(spec.tenant_id, month),
        usage_bucket_key(spec.tenant_id, minute),
        spec.usage_index_key,
        tenant.emission_interval_us if tenant else 0,
        tenant.burst_tolerance_us if tenant else 0,
        spec.route if route else "",
        route.emission_interval_us if route else 0,
        route.burst_tolerance_us if route else 0,
        spec.monthly_quota if spec.monthly_quota is not None else -1,
        minute,
        spec.route,
        QUOTA_KEEP_SECONDS,
        "" if now_us is None else now_us,
    ]
