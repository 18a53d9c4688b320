"""`make bench-api`: Tenantry's request path against bare FastAPI, slowapi and fastapi-limiter.

Each variant serves the same trivial authenticated route from one uvicorn process (uvloop,
httptools, no uvicorn access log), all against one local Redis, one after the other on this
machine, under the same wrk load. It prints requests/s, p50 and p99 latency and the server's
CPU time per request (user + system time of the uvicorn process over the measured run,
divided by the requests it served: steadier than req/s on a shared machine) per variant, and
the ratios the goals are stated in: Tenantry vs bare FastAPI, and vs the faster peer. With
`--rounds N` every variant is measured N times and each round is reported. Bare FastAPI is
measured between each two variants, and every ratio is against the bare runs just before and
after the variant: the machine's speed drifts over a round.

The servers run on one core and wrk on another (`bench.load`). After the variants, the
check is measured behind a real Caddy (`bench.gateway`).

    python -m bench.api [--duration 10] [--connections 64] [--rounds 1]
    python -m bench.api --pairs 8 --duration 3     # the CPU ratio, from alternating runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench import gateway
from bench.api_apps import PING_PATH
from bench.load import PINNED, Result, measure, serve_app, serve_tenants
from tests.harness.servers import RedisProcess, free_port

# A tier no load reaches the limits of.
BENCH_TIER = """
apiVersion: tenantry.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench, namespace: tenantry-system}
spec:
  requestsPerMinute: 60000000
  burst: 1000000
  monthlyQuota: 1000000000000
  failureMode: closed
"""
TENANT_MANIFESTS = (
    BENCH_TIER
    + """---
apiVersion: tenantry.io/v1alpha1
kind: ApiTenant
metadata: {name: bench, namespace: bench}
spec:
  displayName: Benchmark
  policyRef: {name: bench}
  keys: [{name: main}]
---
apiVersion: tenantry.io/v1alpha1
kind: ApiProduct
metadata: {name: bench, namespace: tenantry-system}
spec:
  routes:
    - {method: GET, path: /v1/ping, scopes: ["bench:read"]}
