"""What the HTTP benchmarks share: serving an app of `bench.api_apps` in its own uvicorn
process, loading it with wrk, and reading what the run cost.

On a machine with two or more cores the servers run on one core and wrk on another, so the
servers do not compete with their load generator for a core; Redis is left to the scheduler
(on two cores, pinning it beside wrk starved it, and every variant that calls Redis paid for
the wait with smaller pipelined batches).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tenantry.sources.files import FileRegistrySource
from tests.harness.servers import PostgresProcess, RedisProcess, wait_for_port

PINNED = (os.cpu_count() or 1) >= 2
SERVER_CPUS = {1}  # the servers under test
LOAD_CPUS = {0}  # wrk


@contextmanager
def redis_and_postgres(work: Path) -> Iterator[tuple[RedisProcess, PostgresProcess]]:
    """A Redis and a PostgreSQL of the benchmark's own, removed afterwards."""
    redis = RedisProcess(work / "redis")
    postgres = PostgresProcess()
    redis.start()
    try:
        postgres.initialise()
        postgres.start()
        try:
            yield redis, postgres
        finally:
            postgres.stop()
            postgres.remove()
    finally:
        redis.remove()


def serve_tenants(
    work: Path, manifests: str, tenant_ids: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """Write `manifests` into `work` and issue their keys as the file source does: the
    environment that serves them, and the key `main` of each of `tenant_ids`."""
    path = work / "tenants.yaml"
    path.write_text(manifests)
    keys_file = work / "keys.json"
    states = FileRegistrySource(
        [path], platform_namespace="tenantry-system", keys_file=keys_file
    ).reconcile()
    env = {
        "TENANTRY_REGISTRY__MANIFESTS": f'["{path}"]',
        "TENANTRY_REGISTRY__KEYS_FILE": str(keys_file),
    }
    return env, [states.keys[tenant_id].keys["main"].plaintext for tenant_id in tenant_ids]


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float  # of the processes measured


def on_server_cpus() -> None:
    if PINNED:
        os.sched_setaffinity(0, SERVER_CPUS)


def _on_load_cpus() -> None:
    if PINNED:
        os.sched_setaffinity(0, LOAD_CPUS)


@contextmanager
def serve_app(
    factory: str, env: Mapping[str, str], port: int, *, without: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """`bench.api_apps:<factory>` in one uvicorn process (uvloop, httptools, no access log) on
    the server core, with `env` over this process's environment, less `without`."""
    environment = {k: v for k, v in {**os.environ, **env}.items() if k not in without}
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", f"bench.api_apps:{factory}", "--factory",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=on_server_cpus,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=20)


def measure(
    name: str,
    url: str,
    key: str | Sequence[str],
    seconds: int,
    connections: int,
    pids: Sequence[int],
) -> Result:
    """wrk against `url` (after a warm-up), and the CPU time the processes `pids` spent.
    Several keys are sent in turn, one per request."""
    _wrk(url, key, 2, connections)
    before = sum(_cpu_seconds(pid) for pid in pids)
    output = _wrk(url, key, seconds, connections)
    cpu = sum(_cpu_seconds(pid) for pid in pids) - before
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    served = re.search(r"(\d+) requests in", output)
    if rate is None or served is None:
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Result(
        name,
        float(rate[1]),
        _latency_ms(output, "50"),
        _latency_ms(output, "99"),
        int(errors[1]) if errors else 0,
        cpu * 1_000_000 / int(served[1]),
    )


def _wrk(url: str, key: str | Sequence[str], seconds: int, connections: int) -> str:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if isinstance(key, str):
            command += ["-H", f"X-API-Key: {key}"]
        else:
            script.write(ROTATING_KEYS.replace("KEYS", ", ".join(f'"{k}"' for k in key)))
            script.flush()
            command += ["-s", script.name]
        return subprocess.run(
            [*command, url], capture_output=True, text=True, check=True, preexec_fn=_on_load_cpus
        ).stdout


# A wrk script that sends the keys in turn, one per request.
ROTATING_KEYS = """
local keys = {KEYS}
local turn = 0
request = function()
  turn = turn % #keys + 1
  return wrk.format(nil, nil, {["X-API-Key"] = keys[turn]})
end
"""


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no {percentile}% latency:\n{text}")
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
