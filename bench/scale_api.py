"""`python -m bench.scale_api`: the real `tenantry api` with 1, 2 and 4 processes per pod.

The same authenticated route (`GET /v1/limits`, with an API key: admission, one Redis script
call, the response headers) served by `tenantry api --workers N` against a real Redis and
PostgreSQL the bench starts, under the same wrk load (`bench.load`), one process count after
the other. It prints requests/s, p50 and p99 latency and the CPU time per request of the
whole process tree (the supervisor and its workers, from /proc, over the measured run).

The API's processes are left to the scheduler on every core (pinning them to one, as
`bench.api` does for a single process, would measure nothing of the scaling); wrk stays on
its own core as in `bench.load`, so on a two-core machine the processes share the other core
with wrk's and Redis' spare time. The access log is off: what scales is the request path.
The curve is reported, not judged.

    python -m bench.scale_api [--workers 1 2 4] [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.api import TENANT_MANIFESTS
from bench.load import PINNED, Result, measure, redis_and_postgres, serve_tenants
from tenantry.api.metrics import tally_files
from tenantry.db.migrate import upgrade
from tests.api.servers import tenantry_process, wait_until_serving
from tests.harness.servers import free_port


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (the supervisor and its workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += process_tree(int(child))
    return found


def run(
    workers: int, work: Path, env: dict[str, str], key: str, seconds: int, connections: int
) -> Result:
    port = free_port()
    args = ["api", "--workers", str(workers), "--port", str(port), "--check-port", str(free_port())]
    metrics = work / f"metrics-{workers}"
    process_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    with tenantry_process(args, process_env, work, work / f"api-{workers}.log") as server:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url + "/readyz", server, timeout=60)
        # One process serves; the others have at least built their apps once their tallies
        # exist, and start within wrk's warm-up.
        deadline = time.monotonic() + 60
        while workers > 1 and len(tally_files(metrics)) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} processes did not all start")
            time.sleep(0.1)
        name = f"{workers} process{'es' if workers > 1 else ''}"
        return measure(
            name, url + "/v1/limits", key, seconds, connections, process_tree(server.pid)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per count")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-") as folder:
        work = Path(folder)
        with redis_and_postgres(work) as (redis, postgres):
            upgrade(postgres.url)
            env, (key,) = serve_tenants(work, TENANT_MANIFESTS, ["bench/bench"])
            env |= {
                "TENANTRY_REDIS_URL": redis.url,
                "TENANTRY_DATABASE_URL": postgres.url,
                "TENANTRY_API__ACCESS_LOG": "false",
                "TENANTRY_LOG_LEVEL": "warning",
            }
            results = []
            for workers in args.workers:
                result = run(workers, work, env, key, args.duration, args.connections)
                print(
                    f"  {result.name:<12} {result.requests_per_second:>8.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"CPU {result.cpu_us_per_request:5.0f} us/req  errors {result.errors}",
                    flush=True,
                )
                results.append(result)
    report(results, args.duration, args.connections)


def report(results: list[Result], seconds: int, connections: int) -> None:
    pinning = "wrk on one core, the API's processes on any" if PINNED else "not pinned"
    print(
        f"\n`tenantry api --workers N`, GET /v1/limits with a key, wrk -t1 -c{connections} "
        f"-d{seconds}s, {pinning}\n"
    )
    print("| processes | req/s | vs 1 | p50 ms | p99 ms | CPU µs/req (whole tree) | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = results[0].requests_per_second
    for result in results:
        print(
            f"| {result.name} | {result.requests_per_second:.0f} | "
            f"{result.requests_per_second / base:.2f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.cpu_us_per_request:.0f} | {result.errors} |"
        )


if __name__ == "__main__":
    main()
