"""The gateway check behind a real Caddy: what asking Tenantry adds to every request.

Two set-ups serve the same upstream (bare FastAPI's trivial route, one uvicorn process) under
the same wrk load, one after the other, alternating:
- client → Caddy → upstream: Caddy alone, a plain `reverse_proxy`;
- client → Caddy → Tenantry's check → upstream: `examples/gateways/Caddyfile`, the tested
  configuration, asking the check (one uvicorn process serving it, Redis behind it) first.
Caddy, the check and the upstream share the server core; wrk runs on the other. Reported:
req/s of each and their ratio, the p50/p99 the check adds, and the CPU time per request of
the Python servers (the upstream, and the check).

`make bench-api` runs it after the API variants (`bench.api`), in the same run.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from bench.api_apps import PING_PATH
from bench.load import PINNED, SERVER_CPUS, Result, measure, serve_app
from tests.harness.gateways import CaddyGateway, Gateway, caddy_binary
from tests.harness.servers import free_port


@dataclass
class PlainCaddy(Gateway):
    """Caddy as a plain reverse proxy to the upstream: the baseline."""

    name: ClassVar[str] = "caddy (plain)"

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.base_dir / "Caddyfile"
        config.write_text(
            "{\n\tadmin off\n}\n"
            f"http://:{self.port} {{\n\tbind 127.0.0.1\n\treverse_proxy {self.upstream}\n}}\n"
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base_dir),
            "XDG_DATA_HOME": str(self.base_dir / "data"),
            "XDG_CONFIG_HOME": str(self.base_dir / "config"),
        }
        return [str(caddy_binary()), "run", "--config", str(config), "--adapter", "caddyfile"], env


@contextmanager
def _on_the_server_core(gateway: Gateway) -> Iterator[Gateway]:
    """Start `gateway` with its threads on the server core (they inherit the affinity)."""
    mask = os.sched_getaffinity(0)
    if PINNED:
        os.sched_setaffinity(0, SERVER_CPUS)
    try:
        gateway.start()
    finally:
        os.sched_setaffinity(0, mask)
    try:
        yield gateway
    finally:
        gateway.remove()


def through_caddy(
    env: dict[str, str], key: str, seconds: int, connections: int, rounds: int
) -> list[tuple[Result, Result]]:
    """`rounds` pairs of (Caddy alone, Caddy asking the check), each pair back to back."""
    upstream_port, check_port = free_port(), free_port()
    check_env = {**env, "TENANTRY_API__CHECK_PORT": str(check_port)}
    pairs = []
    with (
        serve_app("bare", env, upstream_port) as upstream,
        serve_app("tenantry_check_app", check_env, check_port) as check,
    ):
        upstream_address = f"127.0.0.1:{upstream_port}"
        for number in range(1, rounds + 1):
            with _on_the_server_core(PlainCaddy("-", upstream_address)) as plain:
                alone = measure(
                    "Caddy → upstream",
                    plain.url + PING_PATH,
                    key,
                    seconds,
                    connections,
                    [upstream.pid],
                )
            checked_by = CaddyGateway(f"127.0.0.1:{check_port}", upstream_address)
            with _on_the_server_core(checked_by) as gateway:
                checked = measure(
                    "Caddy → Tenantry check → upstream",
                    gateway.url + PING_PATH,
                    key,
                    seconds,
                    connections,
                    [upstream.pid, check.pid],
                )
            for result in (alone, checked):
                print(
                    f"  round {number}: {result.name:<36} {result.requests_per_second:>7.0f} "
                    f"req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"errors {result.errors}",
                    flush=True,
                )
            pairs.append((alone, checked))
    return pairs


def report(pairs: list[tuple[Result, Result]], seconds: int, connections: int) -> None:
    print(f"\nThrough Caddy: wrk -t1 -c{connections} -d{seconds}s, {len(pairs)} pairs\n")
    print(
        "| round | Caddy → upstream req/s, p50, p99 | with the check req/s, p50, p99 | ratio "
        "| added p50 ms | added p99 ms | Python CPU µs/req: upstream; upstream + check |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for number, (alone, checked) in enumerate(pairs, 1):
        print(
            f"| {number} | {alone.requests_per_second:.0f}, {alone.p50_ms:.2f}, "
            f"{alone.p99_ms:.2f} | {checked.requests_per_second:.0f}, {checked.p50_ms:.2f}, "
            f"{checked.p99_ms:.2f} "
            f"| {checked.requests_per_second / alone.requests_per_second:.2f} "
            f"| {checked.p50_ms - alone.p50_ms:+.2f} | {checked.p99_ms - alone.p99_ms:+.2f} "
            f"| {alone.cpu_us_per_request:.0f}; {checked.cpu_us_per_request:.0f} |"
        )
    ratios = [c.requests_per_second / a.requests_per_second for a, c in pairs]
    print(f"\nmedian ratio {statistics.median(ratios):.2f} of Caddy alone's req/s")
