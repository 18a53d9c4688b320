"""Limiter accuracy across processes: several real API servers share one tenant's limit.

Three `tenantry api` processes on their own ports and 64 concurrent clients on one tenant, on
one Redis and on a Redis Cluster,
for a few seconds, and on until 100 requests were refused (a loaded machine sends fewer).
GCRA admits at most `burst + 1 + floor(W / T)` requests in any window W
(T the emission interval); the admitted count must not exceed that for the measured window
and must reach at least 99% of it. The usage metered in Redis must equal what was admitted.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantry.contract.policy import gcra_params
from tenantry.contract.usage import TOTAL_ROUTE, usage_bucket_key, usage_index_key
from tests.api.conftest import auth
from tests.api.servers import api_environment, tenantry_process, wait_until_serving
from tests.harness.redis_cluster import SyncRedis, sync_client
from tests.harness.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROCESSES = 3
CLIENTS = 64
LOAD_SECONDS = 5.0
MIN_REFUSED = 100  # the clients keep pushing past the limit once the burst is spent
TENANT = "team-t/metered"  # tier `steady`: 1200/min, burst 300


@pytest.fixture
def redis_url(any_redis_url: str) -> str:
    return any_redis_url


def _redis_now(client: SyncRedis) -> float:
    """Redis' clock, the one the limiter runs on, so the window is measured on it too."""
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


async def _hammer(
    urls: list[str], key: str, clock: SyncRedis
) -> tuple[int, int, int, float, float]:
    """Admitted, refused and other answers; the window on Redis' clock from the start signal
    to the last answer, and the seconds the clients were sending."""
    admitted = refused = other = 0
    go = asyncio.Event()
    connected = 0
    started = stop_at = time.monotonic() + 3600  # set when the window opens
    stopped: float | None = None
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker(index: int) -> None:
            nonlocal admitted, refused, other, connected, stopped
            base = urls[index % len(urls)]
            await client.get(base + "/livez")  # connect before the window opens
            connected += 1
            if connected == CLIENTS:
                go.set()
            await go.wait()
            while stopped is None:
                if time.monotonic() >= stop_at and refused >= MIN_REFUSED:
                    stopped = time.monotonic()
                    break
                response = await client.get(base + "/v1/limits", headers=auth(key))
                if response.status_code == 200:
                    admitted += 1
                elif response.status_code == 429:
                    refused += 1
                else:
                    other += 1

        async def clock_window() -> float:
            nonlocal stop_at, started
            await go.wait()
            on_redis = _redis_now(clock)
            started = time.monotonic()
            stop_at = started + LOAD_SECONDS
            await asyncio.gather(*workers)
            return _redis_now(clock) - on_redis

        workers = [asyncio.ensure_future(worker(i)) for i in range(CLIENTS)]
        window = await clock_window()
    assert stopped is not None
    return admitted, refused, other, window, stopped - started


async def test_several_processes_admit_what_the_policy_allows_and_no_more(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    env, key = api_environment(tmp_path, redis_url, database_url, TENANT)
    ports = [free_port() for _ in range(PROCESSES)]
    with ExitStack() as stack:
        processes = [
            stack.enter_context(
                tenantry_process(
                    ["api", "--port", str(port), "--check-port", str(free_port())],
                    env,
                    tmp_path,
                    tmp_path / f"api-{port}.log",
                )
            )
            for port in ports
        ]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, process in zip(urls, processes, strict=True):
            await asyncio.to_thread(wait_until_serving, url + "/livez", process)
        client = sync_client(redis_url)
        admitted, refused, other, window, sending = await _hammer(urls, key, client)

    params = gcra_params(1200, 300)
    # Upper bound: the whole window, from the start signal to the last answer. Lower bound:
    # only the time the clients were sending (answers still in flight may add to it).
    bound = params.max_admitted(int(window * 1_000_000))
    pushed = params.max_admitted(int(sending * 1_000_000))
    print(f"admitted {admitted} refused {refused} over {window:.2f}s, bounds {pushed}..{bound}")
    assert other == 0
    assert refused >= MIN_REFUSED
    assert admitted <= bound, f"admitted {admitted} > bound {bound} over {window:.2f}s"
    assert admitted >= 0.99 * pushed, f"admitted {admitted} < 99% of {pushed}"

    members: list[Any] = client.zrange(usage_index_key(TENANT), 0, -1)
    minutes = [int(member) for member in members]
    metered = sum(
        int(client.hget(usage_bucket_key(TENANT, minute), TOTAL_ROUTE) or 0) for minute in minutes
    )
    assert metered == admitted
