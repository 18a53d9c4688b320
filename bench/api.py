"""`make bench-api`: Tenantry's request path against bare FastAPI, slowapi and fastapi-limiter.

Each variant serves the same trivial authenticated route from one uvicorn process (uvloop,
httptools, no uvicorn access log), all against one local Redis, one after the other on this
machine, under the same wrk load. It prints requests/s, p50 and p99 latency per variant and
the ratios the goals are stated in: Tenantry vs bare FastAPI, and vs the faster peer.

    python -m bench.api [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.api_apps import PING_PATH
from tenantry.sources.files import FileRegistrySource
from tests.harness.servers import RedisProcess, free_port, wait_for_port

TENANT_MANIFESTS = """
apiVersion: tenantry.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench, namespace: tenantry-system}
spec:
  requestsPerMinute: 60000000
  burst: 1000000
  monthlyQuota: 1000000000000
  failureMode: closed
---
apiVersion: tenantry.io/v1alpha1
kind: ApiTenant
metadata: {name: bench, namespace: bench}
spec:
  displayName: Benchmark
  policyRef: {name: bench}
  keys: [{name: main}]
"""

VARIANTS = {
    "bare FastAPI": "bare",
    "slowapi (Redis)": "slowapi_app",
    "fastapi-limiter (Redis)": "fastapi_limiter_app",
    "Tenantry": "tenantry_app",
    "Tenantry, no access log": "tenantry_app",
    "Tenantry, no access log, no Redis": "tenantry_app",
}


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no {percentile}% latency:\n{text}")
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _wrk(url: str, key: str, seconds: int, connections: int) -> str:
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-H", f"X-API-Key: {key}", url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def run_variant(
    name: str, factory: str, env: dict[str, str], key: str, seconds: int, connections: int
) -> Result:
    port = free_port()
    variant_env = {**os.environ, **env}
    if name.startswith("Tenantry, no access log"):
        variant_env["TENANTRY_API__ACCESS_LOG"] = "false"
    if name.endswith("no Redis"):  # the in-process limiter of `tenantry dev`: Redis' share
        del variant_env["TENANTRY_REDIS_URL"]
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", f"bench.api_apps:{factory}", "--factory",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ],
        env=variant_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}{PING_PATH}"
        _wrk(url, key, 2, connections)  # warm up
        output = _wrk(url, key, seconds, connections)
    finally:
        server.terminate()
        server.wait(timeout=20)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Result(
        name,
        float(rate[1]),
        _latency_ms(output, "50"),
        _latency_ms(output, "99"),
        int(errors[1]) if errors else 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per variant")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-") as folder:
        work = Path(folder)
        redis = RedisProcess(work / "redis")
        redis.start()
        try:
            manifests = work / "tenants.yaml"
            manifests.write_text(TENANT_MANIFESTS)
            keys_file = work / "keys.json"
            source = FileRegistrySource(
                [manifests], platform_namespace="tenantry-system", keys_file=keys_file
            )
            key = source.reconcile().keys["bench/bench"].keys["main"].plaintext
            env = {
                "BENCH_REDIS_URL": redis.url,
                "TENANTRY_REDIS_URL": redis.url,
                "TENANTRY_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
                "TENANTRY_REGISTRY__MANIFESTS": f'["{manifests}"]',
                "TENANTRY_REGISTRY__KEYS_FILE": str(keys_file),
            }
            results = []
            for name, factory in VARIANTS.items():
                result = run_variant(name, factory, env, key, args.duration, args.connections)
                results.append(result)
                print(
                    f"{name:<34} {result.requests_per_second:>9.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"errors {result.errors}",
                    flush=True,
                )
        finally:
            redis.remove()
    report(results, args.duration, args.connections)


def report(results: list[Result], seconds: int, connections: int) -> None:
    by_name = {result.name: result for result in results}
    bare = by_name["bare FastAPI"]
    peer = max(
        (by_name["slowapi (Redis)"], by_name["fastapi-limiter (Redis)"]),
        key=lambda r: r.requests_per_second,
    )
    print(f"\nwrk -t1 -c{connections} -d{seconds}s, one uvicorn process per variant\n")
    print("| variant | req/s | p50 ms | p99 ms | req/s vs bare | p99 vs bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for result in results:
        print(
            f"| {result.name} | {result.requests_per_second:.0f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.requests_per_second / bare.requests_per_second:.2f} | "
            f"{result.p99_ms / bare.p99_ms:.2f} |"
        )
    for name in ("Tenantry", "Tenantry, no access log"):
        ours = by_name[name]
        print(
            f"\n{name}: {ours.requests_per_second / bare.requests_per_second:.0%} of bare "
            f"(goal >= 75%), {ours.requests_per_second / peer.requests_per_second:.2f}x the "
            f"faster peer, {peer.name} (goal >= 2x), p99 {ours.p99_ms / bare.p99_ms:.2f}x "
            "bare's (goal <= 1.5x)"
        )


if __name__ == "__main__":
    main()
