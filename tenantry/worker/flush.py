"""The usage flush: closed per-minute buckets from Redis into PostgreSQL, exactly once.

For each batch of tenants (taken from the registry, never by scanning keys; on a Redis Cluster,
batched by the node that serves them, so a node that is down holds back only its own tenants):
1. Recover: a staged copy left by a crashed flush is applied, unless PostgreSQL already
   recorded its flush id, in which case it is only deleted.
2. Rebuild quota counters that Redis lost (`quota_seed.lua`), now that nothing is in flight.
3. Stage: the open minutes are read from each tenant's index, then `usage_stage.lua` moves
   the closed ones' buckets into a staged hash under a new flush id, atomically (a request is
   counted either in its bucket or in the staged copy).
4. Commit: one transaction inserts the flush id into `usage_flushes` (unique) and adds the
   counts to `usage_counters` (per minute and per day, per route and in total).
5. Clean up: delete the staged copies and the tenants' cached usage answers.

A crash before 4 leaves a staged copy that step 1 applies; a crash after 4 leaves one whose
id PostgreSQL knows, which step 1 only deletes. Nothing is lost and nothing counted twice.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog
from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.months import month_bounds, month_of, next_month
from tenantry.contract.registry import TenantEntry
from tenantry.contract.usage import (
    TOTAL_ROUTE,
    quota_key,
    quota_seeded_key,
    usage_bucket_key,
    usage_cache_key,
    usage_index_key,
    usage_staged_key,
    usage_staging_index_key,
)
from tenantry.db.tables import UsageCounter, UsageFlush, UsageGranularity
from tenantry.redis_client import RedisClient, RedisConnector, node_of
from tenantry.worker import metrics

log = structlog.get_logger("tenantry.flush")

HERE = Path(__file__).parent
STAGE_SCRIPT = (HERE / "usage_stage.lua").read_text()
QUOTA_SEED_SCRIPT = (HERE / "quota_seed.lua").read_text()

TENANTS_PER_FLUSH = 200
MINUTES_PER_CALL = 1440
MARKER_SECONDS = 40 * 24 * 3600  # outlives any month


@dataclass
class FlushReport:
    flushes: int = 0  # flush ids committed by this run
    failed_batches: int = 0  # batches Redis failed (their tenants wait for the next run)
    recovered: int = 0  # staged copies of crashed runs applied
    cleaned: int = 0  # staged copies whose flush had already landed
    buckets: int = 0
    requests: int = 0
    quotas_rebuilt: dict[str, int] = field(default_factory=dict)


@dataclass
class _Staged:
    """Counts staged under one flush id: (tenant, minute, route) → requests."""

    flush_id: str
    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)
    tenants: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return sum(n for (_, _, route), n in self.counts.items() if route == TOTAL_ROUTE)


class UsageFlushError(RuntimeError):
    """Some tenants' usage could not be flushed this time; the next flush takes it."""


