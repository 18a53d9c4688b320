"""Consumer endpoints of API version 1: the caller's limits and usage.

Every route here is protected by the admission layer, so it is authenticated, limited and
metered like any other call; a tenant only ever sees its own data.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from tenantry.api.context import Caller, request_context
from tenantry.api.problems import (
    AUTH_PROBLEMS,
    INSUFFICIENT_SCOPE,
    SERVICE_UNAVAILABLE,
    VALIDATION_FAILED,
    ProblemError,
    problem_responses,
)
from tenantry.api.routes import requires
from tenantry.api.runtime import ApiRuntime
from tenantry.contract.months import month_of, month_start, next_month_start
from tenantry.contract.resources import FailureMode, JobPriority, RouteLimit
from tenantry.contract.scopes import USAGE_READ
from tenantry.contract.usage import (
    TOTAL_ROUTE,
    usage_bucket_key,
    usage_cache_key,
    usage_index_key,
)
from tenantry.db.engine import session_factory
from tenantry.db.tables import UsageCounter, UsageGranularity
from tenantry.redis_client import REDIS_DOWN, RedisClient

router = APIRouter(prefix="/v1", tags=["v1"])


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyInfo(ResponseModel):
    name: str
    key_id: str
    scopes: list[str] | None = Field(description="Null when the key holds every scope.")
    expires_at: datetime | None


class RateState(ResponseModel):
    requests_per_minute: int
    burst: int
    remaining: int | None = Field(description="Requests that could pass right now.")
    reset_seconds: int | None = Field(description="Seconds until the burst is full again.")


class QuotaState(ResponseModel):
    monthly_quota: int | None
    used: int | None = Field(description="Admitted requests this UTC month (null if unknown).")
    remaining: int | None
    resets_at: datetime


class LimitsResponse(ResponseModel):
    tenant: str
    tier: str
    key: KeyInfo
    rate: RateState | None = Field(description="Null when the tier sets no rate.")
    quota: QuotaState
    routes: list[RouteLimit]
    max_concurrent_jobs: int
    job_priority: JobPriority
    failure_mode: FailureMode

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tenant": "team-a/acme",
                    "tier": "standard",
                    "key": {
                        "name": "production",
                        "key_id": "AbCdEf012345",
                        "scopes": None,
                        "expires_at": None,
                    },
                    "rate": {
                        "requests_per_minute": 600,
                        "burst": 50,
                        "remaining": 50,
                        "reset_seconds": 1,
                    },
                    "quota": {
                        "monthly_quota": 1000000,
                        "used": 1204,
                        "remaining": 998796,
                        "resets_at": "2026-12-01T00:00:00Z",
                    },
                    "routes": [
                        {
                            "method": "POST",
                            "path": "/v1/jobs",
                            "requestsPerMinute": 120,
                            "burst": 10,
                        }
                    ],
                    "max_concurrent_jobs": 4,
                    "job_priority": "default",
                    "failure_mode": "local",
                }
            ]
        },
    )


class DayUsage(ResponseModel):
    date: date
    requests: int


class RouteUsage(ResponseModel):
    route: str = Field(description="`METHOD /template`, as policies' route overrides name it.")
    requests: int


class UsageResponse(ResponseModel):
    tenant: str
    month: str = Field(description="The UTC month, `YYYY-MM`.")
    requests: int = Field(description="Admitted requests this month.")
    monthly_quota: int | None
    remaining: int | None
    days: list[DayUsage] = Field(description="Per UTC day, flushed and not yet flushed.")
    routes: list[RouteUsage] = Field(
        default_factory=list,
        description="Per route this month, plug-ins' included; the busiest first.",
    )
    unflushed: int = Field(description="Requests counted but not yet in the database.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tenant": "team-a/acme",
                    "month": "2026-11",
                    "requests": 1204,
                    "monthly_quota": 1000000,
                    "remaining": 998796,
                    "days": [{"date": "2026-11-25", "requests": 1204}],
                    "unflushed": 17,
                }
            ]
        },
    )


class UsageQuery(BaseModel):
    """Query parameters of `/v1/usage`; unknown parameters are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    fresh: bool = Field(default=False, description="Skip the short-lived cache and count again.")