"""
)

NO_ACCESS_LOG: dict[str, str | None] = {"TENANTRY_API__ACCESS_LOG": "false"}


@dataclass(frozen=True)
class Goal:
    """What a variant must reach against bare FastAPI (and the faster peer) in the same run."""

    rate: float  # at least this share of bare's req/s
    p99: float  # at most this multiple of bare's p99
    cpu: float  # at most this multiple of bare's CPU time per request
    peer: float = 2.0  # at least this multiple of the faster peer's req/s

    def describe(self, entry: Measured, peer: Measured) -> str:
        rate = entry.ratio("requests_per_second")
        return (
            f"{rate:.0%} of bare (goal >= {self.rate:.0%}), "
            f"{rate / peer.ratio('requests_per_second'):.2f}x the faster peer, "
            f"{peer.result.name} (goal >= {self.peer:g}x), p99 {entry.ratio('p99_ms'):.2f}x "
            f"bare's (goal <= {self.p99:g}x), CPU per request "
            f"{entry.ratio('cpu_us_per_request'):.2f}x bare's (goal <= {self.cpu:g}x)"
        )


ROUTE_GOAL = Goal(rate=0.75, p99=1.5, cpu=1.33)
# The check does less than a FastAPI route (no routing through FastAPI, no body): it must
# decide at least as fast as bare FastAPI answers its trivial route.
CHECK_GOAL = Goal(rate=1.0, p99=1.0, cpu=1.0)


@dataclass(frozen=True)
class Variant:
    name: str
    factory: str  # in bench.api_apps
    env: dict[str, str | None] = field(default_factory=dict)  # None removes a variable
    path: str = PING_PATH  # what wrk asks for
    port_env: str | None = None  # a variable set to the port the app is served on
    goal: Goal | None = None


VARIANTS = (
    Variant("bare FastAPI", "bare"),
    Variant("slowapi (Redis)", "slowapi_app"),
    Variant("fastapi-limiter (Redis)", "fastapi_limiter_app"),
    Variant("Tenantry", "tenantry_app", goal=ROUTE_GOAL),
    Variant("Tenantry, no access log", "tenantry_app", NO_ACCESS_LOG, goal=ROUTE_GOAL),
    # The in-process limiter of `tenantry dev`: what Redis costs.
    Variant(
        "Tenantry, no access log, no Redis",
        "tenantry_app",
        {**NO_ACCESS_LOG, "TENANTRY_REDIS_URL": None},
    ),
    # The handler reads the admitted caller: FastAPI's cost of one dependency.
    Variant("Tenantry, handler takes `caller: Caller`", "tenantry_caller_app"),
    # The route a plug-in serves: its router, a scope of its own, the handler reading the caller.
    Variant("Tenantry, plug-in route", "tenantry_plugin_app", goal=ROUTE_GOAL),
    # The limiter's script calls on redis-py's asyncio client instead of the pipelined one.
    Variant("Tenantry, limiter on redis-py", "tenantry_redis_py_app"),
    # The gateway check: a decision for the route the bench product lists, with no body.
    Variant(
        "Tenantry gateway check",
        "tenantry_check_app",
        path="/authz" + PING_PATH,
        port_env="TENANTRY_API__CHECK_PORT",
        goal=CHECK_GOAL,
    ),
)


def run_variant(
    variant: Variant, env: dict[str, str], key: str, seconds: int, connections: int
) -> Result:
    port = free_port()
    variant_env = dict(env)
    removed = [name for name, value in variant.env.items() if value is None]
    variant_env |= {name: value for name, value in variant.env.items() if value is not None}
    if variant.port_env is not None:
        variant_env[variant.port_env] = str(port)
    with serve_app(variant.factory, variant_env, port, without=removed) as server:
        url = f"http://127.0.0.1:{port}{variant.path}"
        return measure(variant.name, url, key, seconds, connections, [server.pid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per variant")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="measure every variant N times")
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="instead: N runs of bare FastAPI and Tenantry's path, alternating, for the CPU ratio",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-") as folder:
        work = Path(folder)
        redis = RedisProcess(work / "redis")
        redis.start()
        try:
            env, (key,) = serve_tenants(work, TENANT_MANIFESTS, ["bench/bench"])
            env |= {
                "BENCH_REDIS_URL": redis.url,
                "TENANTRY_REDIS_URL": redis.url,
                "TENANTRY_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
            }
            if args.pairs:
                _pairs(args.pairs, env, key, args.duration, args.connections)
                return
            rounds = []
            for number in range(1, args.rounds + 1):
                print(f"round {number} of {args.rounds}", flush=True)
                rounds.append(_round(env, key, args.duration, args.connections))
            print("through Caddy", flush=True)
            caddy = gateway.through_caddy(
                env, key, args.duration, args.connections, max(args.rounds, 3)
            )
        finally:
            redis.remove()
    for number, measured in enumerate(rounds, 1):
        print(f"\n## round {number} of {len(rounds)}")
        report(measured, args.duration, args.connections)
    gateway.report(caddy, args.duration, args.connections)


@dataclass
class Measured:
    """A variant's result beside bare FastAPI's, measured just before and just after it."""

    result: Result
    bare: Result  # the mean of the two bare runs around it

    def ratio(self, field_name: str) -> float:
        return float(getattr(self.result, field_name)) / float(getattr(self.bare, field_name))


def _round(env: dict[str, str], key: str, seconds: int, connections: int) -> list[Measured]:
    """Every variant once, with bare FastAPI measured between each two: the machine's speed
    drifts within a round, so each variant is compared with the bare runs around it."""

    def measure(variant: Variant) -> Result:
        result = run_variant(variant, env, key, seconds, connections)
        print(
            f"  {variant.name:<42} {result.requests_per_second:>9.0f} req/s  "
            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
            f"CPU {result.cpu_us_per_request:5.1f} us/req  errors {result.errors}",
            flush=True,
        )
        return result

    bare_variant, *others = VARIANTS
    before = measure(bare_variant)
    measured = []
    for variant in others:
        result = measure(variant)
        after = measure(bare_variant)
        measured.append(Measured(result, _mean(before, after)))
        before = after
    return measured


def _pairs(count: int, env: dict[str, str], key: str, seconds: int, connections: int) -> None:
    """The steadiest figure on a noisy machine: short runs of bare FastAPI and each goal
    variant back to back, and the median of the per-pair ratios."""
    bare, *_ = VARIANTS
    goals = [variant for variant in VARIANTS if variant.goal is not None]
    ratios: dict[str, list[tuple[float, float]]] = {variant.name: [] for variant in goals}
    for number in range(1, count + 1):
        for variant in goals:
            base = run_variant(bare, env, key, seconds, connections)
            ours = run_variant(variant, env, key, seconds, connections)
            ratios[variant.name].append(
                (
                    ours.cpu_us_per_request / base.cpu_us_per_request,
                    ours.requests_per_second / base.requests_per_second,
                )
            )
            print(
                f"  pair {number}: {variant.name}: CPU {ours.cpu_us_per_request:.0f} vs "
                f"{base.cpu_us_per_request:.0f} us/req, {ours.requests_per_second:.0f} vs "
                f"{base.requests_per_second:.0f} req/s",
                flush=True,
            )
    print(f"\n{count} pairs of wrk -t1 -c{connections} -d{seconds}s runs, bare FastAPI first:")
    for variant in goals:
        assert variant.goal is not None
        pairs = ratios[variant.name]
        cpu = sorted(ratio for ratio, _ in pairs)
        rate = sorted(rate for _, rate in pairs)
        print(
            f"{variant.name}: CPU per request {statistics.median(cpu):.2f}x bare's "
            f"(pairs {cpu[0]:.2f}-{cpu[-1]:.2f}; goal <= {variant.goal.cpu:g}x), "
            f"{statistics.median(rate):.0%} of bare's req/s (pairs {rate[0]:.0%}-{rate[-1]:.0%}; "
            f"goal >= {variant.goal.rate:.0%})"
        )


def _mean(first: Result, second: Result) -> Result:
    return Result(
        first.name,
        (first.requests_per_second + second.requests_per_second) / 2,
        (first.p50_ms + second.p50_ms) / 2,
        (first.p99_ms + second.p99_ms) / 2,
        first.errors + second.errors,
        (first.cpu_us_per_request + second.cpu_us_per_request) / 2,
    )


def report(measured: list[Measured], seconds: int, connections: int) -> None:
    by_name = {entry.result.name: entry for entry in measured}
    peer = max(
        (by_name["slowapi (Redis)"], by_name["fastapi-limiter (Redis)"]),
        key=lambda entry: entry.ratio("requests_per_second"),
    )
    pinning = "server and wrk on a core each, Redis unpinned" if PINNED else "not pinned"
    print(f"\nwrk -t1 -c{connections} -d{seconds}s, one uvicorn process per variant, {pinning}")
    print("(each variant against bare FastAPI measured just before and after it)\n")
    print(
        "| variant | req/s | p50 ms | p99 ms | CPU µs/req | bare's req/s, CPU µs/req "
        "| req/s vs bare | p99 vs bare | CPU vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for entry in measured:
        result, bare = entry.result, entry.bare
        print(
            f"| {result.name} | {result.requests_per_second:.0f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.cpu_us_per_request:.0f} | "
            f"{bare.requests_per_second:.0f}, {bare.cpu_us_per_request:.0f} | "
            f"{entry.ratio('requests_per_second'):.2f} | {entry.ratio('p99_ms'):.2f} | "
            f"{entry.ratio('cpu_us_per_request'):.2f} |"
        )
    for variant in VARIANTS:
        if variant.goal is not None:
            print(f"\n{variant.name}: {variant.goal.describe(by_name[variant.name], peer)}")


if __name__ == "__main__":
    main()
