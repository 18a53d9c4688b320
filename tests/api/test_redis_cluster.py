"""The API on a real Redis Cluster (three masters, a replica each): a tenant's call goes to the
master of its slot, a slot migrated under load loses no admitted request, and a master that
dies takes only its own tenants into their failure mode; afterwards the usage flushed to
PostgreSQL equals what the clients saw admitted, nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.crc import key_slot
from sqlalchemy import func, select

from tenantry.contract.usage import TOTAL_ROUTE, limiter_key
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import UsageCounter, UsageGranularity
from tenantry.redis_client import RedisConnector
from tenantry.worker.flush import UsageFlusher
from tests.api.conftest import Api, ServeApi, auth
from tests.harness.redis_cluster import RedisCluster
from tests.worker.conftest import tenant, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIERS = """
apiVersion: tenantry.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: roomy-{mode}, namespace: tenantry-system}}
spec:
  requestsPerMinute: 600000
  burst: 10000
  failureMode: {mode}
"""
TENANT = """
---
apiVersion: tenantry.io/v1alpha1
kind: ApiTenant
metadata: {{name: {name}, namespace: team-t}}
spec:
  displayName: {name}
  policyRef: {{name: roomy-{mode}}}
  keys: [{{name: main}}]
"""
# Everything still in Redis is flushed, the minute still open included.
FLUSH_EVERYTHING_GRACE = -60.0


def _tenant_on(cluster: RedisCluster, master: int, prefix: str, taken: set[str]) -> str:
    """The name of a tenant whose keys live on `master`."""
    owned = cluster.masters()[master]
    for index in range(10_000):
        name = f"{prefix}-{index}"
        slot = key_slot(limiter_key(f"team-t/{name}").encode())
        if name not in taken and any(start <= slot <= end for start, end in owned):
            taken.add(name)
            return name
    raise LookupError(f"no tenant name lands on master {master}")


def _write_manifests(path: Path, tenants: dict[str, str]) -> None:
    """Tiers for each failure mode and `tenants` (name → failure mode)."""
    tiers = "---".join(TIERS.format(mode=mode) for mode in ("open", "local", "closed"))
    path.write_text(
        tiers + "".join(TENANT.format(name=n, mode=m) for n, m in tenants.items()),
        encoding="utf-8",
    )


@dataclass
class Load:
    """Clients calling `/v1/limits` as each tenant in a loop, counting what they saw."""

    api: Api
    tenants: list[str]
    clients_per_tenant: int = 4
    answers: dict[str, Counter[int]] = field(default_factory=dict)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False

    def admitted(self, name: str) -> int:
        return self.answers[name][200]

    async def client(self, name: str) -> None:
        key = self.api.key(name)
        seen = self.answers.setdefault(name, Counter())
        while not self.stopped:
            await self.running.wait()
            response = await self.api.client.get("/v1/limits", headers=auth(key))
            seen[response.status_code] += 1

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Load]:
        self.running.set()
        tasks = [
            asyncio.create_task(self.client(name))
            for name in self.tenants
            for _ in range(self.clients_per_tenant)
        ]
        try:
            yield self
        finally:
            self.stopped = True
            self.running.set()
            await asyncio.gather(*tasks)

    async def until(self, name: str, status: int, count: int) -> None:
        async def seen() -> bool:
            return self.answers.get(name, Counter())[status] >= count

        await wait_for(seen, within=60, what=f"{count} answers {status} to {name}")


async def _flushed(database_url: str, cluster_url: str, tenants: list[str]) -> dict[str, int]:
    """Flush everything in Redis to PostgreSQL, then each tenant's flushed total."""
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    redis = RedisConnector(cluster_url, timeout_seconds=5)
    flusher = UsageFlusher(redis, sessions, grace_seconds=FLUSH_EVERYTHING_GRACE)
    await flusher.flush([tenant(f"team-t/{name}") for name in tenants])
    async with sessions() as session:
        rows = await session.execute(
            select(UsageCounter.tenant_id, func.sum(UsageCounter.request_count))
            .where(
                UsageCounter.granularity == UsageGranularity.MINUTE,
                UsageCounter.route == TOTAL_ROUTE,
            )
            .group_by(UsageCounter.tenant_id)
        )
        totals = {tenant_id.removeprefix("team-t/"): int(total) for tenant_id, total in rows}
    await redis.aclose()
    await engine.dispose()
    return {name: totals.get(name, 0) for name in tenants}


async def _held_usage_merged(api: Api) -> None:
    async def merged() -> bool:
        return api.runtime.usage.held == 0

    await wait_for(merged, within=30, what="the usage counted in process to be merged")


@pytest.fixture
def cluster(redis_cluster: RedisCluster | None) -> RedisCluster:
    if redis_cluster is None:
        pytest.skip("moves slots and kills masters: needs the cluster the harness starts")
    return redis_cluster