@router.get(
    "/limits",
    summary="The caller's effective limits and where it stands",
    response_model=LimitsResponse,
    responses=problem_responses(*AUTH_PROBLEMS),
)
async def get_limits(request: Request, caller: Caller) -> LimitsResponse:
    """The tier and overrides as applied to the calling tenant, and the state of its rate
    and quota as of this request (this request included)."""
    decision = request_context(request).decision
    limits = caller.limits
    now = datetime.now(UTC)
    rate = None
    if limits.requests_per_minute is not None:
        known = decision is not None and decision.tenant_remaining >= 0
        rate = RateState(
            requests_per_minute=limits.requests_per_minute,
            burst=limits.burst,
            remaining=decision.tenant_remaining if decision and known else None,
            reset_seconds=-(-decision.tenant_reset_us // 1_000_000) if decision and known else None,
        )
    used = decision.quota_used if decision is not None else None
    quota = QuotaState(
        monthly_quota=limits.monthly_quota,
        used=used,
        remaining=max(0, limits.monthly_quota - used)
        if limits.monthly_quota is not None and used is not None
        else None,
        resets_at=next_month_start(now),
    )
    key = caller.key
    return LimitsResponse(
        tenant=caller.tenant.tenant_id,
        tier=caller.tenant.tier,
        key=KeyInfo(
            name=key.name,
            key_id=key.key_id,
            scopes=sorted(key.scopes) if key.scopes is not None else None,
            expires_at=key.expires_at,
        ),
        rate=rate,
        quota=quota,
        routes=limits.routes,
        max_concurrent_jobs=limits.max_concurrent_jobs,
        job_priority=limits.job_priority,
        failure_mode=limits.failure_mode,
    )


@router.get(
    "/usage",
    summary="The caller's usage this month, per day, against its quota",
    response_model=UsageResponse,
    dependencies=[requires(USAGE_READ)],
    responses=problem_responses(
        *AUTH_PROBLEMS, INSUFFICIENT_SCOPE, VALIDATION_FAILED, SERVICE_UNAVAILABLE
    ),
)
async def get_usage(
    request: Request, caller: Caller, query: Annotated[UsageQuery, Query()]
) -> UsageResponse:
    """Flushed usage from the database plus what is still in Redis (or in this process),
    cached in Redis for a few seconds; the cache is dropped when a flush lands."""
    runtime: ApiRuntime = request.app.state.runtime
    tenant_id = caller.tenant.tenant_id
    redis = await _redis_of(request, runtime)
    if redis is not None and not query.fresh:
        cached = await _cached(redis, tenant_id, runtime)
        if cached is not None:
            runtime.metrics.usage_cache.labels("hit").inc()
            return cached
    runtime.metrics.usage_cache.labels("miss").inc()
    now = datetime.now(UTC)
    days, routes = await _flushed_this_month(runtime, tenant_id, now)
    held = await _unflushed_cells(redis, tenant_id, runtime)
    for (minute, route), count in runtime.usage.of_tenant(tenant_id).items():
        for counted in (route, TOTAL_ROUTE):  # held in process per route only
            held[(minute, counted)] = held.get((minute, counted), 0) + count
    start = month_start(now).timestamp()
    unflushed = 0
    for (minute, route), count in held.items():
        if minute < start:
            continue
        if route != TOTAL_ROUTE:
            routes[route] = routes.get(route, 0) + count
            continue
        unflushed += count
        day = datetime.fromtimestamp(minute, UTC).date()
        days[day] = days.get(day, 0) + count
    total = sum(days.values())
    quota = caller.limits.monthly_quota
    answer = UsageResponse(
        tenant=tenant_id,
        month=month_of(now),
        requests=total,
        monthly_quota=quota,
        remaining=max(0, quota - total) if quota is not None else None,
        days=[DayUsage(date=day, requests=count) for day, count in sorted(days.items())],
        routes=[
            RouteUsage(route=route, requests=count)
            for route, count in sorted(routes.items(), key=lambda item: (-item[1], item[0]))
        ],
        unflushed=unflushed,
    )
    if redis is not None:
        try:
            await redis.set(
                usage_cache_key(tenant_id),
                answer.model_dump_json(),
                ex=runtime.settings.api.usage_cache_seconds,
            )
        except REDIS_DOWN:
            runtime.metrics.redis_errors.labels("usage_cache").inc()
    return answer


async def _redis_of(request: Request, runtime: ApiRuntime) -> RedisClient | None:
    """The Redis client, when Redis (the node of the caller's tenant) just admitted this
    request: otherwise it is away, and asking it would only add a timeout."""
    decision = request_context(request).decision
    if runtime.redis is None or decision is None or decision.source != "redis":
        return None
    try:
        return await runtime.redis.client()
    except REDIS_DOWN:
        return None


async def _cached(redis: RedisClient, tenant_id: str, runtime: ApiRuntime) -> UsageResponse | None:
    try:
        raw = await redis.get(usage_cache_key(tenant_id))
    except REDIS_DOWN:
        runtime.metrics.redis_errors.labels("usage_cache").inc()
        return None
    return UsageResponse.model_validate_json(raw) if raw else None


async def _flushed_this_month(
    runtime: ApiRuntime, tenant_id: str, now: datetime
) -> tuple[dict[date, int], dict[str, int]]:
    """Flushed requests this month: in total per day, and per route."""
    assert runtime.engine is not None
    query = select(UsageCounter.bucket_start, UsageCounter.route, UsageCounter.request_count).where(
        UsageCounter.tenant_id == tenant_id,
        UsageCounter.granularity == UsageGranularity.DAY,
        UsageCounter.bucket_start >= month_start(now),
    )
    days: dict[date, int] = {}
    routes: dict[str, int] = {}
    try:
        async with (
            asyncio.timeout(runtime.settings.api.database_timeout_seconds),
            session_factory(runtime.engine)() as session,
        ):
            for bucket_start, route, count in await session.execute(query):
                if route != TOTAL_ROUTE:
                    routes[route] = routes.get(route, 0) + count
                    continue
                moment = bucket_start if bucket_start.tzinfo else bucket_start.replace(tzinfo=UTC)
                day = moment.astimezone(UTC).date()
                days[day] = days.get(day, 0) + count
    except (SQLAlchemyError, OSError, TimeoutError) as error:
        raise ProblemError(
            SERVICE_UNAVAILABLE, "usage history is unavailable right now; retry shortly"
        ) from error
    return days, routes


async def _unflushed_cells(
    redis: RedisClient | None, tenant_id: str, runtime: ApiRuntime
) -> dict[tuple[int, str], int]:
    """Requests in Redis not yet flushed: (minute, route) → requests, the total included."""
    if redis is None:
        return {}
    try:
        members: list[Any] = await redis.zrange(usage_index_key(tenant_id), 0, -1)
        minutes = [int(member) for member in members]
        async with redis.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(usage_bucket_key(tenant_id, minute))
            buckets: list[dict[bytes, bytes]] = await pipe.execute()
    except REDIS_DOWN:
        runtime.metrics.redis_errors.labels("usage_read").inc()
        return {}
    return {
        (minute, route.decode()): int(count)
        for minute, bucket in zip(minutes, buckets, strict=True)
        for route, count in bucket.items()
    }
