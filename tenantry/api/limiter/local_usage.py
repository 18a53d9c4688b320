"""Admitted requests counted in process while Redis is away (or absent, in `tenantry dev`),
and their merge into Redis once it is back, so no admitted request goes unmetered."""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis
import structlog

from tenantry.api.limiter.script import QUOTA_KEEP_SECONDS
from tenantry.api.metrics import ApiMetrics
from tenantry.contract.months import month_of
from tenantry.contract.usage import TOTAL_ROUTE, quota_key, usage_bucket_key, usage_index_key

log = structlog.get_logger("tenantry.api.limiter")


class LocalUsage:
    """Bounded by `max_entries` (tenant, minute, route) cells; a request that finds no room is
    counted in `tenantry_api_usage_dropped` and logged, never lost silently."""

    def __init__(self, max_entries: int, metrics: ApiMetrics) -> None:
        self._max_entries = max_entries
        self._metrics = metrics
        self._counts: dict[tuple[str, int, str], int] = {}
        self.held = 0  # the gauge `tenantry_api_usage_held_locally` (`ApiRuntime.observe`)

    def add(self, tenant_id: str, minute: int, route: str, count: int = 1) -> bool:
        cell = (tenant_id, minute, route)
        if cell not in self._counts and len(self._counts) >= self._max_entries:
            self._metrics.usage_dropped.inc(count)
            log.warning("usage_dropped", tenant=tenant_id, minute=minute, requests=count)
            return False
        self._counts[cell] = self._counts.get(cell, 0) + count
        self.held += count
        return True

    def take(self) -> dict[tuple[str, int, str], int]:
        """Everything held, removed from the store (give back what could not be merged)."""
        taken, self._counts = self._counts, {}
        self.held = 0
        return taken

    def give_back(self, cells: dict[tuple[str, int, str], int]) -> None:
        for (tenant_id, minute, route), count in cells.items():
            self.add(tenant_id, minute, route, count)

    def of_tenant(self, tenant_id: str) -> dict[tuple[int, str], int]:
        """What is held for one tenant: (minute, route) → requests."""
        return {
            (minute, route): count
            for (tenant, minute, route), count in self._counts.items()
            if tenant == tenant_id
        }


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
                    pipe.hincrby(bucket, TOTAL_ROUTE, count)
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
