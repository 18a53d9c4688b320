"""What lives as long as the API process: registry, admission, the gateway check, limiter,
clients, metrics and the probes' checks. One instance per app, kept in `app.state.runtime`,
started and stopped by the app's lifespan; requests only read it."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import structlog
from opentelemetry.trace import Tracer
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tenantry.api.access_log import AccessLog
from tenantry.api.admission import Admission
from tenantry.api.auth import AuthFailureLimiter
from tenantry.api.check import GatewayCheck
from tenantry.api.limiter.local_usage import LocalUsage
from tenantry.api.limiter.request_limiter import RequestLimiter
from tenantry.api.limiter.script import ScriptRunner
from tenantry.api.metrics import ApiMetrics
from tenantry.api.refusals import RefusalAudit
from tenantry.contract.registry import Registry
from tenantry.db.engine import session_factory
from tenantry.db.migrate import is_at_head
from tenantry.multiprocess_metrics import multiprocess_dir
from tenantry.redis_client import REDIS_DOWN, RedisConnector
from tenantry.settings import Settings
from tenantry.sources import RegistryHolder

log = structlog.get_logger("tenantry.api")

SHARED_GAUGES_INTERVAL_SECONDS = 1.0


class ApiRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: AsyncEngine | None,
        redis: RedisConnector | None,
        scripts: ScriptRunner | None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.tracer = tracer
        self.metrics = ApiMetrics(
            tenant_label=settings.api.tenant_metrics_label, shared=multiprocess_dir()
        )
        self.access_log = AccessLog(sys.stdout)
        self.holder = RegistryHolder(on_swap=self._on_swap)
        self.usage = LocalUsage(settings.api.local_usage_max_entries, self.metrics)
        self.limiter = RequestLimiter(
            scripts, processes=settings.api.processes, usage=self.usage, metrics=self.metrics
        )
        self.refusals = (
            RefusalAudit(session_factory(engine), self.metrics.refusals_not_audited)
            if engine is not None
            else None
        )
        self.admission = Admission(
            limiter=self.limiter,
            metrics=self.metrics,
            auth_failures=AuthFailureLimiter(
                settings.api.auth_failures_per_minute, settings.api.auth_failures_burst
            ),
            trusted_proxies=tuple(settings.api.trusted_proxies),
            refusals=self.refusals,
        )
        self.check = GatewayCheck(self.admission)
        self.all_origins: frozenset[str] = frozenset()
        self.draining = False
        self.registry_ready = asyncio.Event()
        self.migrations_at_head = False

    def _on_swap(self, registry: Registry) -> None:
        self.admission.use(registry)
        self.check.use(registry)
        self.all_origins = frozenset(
            origin for entry in registry.tenants.values() for origin in entry.allowed_origins
        )
        self.metrics.registry_tenants.set(len(registry.tenants))
        self.metrics.registry_version.info({"version": registry.version})
        self.registry_ready.set()
        log.info(
            "registry_swapped",
            version=registry.version,
            tenants=len(registry.tenants),
            products=len(registry.products),
            upstream_routes=len(registry.product_routes.routes),
        )
        for product, lost in registry.product_routes.conflicts.items():
            log.warning("product_routes_conflict", product=product, routes=list(lost))

    def observe(self) -> None:
        """Set the gauges read from this process's state: when scraped and, with several
        processes, every `SHARED_GAUGES_INTERVAL_SECONDS` (the scrape reaches only one)."""
        metrics = self.metrics
        metrics.registry_age.set(self.holder.age_seconds())
        metrics.registry_rejected.set(self.holder.rejected)
        metrics.usage_held.set(self.usage.held)

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
        """PING; on a cluster, every node must answer."""
        assert self.redis is not None
        client = await self.redis.client()
        await client.ping()

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
    except (*REDIS_DOWN, RuntimeError, SQLAlchemyError) as error:
        return {"ok": False, "error": type(error).__name__ + ": " + str(error)[:200]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
