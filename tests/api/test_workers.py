"""Several API processes in one pod (`tenantry api --workers 2`), as real processes.

One `/metrics` sums every process whichever answers the scrape, and a restart does not add
the samples of the previous one; SIGTERM to the supervisor alone (as Kubernetes sends it)
drains every process: a request in flight is answered, and reports the readiness the
draining process has, then every process exits and the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenantry.api.metrics import TallyFile, read_tallies, tally_files
from tests.api.conftest import auth
from tests.api.servers import api_environment, tenantry_process, wait_until_serving
from tests.harness.servers import RedisProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TENANT = "team-t/open"  # tier `roomy`: far more than these tests send
CLIENTS = 8


@contextmanager
def api_workers(
    tmp_path: Path, redis_url: str, database_url: str, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes], str, Path]]:
    """`tenantry api --workers 2`, serving: its URL, process, a tenant's key and the pod's
    metrics folder."""
    env, key = api_environment(tmp_path, redis_url, database_url, TENANT)
    folder = tmp_path / "metrics"
    env |= {"PROMETHEUS_MULTIPROC_DIR": str(folder), **settings}
    port = free_port()
    args = ["api", "--workers", "2", "--port", str(port), "--check-port", str(free_port())]
    with tenantry_process(args, env, tmp_path, tmp_path / "api.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url + "/readyz", process)
        yield url, process, key, folder


def _served(folder: Path, pid: int, route: str) -> float:
    """Requests one process answered on `route`, from its own tallies."""
    counts = read_tallies(tally_files(folder, pid), "tenantry_api_requests")
    return sum(cell[0] for (_, template, _), cell in counts.items() if template == route)


def _serving_pids(folder: Path) -> set[int]:
    return {int(path.name.split("_")[1]) for path in tally_files(folder)}


async def _until(condition: Callable[[], bool], action: Callable[[], object], what: str) -> None:
    """Repeat `action` until `condition` holds."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        result = action()
        if asyncio.iscoroutine(result):
            await result


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_sum_every_process_whichever_answers_the_scrape(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    stale = TallyFile(folder)  # a previous container's process, in the same emptyDir
    stale.cell("tenantry_api_requests", ("GET", "/v1/limits", "2xx"), 1)[0] += 1000

    with api_workers(tmp_path, redis_url, database_url) as (url, _process, key, folder):
        sent = 0
        # No keep-alive: every request is a new connection, which either process may accept.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

            async def send_round() -> None:
                nonlocal sent
                answers = await asyncio.gather(
                    *(client.get("/v1/limits", headers=auth(key)) for _ in range(CLIENTS))
                )
                assert [answer.status_code for answer in answers] == [200] * CLIENTS
                sent += CLIENTS

            def both_served(route: str) -> bool:
                pids = _serving_pids(folder)
                return len(pids) == 2 and all(_served(folder, pid, route) > 0 for pid in pids)

            await _until(lambda: both_served("/v1/limits"), send_round, "both processes served")

            scrapes: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []

            async def scrape() -> None:
                response = await client.get("/metrics")
                assert response.status_code == 200
                scrapes.append(_samples(response.text))

            await _until(lambda: both_served("/metrics"), scrape, "both processes scraped")

    route = (("method", "GET"), ("route", "/v1/limits"))
    allowed = (("decision", "allowed"), ("source", "redis"))
    for samples in scrapes:
        assert samples[("tenantry_api_requests_total", (*route, ("status_class", "2xx")))] == sent
        assert samples[("tenantry_api_request_duration_seconds_count", route)] == sent
        assert samples[("tenantry_api_limiter_decisions_total", allowed)] == sent
        assert samples[("tenantry_api_registry_tenants", ())] == 7  # one series, not one per pid
        assert samples[("tenantry_api_usage_held_locally", ())] == 0


def _unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet on one loopback connection (`/proc/net/tcp`)."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    return None


def _children(pid: int) -> set[int]:
    """A process's children, and theirs."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found |= {int(child), *_children(int(child))}
    return found


def _wait_until_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 30
    while alive := {pid for pid in pids if Path(f"/proc/{pid}").exists()}:
        assert time.monotonic() < deadline, f"processes {alive} did not exit"
        time.sleep(0.05)


def test_sigterm_drains_every_process_and_exits_zero(
    tmp_path: Path, own_redis: RedisProcess, database_url: str
) -> None:
    settings = {
        # Redis hung holds `/readyz` on its Redis check this long: the request in flight.
        "TENANTRY_API__PROBE_TIMEOUT_SECONDS": "5",
        "TENANTRY_REDIS_TIMEOUT_SECONDS": "5",
    }
    with api_workers(tmp_path, own_redis.url, database_url, **settings) as (url, process, *_):
        children = _children(process.pid)
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/livez")  # one process accepts the connection
        assert connection.getresponse().read()
        with own_redis.hung():
            connection.request("GET", "/readyz")
            client_port = connection.sock.getsockname()[1]
            deadline = time.monotonic() + 10
            while _unread_bytes(port, client_port) != 0:  # the process has read the request
                assert time.monotonic() < deadline, "the request was never read"
                time.sleep(0.01)
            os.kill(process.pid, signal.SIGTERM)  # the supervisor only, as Kubernetes does
            response = connection.getresponse()
            body = json.loads(response.read())
        assert response.status == 503
        assert body["checks"]["shutdown"] == {"ok": False}
        assert process.wait(timeout=60) == 0
        _wait_until_gone(children)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_a_replaced_process_leaves_the_live_gauges_and_keeps_its_counts(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    with api_workers(tmp_path, redis_url, database_url) as (url, process, key, folder):
        deadline = time.monotonic() + 60
        while len(workers := _children(process.pid) & _serving_pids(folder)) < 2:
            assert time.monotonic() < deadline, "two processes never started"
            time.sleep(0.05)
        victim = min(workers)
        live_gauges = folder / f"gauge_livesum_{victim}.db"
        while not live_gauges.exists():  # each process writes its gauges every second
            assert time.monotonic() < deadline, "the process never wrote its gauges"
            time.sleep(0.05)
        served = 0
        while _served(folder, victim, "/v1/limits") == 0:  # until the victim served some
            with httpx.Client(base_url=url) as client:
                assert client.get("/v1/limits", headers=auth(key)).status_code == 200
            served += 1
            assert time.monotonic() < deadline, "the process never served"
        os.kill(victim, signal.SIGKILL)  # no chance to tidy up after itself
        while victim in _children(process.pid) or len(_serving_pids(folder) - {victim}) < 2:
            assert time.monotonic() < deadline, "the process was never replaced"
            time.sleep(0.05)
        while live_gauges.exists():
            assert time.monotonic() < deadline, "the dead process's live gauges stayed"
            time.sleep(0.05)
        assert _served(folder, victim, "/v1/limits") > 0  # its counts still add up
        response = httpx.get(url + "/metrics")
        route = (("method", "GET"), ("route", "/v1/limits"), ("status_class", "2xx"))
        assert _samples(response.text)[("tenantry_api_requests_total", route)] == served


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_app_that_cannot_be_built_stops_the_start_with_status_3(
    tmp_path: Path, workers: str
) -> None:
    args = ["api", "--workers", workers, "--port", str(free_port())]
    env = {"TENANTRY_DATABASE_URL": "nonsense://nowhere"}
    with tenantry_process(
        [*args, "--check-port", str(free_port())], env, tmp_path, tmp_path / "api.log"
    ) as process:
        # Not a restart loop: the supervisor gives up once a process could not start.
        assert process.wait(timeout=60) == 3
    assert '"event": "api_not_built"' in (tmp_path / "api.log").read_text()
