"""The usage flush against real Redis and PostgreSQL: exact, and exact again after crashes
and outages."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.months import month_of
from tenantry.contract.registry import Registry
from tenantry.contract.usage import (
    quota_key,
    quota_seeded_key,
    usage_cache_key,
    usage_index_key,
    usage_staging_index_key,
)
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import JobStatus, UsageCounter, UsageFlush, UsageGranularity
from tenantry.redis_client import RedisConnector
from tenantry.sources import RegistryHolder
from tenantry.worker.flush import UsageFlusher
from tests.harness.redis_cluster import SyncRedis, sync_client
from tests.harness.servers import PostgresProcess
from tests.worker.conftest import ACME, GLOBEX, Harness, fast_settings, tenant, wait_for
from tests.worker.usage_writes import minutes_ago, record_requests

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TENANTS = [tenant(ACME, monthly_quota=1_000_000), tenant(GLOBEX)]


@pytest.fixture
def redis_url(any_redis_url: str) -> str:
    """Every flush test runs on one Redis and on a Redis Cluster."""
    return any_redis_url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[SyncRedis]:
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
async def flusher(
    redis_url: str, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[UsageFlusher]:
    client = RedisConnector(redis_url, timeout_seconds=5)
    yield UsageFlusher(client, sessions, grace_seconds=0)
    await client.aclose()


async def counters(
    sessions: async_sessionmaker[AsyncSession], granularity: UsageGranularity
) -> dict[tuple[str, int, str], int]:
    async with sessions() as session:
        rows = await session.execute(
            select(
                UsageCounter.tenant_id,
                UsageCounter.bucket_start,
                UsageCounter.route,
                UsageCounter.request_count,
            ).where(UsageCounter.granularity == granularity)
        )
        return {(t, int(start.timestamp()), route): n for t, start, route, n in rows}


def day_of(minute: int) -> int:
    return minute // 86400 * 86400


async def test_closed_minutes_land_exactly_and_open_ones_wait(
    flusher: UsageFlusher, sessions: async_sessionmaker[AsyncSession], sync_redis: SyncRedis
) -> None:
    old, older, now = minutes_ago(2), minutes_ago(3), minutes_ago(0)
    record_requests(sync_redis, ACME, older, "/v1/jobs", 7)
    record_requests(sync_redis, ACME, old, "/v1/jobs", 5)
    record_requests(sync_redis, ACME, old, "/v1/usage", 2)
    record_requests(sync_redis, GLOBEX, old, "/v1/jobs", 1)
    record_requests(sync_redis, ACME, now, "/v1/jobs", 100)  # still open
    sync_redis.set(usage_cache_key(ACME), b"stale answer")

    report = await flusher.flush(TENANTS)

    assert report.requests == 15
    assert await counters(sessions, UsageGranularity.MINUTE) == {
        (ACME, older, "/v1/jobs"): 7,
        (ACME, older, ""): 7,
        (ACME, old, "/v1/jobs"): 5,
        (ACME, old, "/v1/usage"): 2,
        (ACME, old, ""): 7,
        (GLOBEX, old, "/v1/jobs"): 1,
        (GLOBEX, old, ""): 1,
    }
    days = await counters(sessions, UsageGranularity.DAY)
    assert sum(n for (t, _, route), n in days.items() if t == ACME and route == "") == 14
    assert sync_redis.zcard(usage_index_key(ACME)) == 1  # the open minute stays
    assert sync_redis.scard(usage_staging_index_key(ACME)) == 0
    assert not sync_redis.exists(usage_cache_key(ACME))


async def test_repeated_flushes_add_only_what_is_new(
    flusher: UsageFlusher, sessions: async_sessionmaker[AsyncSession], sync_redis: SyncRedis
) -> None:
    minute = minutes_ago(2)
    record_requests(sync_redis, ACME, minute, "/v1/jobs", 5)
    await flusher.flush(TENANTS)
    await flusher.flush(TENANTS)
    record_requests(sync_redis, ACME, minute, "/v1/jobs", 3)  # a late write to that minute
    await flusher.flush(TENANTS)
    assert (await counters(sessions, UsageGranularity.MINUTE))[(ACME, minute, "")] == 8
    assert (await counters(sessions, UsageGranularity.DAY))[(ACME, day_of(minute), "")] == 8


def _node_serving(client: SyncRedis, key: str) -> redis.Redis:
    """A client of the one node that holds `key` (the only node off a cluster)."""
    if isinstance(client, redis.RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        connection: redis.Redis = node.redis_connection
        return connection
    return client


async def test_flush_killed_between_commit_and_cleanup_counts_once(
    database_url: str,
    redis_url: str,
    sessions: async_sessionmaker[AsyncSession],
    flusher: UsageFlusher,
    sync_redis: SyncRedis,
) -> None:
    minute = minutes_ago(2)
    record_requests(sync_redis, ACME, minute, "/v1/jobs", 9)
    blocker = create_engine(database_url)
    async with blocker.connect() as lock:
        # Hold the flush at its commit, then freeze Redis writes so that, once the commit
        # goes through, the cleanup cannot: the process dies with its copy still staged.
        await lock.execute(text("LOCK TABLE usage_flushes IN ACCESS EXCLUSIVE MODE"))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.worker.flush_once", database_url, redis_url, ACME, cwd=REPO
        )

        async def staged() -> bool:
            return bool(sync_redis.scard(usage_staging_index_key(ACME)))

        await wait_for(staged, what="the flush to stage its copy")
        node = _node_serving(sync_redis, usage_staging_index_key(ACME))
        node.client_pause(20000, all=False)  # writes only
        await lock.rollback()
    await blocker.dispose()
    try:

        async def committed() -> bool:
            async with sessions() as session:
                return bool(await session.scalar(select(func.count()).select_from(UsageFlush)))

        await wait_for(committed, what="the flush to commit")
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        node.client_unpause()
    assert sync_redis.scard(usage_staging_index_key(ACME)) == 1  # the crash left it staged

    report = await flusher.flush(TENANTS)

    assert report.cleaned == 1
    assert report.recovered == 0
    assert (await counters(sessions, UsageGranularity.MINUTE))[(ACME, minute, "")] == 9
    assert sync_redis.scard(usage_staging_index_key(ACME)) == 0


async def test_postgres_stopped_during_a_flush_loses_and_doubles_nothing(
    own_postgres: PostgresProcess, redis_url: str, sync_redis: SyncRedis
) -> None:
    engine = create_engine(own_postgres.url)
    sessions = session_factory(engine)
    client = RedisConnector(redis_url, timeout_seconds=5)
    flusher = UsageFlusher(client, sessions, grace_seconds=0)
    first, second = minutes_ago(3), minutes_ago(2)
    record_requests(sync_redis, GLOBEX, first, "/v1/jobs", 4)
    own_postgres.stop()
    with pytest.raises(ConnectionRefusedError):
        await flusher.flush([tenant(GLOBEX)])
    assert sync_redis.scard(usage_staging_index_key(GLOBEX)) == 1  # moved aside, kept
    record_requests(sync_redis, GLOBEX, second, "/v1/jobs", 6)  # traffic goes on meanwhile
    own_postgres.start()

    report = await flusher.flush([tenant(GLOBEX)])
    await flusher.flush([tenant(GLOBEX)])

    assert report.recovered == 1
    minutes = await counters(sessions, UsageGranularity.MINUTE)
    assert minutes[(GLOBEX, first, "")] == 4
    assert minutes[(GLOBEX, second, "")] == 6
    await client.aclose()
    await engine.dispose()


async def test_a_quota_counter_redis_lost_is_rebuilt_from_postgres_once(
    flusher: UsageFlusher, sync_redis: SyncRedis
) -> None:
    minute = minutes_ago(1)  # closed; in this month except during a month's first minute
    month = month_of(datetime.fromtimestamp(minute, UTC))
    record_requests(sync_redis, ACME, minute, "/v1/jobs", 40)
    await flusher.flush(TENANTS)  # not a loss: nothing is added
    await flusher.flush(TENANTS)
    assert int(sync_redis.get(quota_key(ACME, month)) or 0) == 40

    sync_redis.flushall()  # Redis restarts empty
    sync_redis.incrby(quota_key(ACME, month), 3)  # the API keeps counting meanwhile

    report = await flusher.flush(TENANTS)
    await flusher.flush(TENANTS)

    assert report.quotas_rebuilt == {ACME: 40}
    assert int(sync_redis.get(quota_key(ACME, month)) or 0) == 43
    assert sync_redis.exists(quota_seeded_key(ACME, month))


async def test_usage_export_returns_the_flushed_usage_as_csv(
    flusher: UsageFlusher, sessions: async_sessionmaker[AsyncSession], sync_redis: SyncRedis
) -> None:
    minute = minutes_ago(2)
    record_requests(sync_redis, ACME, minute, "/v1/jobs", 5)
    record_requests(sync_redis, GLOBEX, minute, "/v1/jobs", 99)
    await flusher.flush(TENANTS)
    holder = RegistryHolder()
    holder.publish(Registry.build(TENANTS))
    harness = Harness(sessions, holder, fast_settings())
    day = datetime.fromtimestamp(minute, UTC).date().isoformat()
    async with harness.worker().running():
        job_id = await harness.submit("usage.export", {"start": day, "end": day})
        job = await harness.wait_status(job_id, JobStatus.SUCCEEDED)
    output = await harness.service.output(ACME, job_id)
    assert output.content_type == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(output.body.decode())))
    assert rows == [
        ["bucket_start", "route", "requests"],
        [f"{day}T00:00:00Z", "", "5"],
        [f"{day}T00:00:00Z", "/v1/jobs", "5"],
    ]
    assert job.result == {"rows": 2, "total_requests": 5, "content_type": "text/csv"}