class UsageFlusher:
    def __init__(
        self,
        redis: RedisConnector,
        sessions: async_sessionmaker[AsyncSession],
        *,
        grace_seconds: float = 5.0,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.grace_seconds = grace_seconds

    async def flush(self, tenants: Iterable[TenantEntry]) -> FlushReport:
        """Flush every tenant's closed minutes; raises `UsageFlushError` after trying them
        all if Redis failed some batches."""
        report = FlushReport()
        client = await self.redis.client()
        by_node: dict[str, list[TenantEntry]] = defaultdict(list)
        for tenant in sorted(tenants, key=lambda t: t.tenant_id):
            by_node[node_of(client, usage_index_key(tenant.tenant_id))].append(tenant)
        for node, entries in by_node.items():
            for start in range(0, len(entries), TENANTS_PER_FLUSH):
                try:
                    batch = entries[start : start + TENANTS_PER_FLUSH]
                    await self._flush_batch(client, batch, report)
                except (RedisError, RedisClusterException) as error:  # PostgreSQL's end it
                    report.failed_batches += 1
                    log.warning("usage.flush_batch_failed", node=node, error=str(error))
        metrics.FLUSH_REQUESTS.inc(report.requests)
        log.info(
            "usage.flushed",
            flushes=report.flushes,
            buckets=report.buckets,
            requests=report.requests,
            recovered=report.recovered,
            cleaned=report.cleaned,
            failed_batches=report.failed_batches,
        )
        if report.failed_batches:
            raise UsageFlushError(f"{report.failed_batches} batches of tenants were not flushed")
        return report

    async def _flush_batch(
        self, client: RedisClient, batch: Sequence[TenantEntry], report: FlushReport
    ) -> None:
        ids = [t.tenant_id for t in batch]
        await self._recover(client, ids, report)
        await self._rebuild_quotas(client, batch, report)
        async with client.pipeline(transaction=False) as pipe:
            for tenant_id in ids:
                pipe.zrange(usage_index_key(tenant_id), 0, MINUTES_PER_CALL - 1)
            indexes = await pipe.execute()
        flush_id = uuid.uuid4().hex
        candidates = [
            (tenant_id, [int(member) for member in members])
            for tenant_id, members in zip(ids, indexes, strict=True)
            if members
        ]
        if not candidates:
            return
        # The scripts go as EVAL (their text, cached by Redis): a cluster's pipeline has no
        # EVALSHA, and a master promoted a moment ago may not know a loaded script.
        async with client.pipeline(transaction=False) as pipe:
            for tenant_id, minutes in candidates:
                keys = [
                    usage_index_key(tenant_id),
                    usage_staging_index_key(tenant_id),
                    usage_staged_key(tenant_id, flush_id),
                    *(usage_bucket_key(tenant_id, minute) for minute in minutes),
                ]
                pipe.eval(STAGE_SCRIPT, len(keys), *keys, self.grace_seconds, flush_id, *minutes)
            moved = await pipe.execute()
        staged_tenants = [
            tenant_id
            for (tenant_id, _), minutes in zip(candidates, moved, strict=True)
            if int(minutes) > 0
        ]
        metrics.FLUSH_BUCKETS.observe(sum(int(m) for m in moved))
        if not staged_tenants:
            return
        staged = await self._read(client, {flush_id: staged_tenants})
        for copy in staged.values():
            await self._commit(copy, report)
            await self._clean(client, copy)
        report.flushes += 1

    async def _recover(
        self, client: RedisClient, tenant_ids: Sequence[str], report: FlushReport
    ) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for tenant_id in tenant_ids:
                pipe.smembers(usage_staging_index_key(tenant_id))
            members = await pipe.execute()
        leftovers: dict[str, list[str]] = defaultdict(list)
        for tenant_id, flush_ids in zip(tenant_ids, members, strict=True):
            for raw in flush_ids:
                leftovers[raw.decode()].append(tenant_id)
        if not leftovers:
            return
        staged = await self._read(client, leftovers)
        async with self.sessions() as session:
            landed = set(
                (
                    await session.scalars(
                        select(UsageFlush.flush_id).where(UsageFlush.flush_id.in_(list(staged)))
                    )
                ).all()
            )
        for flush_id, copy in staged.items():
            if flush_id in landed:
                report.cleaned += 1
                log.info("usage.flush_already_landed", flush_id=flush_id)
            else:
                await self._commit(copy, report)
                report.recovered += 1
                log.info("usage.flush_recovered", flush_id=flush_id)
            await self._clean(client, copy)

    async def _read(
        self, client: RedisClient, tenants_by_flush: dict[str, list[str]]
    ) -> dict[str, _Staged]:
        pairs = [(f, t) for f, tenants in tenants_by_flush.items() for t in tenants]
        async with client.pipeline(transaction=False) as pipe:
            for flush_id, tenant_id in pairs:
                pipe.hgetall(usage_staged_key(tenant_id, flush_id))
            contents = await pipe.execute()
        staged: dict[str, _Staged] = {}
        for (flush_id, tenant_id), fields in zip(pairs, contents, strict=True):
            copy = staged.setdefault(flush_id, _Staged(flush_id))
            copy.tenants.add(tenant_id)
            for raw_field, raw_count in fields.items():
                minute, route = raw_field.decode().split("|", 1)
                key = (tenant_id, int(minute), route)
                copy.counts[key] = copy.counts.get(key, 0) + int(raw_count)
        return staged

    async def _commit(self, copy: _Staged, report: FlushReport) -> None:
        """One transaction: the flush id (unique) and every counter it adds to."""
        per_minute: dict[tuple[str, datetime, str], int] = {}
        per_day: dict[tuple[str, datetime, str], int] = defaultdict(int)
        oldest: int | None = None
        for (tenant_id, minute, route), count in copy.counts.items():
            moment = datetime.fromtimestamp(minute, UTC)
            per_minute[(tenant_id, moment, route)] = count
            day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            per_day[(tenant_id, day, route)] += count
            oldest = minute if oldest is None else min(oldest, minute)
        rows = [
            {
                "tenant_id": tenant_id,
                "granularity": granularity,
                "bucket_start": start,
                "route": route,
                "request_count": count,
                "last_flush_id": copy.flush_id,
            }
            for granularity, counts in (
                (UsageGranularity.MINUTE, per_minute),
                (UsageGranularity.DAY, per_day),
            )
            for (tenant_id, start, route), count in counts.items()
        ]
        async with self.sessions() as session, session.begin():
            insert = (
                postgresql.insert
                if session.get_bind().dialect.name == "postgresql"
                else sqlite.insert
            )
            session.add(
                UsageFlush(
                    flush_id=copy.flush_id,
                    bucket_count=len(per_minute),
                    request_count=copy.requests,
                )
            )
            await session.flush()  # a second commit of this flush id fails here, adding nothing
            if rows:
                statement = insert(UsageCounter)
                await session.execute(
                    statement.on_conflict_do_update(
                        index_elements=["tenant_id", "granularity", "bucket_start", "route"],
                        set_={
                            "request_count": UsageCounter.request_count
                            + statement.excluded.request_count,
                            "last_flush_id": statement.excluded.last_flush_id,
                        },
                    ),
                    rows,
                )
        report.buckets += len(per_minute)
        report.requests += copy.requests
        if oldest is not None:
            metrics.FLUSH_LAG.set(datetime.now(UTC).timestamp() - oldest - 60)

    async def _clean(self, client: RedisClient, copy: _Staged) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for tenant_id in copy.tenants:
                pipe.delete(usage_staged_key(tenant_id, copy.flush_id))
                pipe.srem(usage_staging_index_key(tenant_id), copy.flush_id)
                pipe.delete(usage_cache_key(tenant_id))
            await pipe.execute()

    async def _rebuild_quotas(
        self, client: RedisClient, batch: Sequence[TenantEntry], report: FlushReport
    ) -> None:
        """Give back to a quota counter what Redis lost of it (see `quota_seed.lua`)."""
        with_quota = [t.tenant_id for t in batch if t.limits and t.limits.monthly_quota]
        if not with_quota:
            return
        month = month_of(datetime.now(UTC))
        async with client.pipeline(transaction=False) as pipe:
            for tenant_id in with_quota:
                pipe.exists(quota_seeded_key(tenant_id, month))
            present = await pipe.execute()
        missing = [t for t, there in zip(with_quota, present, strict=True) if not there]
        flushed: dict[str, int] = {}
        if missing:
            start, end = month_bounds(month)
            async with self.sessions() as session:
                result = await session.execute(
                    select(UsageCounter.tenant_id, func.sum(UsageCounter.request_count))
                    .where(
                        UsageCounter.tenant_id.in_(missing),
                        UsageCounter.granularity == UsageGranularity.DAY,
                        UsageCounter.route == TOTAL_ROUTE,
                        UsageCounter.bucket_start >= start,
                        UsageCounter.bucket_start < end,
                    )
                    .group_by(UsageCounter.tenant_id)
                )
                flushed = {tenant_id: int(total) for tenant_id, total in result.all()}
        async with client.pipeline(transaction=False) as pipe:
            for tenant_id in with_quota:
                keys = [
                    quota_key(tenant_id, month),
                    quota_seeded_key(tenant_id, month),
                    quota_seeded_key(tenant_id, next_month(month)),
                ]
                pipe.eval(
                    QUOTA_SEED_SCRIPT, len(keys), *keys, flushed.get(tenant_id, 0), MARKER_SECONDS
                )
            added = await pipe.execute()
        for tenant_id, amount in zip(with_quota, added, strict=True):
            if int(amount) > 0:
                report.quotas_rebuilt[tenant_id] = int(amount)
                log.warning("usage.quota_rebuilt", tenant_id=tenant_id, added=int(amount))
