"""Redis Cluster against one Redis: the limiter path of one API process on each.

The same app (`bench.api_apps:tenantry_app`, Tenantry's full path on an authenticated route:
key, GCRA, quota and usage in one script call) is served from one uvicorn process, against one
local Redis and then against a local Redis Cluster of three masters with a replica each, under
the same wrk load. The load calls as three tenants in turn, chosen so that on the cluster each
lands on a different master: the API then keeps one pipelined connection per master and splits
its batches three ways, which is what routing by slot costs. Runs alternate between the two,
and each cluster run is compared with the one-Redis runs just before and after it (the
machine's speed drifts). The goal: cluster routing costs at most 10% more CPU per request.

    python -m bench.scale_redis [--duration 10] [--connections 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from redis.crc import key_slot

from bench.api import BENCH_TIER
from bench.api_apps import PING_PATH
from bench.load import Result, measure, serve_app, serve_tenants
from tenantry.contract.usage import limiter_key
from tests.harness.redis_cluster import RedisCluster
from tests.harness.servers import RedisProcess, free_port

CPU_GOAL = 1.10  # cluster CPU per request, at most this multiple of one Redis's
TENANT = """
---
apiVersion: tenantry.io/v1alpha1
kind: ApiTenant
metadata: {{name: {name}, namespace: bench}}
spec:
  displayName: {name}
  policyRef: {{name: bench}}
  keys: [{{name: main}}]
"""


def tenants_on_every_master(cluster: RedisCluster) -> list[str]:
    """One tenant name per master of `cluster`."""
    names: list[str] = []
    for ranges in cluster.masters().values():
        index = 0
        while True:
            name = f"load-{index}"
            slot = key_slot(limiter_key(f"bench/{name}").encode())
            if name not in names and any(start <= slot <= end for start, end in ranges):
                names.append(name)
                break
            index += 1
    return names


def run(
    redis_url: str, env: dict[str, str], keys: Sequence[str], seconds: int, connections: int
) -> Result:
    port = free_port()
    with serve_app("tenantry_app", env | {"TENANTRY_REDIS_URL": redis_url}, port) as server:
        url = f"http://127.0.0.1:{port}{PING_PATH}"
        return measure("", url, keys, seconds, connections, [server.pid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-") as folder:
        work = Path(folder)
        single = RedisProcess(work / "redis")
        cluster = RedisCluster(work / "cluster", with_tls=False)
        single.start()
        cluster.start()
        try:
            names = tenants_on_every_master(cluster)
            manifests = BENCH_TIER + "".join(TENANT.format(name=n) for n in names)
            env, keys = serve_tenants(work, manifests, [f"bench/{name}" for name in names])
            env |= {
                "TENANTRY_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
                "TENANTRY_API__ACCESS_LOG": "false",
                "TENANTRY_LOG_LEVEL": "warning",
            }
            rows = []
            before = run(single.url, env, keys, args.duration, args.connections)
            for number in range(1, args.rounds + 1):
                print(f"round {number} of {args.rounds}", flush=True)
                on_cluster = run(cluster.url, env, keys, args.duration, args.connections)
                after = run(single.url, env, keys, args.duration, args.connections)
                rows.append((before, on_cluster, after))
                before = after
        finally:
            cluster.remove()
            single.remove()
    report(rows, args.duration, args.connections)


def report(rows: list[tuple[Result, Result, Result]], seconds: int, connections: int) -> None:
    print(
        f"\nRedis Cluster (3 masters) against one Redis, one API process, {connections} "
        f"connections, {seconds}s a run, three tenants one per master, in turn\n"
    )
    print("| round | one Redis req/s | cluster req/s | one Redis CPU µs/req | cluster CPU µs/req "
          "| cluster ÷ one, CPU | cluster ÷ one, req/s | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    cpu_ratios = []
    for number, (before, on_cluster, after) in enumerate(rows, 1):
        one_rate = (before.requests_per_second + after.requests_per_second) / 2
        one_cpu = (before.cpu_us_per_request + after.cpu_us_per_request) / 2
        cpu_ratio = on_cluster.cpu_us_per_request / one_cpu
        cpu_ratios.append(cpu_ratio)
        errors = before.errors + on_cluster.errors + after.errors
        print(
            f"| {number} | {one_rate:,.0f} | {on_cluster.requests_per_second:,.0f} "
            f"| {one_cpu:.0f} | {on_cluster.cpu_us_per_request:.0f} | {cpu_ratio:.2f} "
            f"| {on_cluster.requests_per_second / one_rate:.2f} | {errors} |"
        )
    median = statistics.median(cpu_ratios)
    verdict = "met" if median <= CPU_GOAL else "NOT met"
    print(f"\nmedian CPU ratio {median:.2f} (goal ≤ {CPU_GOAL:.2f}): {verdict}")


if __name__ == "__main__":
    main()
