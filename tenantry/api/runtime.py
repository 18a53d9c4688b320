"""What lives as long as the API process: registry, limiter, clients, metrics, and the
per-request admission step that auth's dependency calls. One instance per app, kept in
`app.state.runtime` and built by the app's lifespan."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from opentelemetry.trace import Tracer
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.api.access_log import AccessLog
from tenantry.api.auth import (
    AuthFailureLimiter,
    Caller,
    TrustedNetwork,
    authenticate,
    check_scopes,
    client_address,
    keys_by_hash,
)
from tenantry.api.limiter import Decision, LimitSpec, LocalUsage, RequestLimiter, compile_spec
from tenantry.api.metrics import ApiMetrics
from tenantry.api.problems import (
    LIMITER_UNAVAILABLE,
    QUOTA_EXCEEDED,
    TOO_MANY_AUTH_FAILURES,
    ProblemError,
)
from tenantry.api.redis_pipeline import PipelinedRedis
from tenantry.api.refusals import RefusalAudit
from tenantry.contract.registry import KeyRecord, Registry
from tenantry.contract.resources import Scope
from tenantry.db.engine import session_factory
from tenantry.db.migrate import is_at_head
from tenantry.settings import Settings
from tenantry.sources import RegistryHolder

log = structlog.get_logger("tenantry.api")

REVOKED_IDS_KEPT = 10_000


@dataclass(slots=True)
class RequestContext:
    """Per-request facts the middleware and the routes share (in `scope["tenantry"]`)."""

    request_id: str
    trace_id: str | None = None
    caller: Caller | None = None
    decision: Decision | None = None
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    rate_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class ApiRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: AsyncEngine | None,
        redis: aioredis.Redis | None,
        pipelined: PipelinedRedis | None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.pipelined = pipelined
        self.tracer = tracer
        self.metrics = ApiMetrics(tenant_label=settings.api.tenant_metrics_label)
        self.access_log = AccessLog(sys.stdout)
        self.holder = RegistryHolder(on_swap=self._on_swap)
        self.usage = LocalUsage(settings.api.local_usage_max_entries, self.metrics)
        self.limiter = RequestLimiter(
            pipelined, replicas=settings.api.replicas, usage=self.usage, metrics=self.metrics
        )
        self.refusals = (
            RefusalAudit(session_factory(engine), self.metrics.refusals_not_audited)
            if engine is not None
            else None
        )
        self.auth_failures = AuthFailureLimiter(
            settings.api.auth_failures_per_minute, settings.api.auth_failures_burst
        )
        self.trusted_proxies: tuple[TrustedNetwork, ...] = tuple(settings.api.trusted_proxies)
        self.all_origins: frozenset[str] = frozenset()
        self.draining = False
        self.registry_ready = asyncio.Event()
        self.migrations_at_head = False
        self._revoked: set[str] = set()
        self._key_ids: set[str] = set()
        self._by_hash: dict[str, KeyRecord] = {}
        self._revoked_order: deque[str] = deque()
        self._specs: dict[tuple[str, str, str], LimitSpec] = {}

    # --- registry ----------------------------------------------------------------------

    def _on_swap(self, registry: Registry) -> None:
        # The holder has already swapped; the previous snapshot's key ids are kept here.
        current = set(registry.by_key_id)
        for key_id in self._key_ids - current:
            self._revoked.add(key_id)
            self._revoked_order.append(key_id)
        for key_id in current & self._revoked:
            self._revoked.discard(key_id)
        self._key_ids = current
        while len(self._revoked_order) > REVOKED_IDS_KEPT:
            self._revoked.discard(self._revoked_order.popleft())
        self._specs = {}
        self._by_hash = keys_by_hash(registry)
        self.limiter.forget()
        self.all_origins = frozenset(
            origin for entry in registry.tenants.values() for origin in entry.allowed_origins
        )
        self.metrics.registry_tenants.set(len(registry.tenants))
        self.metrics.registry_version.info({"version": registry.version})
        self.registry_ready.set()
        log.info("registry_swapped", version=registry.version, tenants=len(registry.tenants))

    # --- admission ---------------------------------------------------------------------

    async def admit(
        self, scope: MutableMapping[str, Any], presented: str | None, needed: frozenset[Scope]
    ) -> Caller:
        """Authenticate, check scopes, then limit, meter and set the rate-limit headers."""
        context: RequestContext = scope["tenantry"]
        address = client_address(scope, self.trusted_proxies)
        wait = self.auth_failures.blocked_for(address)
        if wait:
            self.metrics.auth_failures.labels(TOO_MANY_AUTH_FAILURES.slug).inc()
            raise ProblemError(
                TOO_MANY_AUTH_FAILURES,
                "too many failed authentications from this address; retry later",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        try:
            record = authenticate(
                self.holder.registry, presented, datetime.now(UTC), self._revoked, self._by_hash
            )
        except ProblemError as error:
            if error.status_code == 401:
                self.auth_failures.record_failure(address)
            self.metrics.auth_failures.labels(error.kind.slug).inc()
            if self.refusals is not None:
                self.refusals.offer(address, error.kind.slug, presented, context.request_id)
            raise
        tenant = record.tenant
        assert tenant.limits is not None  # authenticate refuses tenants without limits
        caller = Caller(tenant, record.key, tenant.limits)
        context.caller = caller
        check_scopes(record.key, needed)
        if self.metrics.tenant_label:
            self.metrics.tenant_requests.labels(tenant.tenant_id).inc()
        route = scope.get("route")
        method: str = scope["method"]
        path: str = getattr(route, "path", scope["path"])
        cell = (tenant.tenant_id, method, path)
        spec = self._specs.get(cell)
        if spec is None:
            spec = self._specs[cell] = compile_spec(tenant, tenant.limits, method, path)
        decision = await self.limiter.decide(spec)
        context.decision = decision
        context.rate_headers = decision.headers(spec)
        if decision.allowed:
            return caller
        headers = {"Retry-After": str(decision.retry_after_s)}
        if decision.unavailable:
            raise ProblemError(
                LIMITER_UNAVAILABLE,
                "the rate limiter cannot be reached and this tenant's policy fails closed",
                headers=headers,
            )
        raise ProblemError(
            QUOTA_EXCEEDED,
            _refusal_detail(decision.violated, decision.retry_after_s),
            headers=headers,
            extensions={"violated-policies": list(decision.violated)},
        )

    # --- probes ------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        timeout = self.settings.api.probe_timeout_seconds
        checks: dict[str, dict[str, Any]] = {}
        checks["registry"] = {
            "ok": self.holder.loaded,
            "version": self.holder.registry.version,
            "age_seconds": round(self.holder.age_seconds(), 1),
        }
        checks["database"] = await _check(self._ping_database(), timeout)
        if self.redis is not None:
            redis_check = await _check(self._ping_redis(), timeout)
            redis_check["held_usage"] = self.usage.held
            if not redis_check["ok"]:
                redis_check["degraded"] = "tenants' failureMode applies"
            checks["redis"] = redis_check
        checks["shutdown"] = {"ok": not self.draining}
        required = ["registry", "database", "shutdown"]
        if self.settings.api.readiness_requires_redis and "redis" in checks:
            required.append("redis")
        return all(checks[name]["ok"] for name in required), checks

    async def startup_state(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        timeout = self.settings.api.probe_timeout_seconds
        if not self.migrations_at_head:
            migrations = await _check(self._check_migrations(), timeout)
        else:
            migrations = {"ok": True}
        checks = {"migrations": migrations, "registry": {"ok": self.holder.loaded}}
        return all(check["ok"] for check in checks.values()), checks

    async def _ping_database(self) -> None:
        assert self.engine is not None
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def _ping_redis(self) -> None:
        assert self.redis is not None
        await self.redis.ping()

    async def _check_migrations(self) -> None:
        assert self.engine is not None
        if not await is_at_head(self.engine):
            raise RuntimeError("database is not at the migrations' head: run `tenantry migrate`")
        self.migrations_at_head = True


async def _check(probe: Any, limit_seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_seconds):
            await probe
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {limit_seconds}s"}
    except (OSError, RuntimeError, aioredis.RedisError, SQLAlchemyError) as error:
        return {"ok": False, "error": type(error).__name__ + ": " + str(error)[:200]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _refusal_detail(violated: tuple[str, ...], retry_after: int) -> str:
    names = {
        "tenant": "the tenant's rate",
        "route": "this route's rate",
        "monthly": "the monthly quota",
    }
    limits = " and ".join(names.get(name, name) for name in violated)
    return f"{limits} is exhausted; retry in {retry_after}s"
