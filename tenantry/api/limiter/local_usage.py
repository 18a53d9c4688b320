"""Admitted requests counted in process while Redis is away (or absent, in `tenantry dev`),
and their merge into Redis once it is back, so no admitted request goes unmetered."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files

import structlog

from tenantry.api.limiter.script import QUOTA_KEEP_SECONDS
from tenantry.api.metrics import ApiMetrics
from tenantry.contract.months import month_of
from tenantry.contract.usage import quota_key, usage_bucket_key, usage_index_key
from tenantry.redis_client import REDIS_DOWN, RedisConnector, node_of

log = structlog.get_logger("tenantry.api.limiter")

MERGE_SCRIPT = files("tenantry.api.limiter").joinpath("usage_merge.lua").read_text()


class LocalUsage:
    """Bounded by `max_entries` (tenant, minute, route) cells; a request that finds no room is
    counted in `tenantry_api_usage_dropped` and logged, never lost silently. `held` counts
    the requests not yet in Redis, those of a merge in flight included."""

    def __init__(self, max_entries: int, metrics: ApiMetrics) -> None:
        self._max_entries = max_entries
        self._metrics = metrics
        self._counts: dict[tuple[str, int, str], int] = {}
        self.held = 0  # the gauge `tenantry_api_usage_held_locally` (`ApiRuntime.observe`)

    def add(self, tenant_id: str, minute: int, route: str, count: int = 1) -> bool:
        if not self._store((tenant_id, minute, route), count):
            return False
        self.held += count
        return True

    def _store(self, cell: tuple[str, int, str], count: int) -> bool:
        if cell not in self._counts and len(self._counts) >= self._max_entries:
            self._metrics.usage_dropped.inc(count)
            log.warning("usage_dropped", tenant=cell[0], minute=cell[1], requests=count)
            return False
        self._counts[cell] = self._counts.get(cell, 0) + count
        return True

    def take(self) -> dict[tuple[str, int, str], int]:
        """Everything stored, removed from the store, to be merged: report each tenant's
        cells as `merged` or `give_back` them."""
        taken, self._counts = self._counts, {}
        return taken

    def merged(self, count: int) -> None:
        self.held -= count

    def give_back(self, cells: dict[tuple[str, int, str], int]) -> None:
        for cell, count in cells.items():
            if not self._store(cell, count):
                self.held -= count

    def of_tenant(self, tenant_id: str) -> dict[tuple[int, str], int]:
        """What is held for one tenant: (minute, route) → requests."""
        return {
            (minute, route): count
            for (tenant, minute, route), count in self._counts.items()
            if tenant == tenant_id
        }


async def merge_local_usage(redis: RedisConnector, usage: LocalUsage, metrics: ApiMetrics) -> int:
    """Add what was counted in process to the Redis buckets, one script call per tenant
    (`usage_merge.lua`, atomic: each tenant's keys share a slot). What fails to merge goes
    back to `usage`; once a node failed, its other tenants wait for the next round."""
    try:
        client = await redis.client()
    except REDIS_DOWN as error:
        log.debug("usage_merge_waits", error=str(error))
        return 0
    cells = usage.take()
    by_tenant: dict[str, dict[tuple[str, int, str], int]] = {}
    for cell, count in cells.items():
        by_tenant.setdefault(cell[0], {})[cell] = count
    merge = client.register_script(MERGE_SCRIPT)
    failed_nodes: set[str] = set()
    merged = 0
    for tenant_id, tenant_cells in by_tenant.items():
        node = node_of(client, usage_index_key(tenant_id))
        if node in failed_nodes:
            usage.give_back(tenant_cells)
            continue
        keys, args = _merge_call(tenant_id, tenant_cells)
        try:
            await merge(keys=keys, args=args)
        except REDIS_DOWN as error:
            failed_nodes.add(node)
            metrics.redis_errors.labels("usage_merge").inc()
            log.warning("usage_merge_failed", tenant=tenant_id, node=node, error=str(error))
            usage.give_back(tenant_cells)
            continue
        count = sum(tenant_cells.values())
        usage.merged(count)
        merged += count
        metrics.usage_merged.inc(count)
    if merged:
        log.info("usage_merged", requests=merged)
    return merged


def _merge_call(
    tenant_id: str, cells: dict[tuple[str, int, str], int]
) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of `usage_merge.lua` for one tenant's cells."""
    routes_by_minute: dict[int, list[tuple[str, int]]] = {}
    quota: dict[str, int] = {}
    for (_, minute, route), count in cells.items():
        routes_by_minute.setdefault(minute, []).append((route, count))
        month = month_of(datetime.fromtimestamp(minute, UTC))
        quota[month] = quota.get(month, 0) + count
    keys = [usage_index_key(tenant_id)]
    keys += [usage_bucket_key(tenant_id, minute) for minute in routes_by_minute]
    keys += [quota_key(tenant_id, month) for month in quota]
    args: list[str | int] = [len(routes_by_minute), QUOTA_KEEP_SECONDS]
    for minute, routes in routes_by_minute.items():
        args += [minute, len(routes)]
        for route, count in routes:
            args += [route, count]
    args += list(quota.values())
    return keys, args
