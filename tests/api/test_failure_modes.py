"""Redis taken away mid-test: each tenant's failureMode decides, nothing 5xx's except a
tenant that asked to fail closed, and usage counted meanwhile reaches Redis once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis

from tenantry.contract.usage import TOTAL_ROUTE, minute_of, usage_bucket_key
from tests.api.conftest import ServeApi, auth, metric
from tests.harness.servers import RedisProcess

pytestmark = pytest.mark.integration


def _take_away(server: RedisProcess, how: str) -> None:
    if how == "stop":
        server.stop()
    else:
        server.kill()


async def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _metered(server: RedisProcess, tenant: str) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        minute = minute_of(datetime.now(UTC).timestamp())
        total = 0
        for bucket_minute in (minute - 60, minute):
            value = client.hget(usage_bucket_key(tenant, bucket_minute), TOTAL_ROUTE)
            total += int(value or 0)
        return total
    except redis.ConnectionError:
        return -1
    finally:
        client.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_fail_open_serves_counts_locally_and_merges_when_redis_returns(
    serve_api: ServeApi, database_url: str, own_redis: RedisProcess, how: str
) -> None:
    async with serve_api(
        database_url=database_url, redis_url=own_redis.url, usage_merge_interval_seconds=0.1
    ) as api:
        key = api.key("open")
        assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
        _take_away(own_redis, how)
        statuses = [
            (await api.client.get("/v1/limits", headers=auth(key))).status_code for _ in range(25)
        ]
        assert statuses == [200] * 25
        assert api.runtime.usage.held == 25
        assert await metric(api, "tenantry_api_fail_open_decisions_total") == 25
        ready = await api.client.get("/readyz")
        assert ready.json()["checks"]["redis"]["ok"] is False
        assert ready.json()["checks"]["redis"]["held_usage"] == 25
        own_redis.start()  # same port, empty (no persistence)
        await _wait_for(lambda: api.runtime.usage.held == 0)
        assert _metered(own_redis, "team-t/open") == 25
        assert await metric(api, "tenantry_api_usage_merged_total") == 25
        assert await metric(api, "tenantry_api_usage_dropped_total") == 0


async def test_fail_closed_refuses_with_503_and_retry_after(
    serve_api: ServeApi, database_url: str, own_redis: RedisProcess
) -> None:
    async with serve_api(database_url=database_url, redis_url=own_redis.url) as api:
        key = api.key("shut")
        assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
        own_redis.stop()
        response = await api.client.get("/v1/limits", headers=auth(key))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"] == "https://tenantry.io/problems/limiter-unavailable"
        own_redis.start()
        deadline = time.monotonic() + 10
        while (await api.client.get("/v1/limits", headers=auth(key))).status_code == 503:
            assert time.monotonic() < deadline, "still failing closed after Redis returned"
            await asyncio.sleep(0.05)


async def test_fail_local_limits_in_process_at_the_replicas_share(
    serve_api: ServeApi, database_url: str, own_redis: RedisProcess
) -> None:
    async with serve_api(database_url=database_url, redis_url=own_redis.url, replicas=1) as api:
        key = api.key("loco")  # 60/min, burst 4
        own_redis.kill()
        statuses = [
            (await api.client.get("/v1/limits", headers=auth(key))).status_code for _ in range(8)
        ]
        assert statuses == [200] * 5 + [429] * 3
        assert api.runtime.usage.held == 5


@pytest.mark.parametrize(
    ("replicas", "workers", "admitted"),
    [
        (2, 1, 3),  # each of 2 replicas: 30/min, burst 2
        (1, 2, 3),  # each of 2 processes of one replica: the same share
        (2, 2, 2),  # each of 4 processes: 15/min, burst 1
    ],
)
async def test_fail_local_divides_the_rate_by_replicas_times_workers(
    serve_api: ServeApi,
    database_url: str,
    own_redis: RedisProcess,
    replicas: int,
    workers: int,
    admitted: int,
) -> None:
    async with serve_api(
        database_url=database_url, redis_url=own_redis.url, replicas=replicas, workers=workers
    ) as api:
        key = api.key("loco")  # 60/min, burst 4
        own_redis.kill()
        statuses = [
            (await api.client.get("/v1/limits", headers=auth(key))).status_code for _ in range(5)
        ]
        assert statuses == [200] * admitted + [429] * (5 - admitted)


async def test_a_hung_redis_costs_a_short_timeout_not_a_stuck_request(
    serve_api: ServeApi, database_url: str, own_redis: RedisProcess
) -> None:
    async with serve_api(database_url=database_url, redis_url=own_redis.url) as api:
        key = api.key("open")
        assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
        assert own_redis._process is not None
        pid = own_redis._process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = await api.client.get("/v1/limits", headers=auth(key))
            first = time.monotonic() - started
            started = time.monotonic()
            again = await api.client.get("/v1/limits", headers=auth(key))
            second = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert response.status_code == 200
        assert again.status_code == 200
        timeout = api.settings.redis_timeout_seconds
        assert first < timeout + 1.0
        assert second < timeout  # the limiter does not wait on a Redis it just saw hang


async def test_local_usage_is_bounded_and_drops_are_counted(
    serve_api: ServeApi, database_url: str, own_redis: RedisProcess
) -> None:
    async with serve_api(
        database_url=database_url, redis_url=own_redis.url, local_usage_max_entries=1
    ) as api:
        own_redis.kill()
        open_key, alpha_key = api.key("open"), api.key("alpha")
        assert (await api.client.get("/v1/limits", headers=auth(open_key))).status_code == 200
        assert (await api.client.get("/v1/limits", headers=auth(alpha_key))).status_code == 200
        assert (await api.client.get("/v1/limits", headers=auth(open_key))).status_code == 200
        assert api.runtime.usage.held == 2
        assert await metric(api, "tenantry_api_usage_dropped_total") == 1
        metrics = (await api.client.get("/metrics")).text
        assert "tenantry_api_usage_dropped_total 1.0" in metrics


async def test_redis_killed_under_concurrent_load_gives_no_5xx_and_loses_no_usage(
    serve_api: ServeApi, database_url: str, own_redis: RedisProcess
) -> None:
    async with serve_api(
        database_url=database_url, redis_url=own_redis.url, usage_merge_interval_seconds=0.1
    ) as api:
        key = api.key("open")

        async def call() -> int:
            return (await api.client.get("/v1/limits", headers=auth(key))).status_code

        before = await asyncio.gather(*(call() for _ in range(40)))
        killer = asyncio.get_running_loop().run_in_executor(None, own_redis.kill)
        during = await asyncio.gather(*(call() for _ in range(80)))
        await killer
        after_kill = await asyncio.gather(*(call() for _ in range(40)))
        assert set(before) | set(during) | set(after_kill) == {200}
        held = api.runtime.usage.held
        assert held >= 40  # at least every request after the kill was counted in process
        own_redis.start()
        await _wait_for(lambda: api.runtime.usage.held == 0)
        # Redis restarted empty (no persistence): what it holds now is exactly what was
        # counted in process meanwhile; the rest had reached the old Redis.
        assert _metered(own_redis, "team-t/open") == held