async def test_a_slot_migrated_under_load_loses_no_admitted_request(
    serve_api: ServeApi,
    manifests: Path,
    database_url: str,
    redis_cluster_url: str,
    cluster: RedisCluster,
) -> None:
    masters = list(cluster.masters())
    taken: set[str] = set()
    moving = _tenant_on(cluster, masters[0], "moving", taken)
    staying = _tenant_on(cluster, masters[0], "staying", taken)
    elsewhere = _tenant_on(cluster, masters[1], "elsewhere", taken)
    _write_manifests(manifests, {moving: "open", staying: "local", elsewhere: "open"})
    names = [moving, staying, elsewhere]
    async with (
        serve_api(
            database_url=database_url,
            redis_url=redis_cluster_url,
            usage_merge_interval_seconds=0.1,
        ) as api,
        Load(api, names).run() as load,
    ):
        await load.until(moving, 200, 200)
        moved = await asyncio.to_thread(
            cluster.migrate_slot, limiter_key(f"team-t/{moving}"), masters[2], 0.05
        )
        await load.until(moving, 200, load.admitted(moving) + 200)
    await _held_usage_merged(api)

    assert moved >= 3  # the limiter's state, the quota counter, the bucket, the index
    assert cluster.master_of(limiter_key(f"team-t/{moving}")) == masters[2]
    for name in names:
        assert set(load.answers[name]) == {200}, (name, load.answers[name])
    flushed = await _flushed(database_url, redis_cluster_url, names)
    assert flushed == {name: load.admitted(name) for name in names}


async def test_a_dead_master_takes_only_its_tenants_into_their_failure_mode(
    serve_api: ServeApi,
    manifests: Path,
    database_url: str,
    redis_cluster_url: str,
    cluster: RedisCluster,
) -> None:
    masters = list(cluster.masters())
    victim = masters[0]
    taken: set[str] = set()
    on_victim = {
        _tenant_on(cluster, victim, f"victim-{mode}", taken): mode
        for mode in ("open", "local", "closed")
    }
    elsewhere = {_tenant_on(cluster, port, "elsewhere", taken): "closed" for port in masters[1:]}
    _write_manifests(manifests, {**on_victim, **elsewhere})
    names = [*on_victim, *elsewhere]
    async with (
        serve_api(
            database_url=database_url,
            redis_url=redis_cluster_url,
            usage_merge_interval_seconds=0.1,
        ) as api,
        Load(api, names, clients_per_tenant=2).run() as load,
    ):
        for name in names:
            await load.until(name, 200, 50)
        # The master dies with nothing in flight and its replica holding every write: what
        # a crash can lose in Redis' asynchronous replication is Redis' own (docs/scaling.md).
        load.running.clear()
        await asyncio.sleep(0.2)
        await asyncio.to_thread(cluster.wait_until_in_sync, victim)
        cluster.node(victim).kill()
        before = {name: Counter(load.answers[name]) for name in names}
        load.running.set()

        victim_closed = next(n for n, mode in on_victim.items() if mode == "closed")
        await load.until(victim_closed, 503, 1)  # the master is gone for its tenants
        at_outage = {name: load.answers[name][200] for name in elsewhere}
        # The replica takes over and the victim's tenants are served by Redis again.
        await load.until(victim_closed, 200, before[victim_closed][200] + 1)
        at_recovery = {name: load.answers[name][200] for name in elsewhere}
        await load.until(victim_closed, 200, before[victim_closed][200] + 100)
    await _held_usage_merged(api)
    cluster.node(victim).start()  # it rejoins as the replica of its former replica
    await asyncio.to_thread(cluster.wait_until_healthy)

    # Only the victim's tenants met the outage: the other masters' tenants, which fail
    # closed, were served all along, during the outage too.
    for name in elsewhere:
        assert set(load.answers[name]) == {200}, (name, load.answers[name])
        assert at_recovery[name] > at_outage[name], (name, at_outage, at_recovery)
    for name, mode in on_victim.items():
        expected = {200, 503} if mode == "closed" else {200}
        assert set(load.answers[name]) == expected, (name, load.answers[name])
    flushed = await _flushed(database_url, redis_cluster_url, names)
    assert flushed == {name: load.admitted(name) for name in names}


async def test_a_call_is_sent_to_the_master_of_its_tenants_slot(
    serve_api: ServeApi,
    manifests: Path,
    database_url: str,
    redis_cluster_url: str,
    redis_cluster: RedisCluster | None,
) -> None:
    """Tenants on every master, each admitted and metered by Redis; `/v1/usage` and the
    probes see the cluster."""
    if redis_cluster is None:
        pytest.skip("reads each master's keys: needs the cluster the harness starts")
    taken: set[str] = set()
    names = [_tenant_on(redis_cluster, port, "spread", taken) for port in redis_cluster.masters()]
    _write_manifests(manifests, dict.fromkeys(names, "closed"))
    async with serve_api(database_url=database_url, redis_url=redis_cluster_url) as api:
        for name in names:
            for _ in range(3):
                response = await api.client.get("/v1/limits", headers=auth(api.key(name)))
                assert response.status_code == 200
            usage = await api.client.get("/v1/usage", headers=auth(api.key(name)))
            assert usage.status_code == 200
            # the three calls and this one, read from the tenant's master
            assert usage.json()["unflushed"] == 4
        ready = (await api.client.get("/readyz")).json()
        assert ready["checks"]["redis"]["ok"] is True
    assert api.runtime.usage.held == 0  # nothing fell back to the process
