"""`make bench-operator`: the operator at scale against the Kubernetes API emulator.

1. From empty to all Ready for 1,000 tenants across 3 policies: wall time, and the API
   calls the operator made per tenant (from the emulator's request log).
2. Grown to 10,000 tenants: the operator's peak memory (VmHWM of its own process), the
   registry's shard count and largest shard.
3. The API's side of that registry: the memory the decoded snapshot takes in a fresh process
   and the time of one key lookup.

The operator runs as `tenantry operator` in a process of its own (so its memory is its own),
the emulator in this one. Usage:
`python -m bench.operator [--tenants 1000] [--grow-to 10000] [--shards 1024]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

from tenantry.operator import desired
from tests.operator.conftest import write_kubeconfig
from tests.operator.emulator import Emulator, declare_resources

PLATFORM_NS = "tenantry-system"
TENANT_NS = "tenants"
POLICIES = {
    "free": {"requestsPerMinute": 60, "burst": 10, "monthlyQuota": 10000},
    "standard": {"requestsPerMinute": 600, "burst": 50, "reservedRequestsPerSecond": 0.5},
    "enterprise": {"requestsPerMinute": 6000, "burst": 500, "reservedRequestsPerSecond": 5},
}
OPERATOR_AGENTS = ("kopf/", "tenantry-operator")

API_PROBE = """
import json, sys, time, random
from tenantry.contract.registry import Registry
def rss_kib():  # current RSS; ru_maxrss would carry the forking parent's peak
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
shards = json.load(open(sys.argv[1]))
before = rss_kib()
started = time.perf_counter()
registry = Registry.decode(shards)
load_s = time.perf_counter() - started
after = rss_kib()
ids = list(registry.by_key_id)
probes = [random.choice(ids) for _ in range(200_000)]
started = time.perf_counter()
for key_id in probes:
    registry.lookup(key_id)
lookup_ns = (time.perf_counter() - started) / len(probes) * 1e9
print(json.dumps({"tenants": len(registry.tenants), "keys": len(ids), "load_s": load_s,
                  "rss_mib_before": before / 1024, "rss_mib_after": after / 1024,
                  "lookup_ns": lookup_ns}))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tenant(index: int) -> dict[str, Any]:
    tier = list(POLICIES)[index % len(POLICIES)]
    return {
        "apiVersion": "tenantry.io/v1alpha1",
        "kind": "ApiTenant",
        "metadata": {
            "name": f"tenant-{index:05d}",
            "namespace": TENANT_NS,
            "uid": f"uid-{index}",
            "generation": 1,
        },
        "spec": {
            "displayName": f"Tenant {index}",
            "policyRef": {"name": tier},
            "keys": [{"name": "production"}, {"name": "ci", "scopes": ["jobs:read"]}],
        },
    }


def ready_count(emulator: kmock.KubernetesEmulator) -> int:
    count = 0
    for (resource, _, _), obj in list(emulator.objects.items()):
        if resource.plural != "apitenants" or obj.deleted:
            continue
        conditions = (obj.last.raw.get("status") or {}).get("conditions") or []
        count += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return count


async def create_all(emulator: kmock.KubernetesEmulator, bodies: list[dict[str, Any]]) -> None:
    gate = asyncio.Semaphore(32)

    async def create(body: dict[str, Any]) -> None:
        namespace = body["metadata"]["namespace"]
        plural = "apitenants" if body["kind"] == "ApiTenant" else "ratelimitpolicies"
        async with gate:
            response = await emulator.post(
                f"/apis/tenantry.io/v1alpha1/namespaces/{namespace}/{plural}",
                json=body,
                headers={"User-Agent": "bench"},
            )
            response.release()

    await asyncio.gather(*(create(body) for body in bodies))


async def until_ready(emulator: kmock.KubernetesEmulator, expected: int, limit: float) -> float:
    started = time.monotonic()
    while ready_count(emulator) < expected:
        if time.monotonic() - started > limit:
            raise SystemExit(f"only {ready_count(emulator)}/{expected} Ready after {limit}s")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


def operator_calls(emulator: Emulator) -> int:
    return sum(
        count
        for agent, count in emulator.calls_by_agent.items()
        if agent.startswith(OPERATOR_AGENTS)
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def registry_shards(emulator: kmock.KubernetesEmulator) -> dict[str, dict[str, str]]:
    shards = {}
    for (resource, namespace, name), obj in list(emulator.objects.items()):
        if resource.plural == "secrets" and namespace == PLATFORM_NS and not obj.deleted:
            raw = obj.last.raw
            if "tenantry.io/registry" in ((raw.get("metadata") or {}).get("labels") or {}):
                shards[name] = desired.secret_strings(raw)
    return shards


async def main(tenants: int, grow_to: int) -> dict[str, Any]:
    results: dict[str, Any] = {"tenants": tenants, "grown_to": grow_to}
    async with Emulator() as emulator, kmock.Server(emulator):
        declare_resources(emulator)
        emulator.request_log_limit = 100
        workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", str(emulator.url))
        env = os.environ | {
            "KUBECONFIG": str(kubeconfig),
            "TENANTRY_PLATFORM_NAMESPACE": PLATFORM_NS,
            "TENANTRY_LOG_LEVEL": "warning",
            "TENANTRY_OPERATOR__STANDALONE": "true",
            "TENANTRY_OPERATOR__NAMESPACES": json.dumps([PLATFORM_NS, TENANT_NS]),
            "TENANTRY_OPERATOR__METRICS_PORT": str(free_port()),
            "TENANTRY_OPERATOR__LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        }
        operator = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited
            [str(Path(sys.executable).parent / "tenantry"), "operator"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(3)  # the operator's start-up; nothing to await before it lists
            policies = [
                {
                    "apiVersion": "tenantry.io/v1alpha1",
                    "kind": "RateLimitPolicy",
                    "metadata": {
                        "name": name,
                        "namespace": PLATFORM_NS,
                        "uid": name,
                        "generation": 1,
                    },
                    "spec": spec,
                }
                for name, spec in POLICIES.items()
            ]
            await create_all(emulator, policies)
            mark = operator_calls(emulator)
            started = time.monotonic()
            await create_all(emulator, [tenant(i) for i in range(tenants)])
            await until_ready(emulator, tenants, limit=600)
            results["ready_seconds"] = round(time.monotonic() - started, 1)
            print(f"{tenants} Ready in {results['ready_seconds']} s", file=sys.stderr)
            await asyncio.sleep(2)  # let Kopf's bookkeeping after the last status settle
            calls = operator_calls(emulator) - mark
            results["operator_calls_per_tenant"] = round(calls / tenants, 2)
            results["operator_rss_mib_at_first"] = round(peak_rss_mib(operator.pid), 1)
            print(json.dumps(results), file=sys.stderr)

            if grow_to > tenants:
                started = time.monotonic()
                await create_all(emulator, [tenant(i) for i in range(tenants, grow_to)])
                await until_ready(emulator, grow_to, limit=3600)
                results["grow_ready_seconds"] = round(time.monotonic() - started, 1)
                print(f"{grow_to} Ready after {results['grow_ready_seconds']} s", file=sys.stderr)
                await asyncio.sleep(2)
            results["operator_peak_rss_mib"] = round(peak_rss_mib(operator.pid), 1)
        finally:
            # The emulator must keep answering while the operator shuts down gracefully.
            operator.terminate()
            try:
                await asyncio.to_thread(operator.wait, 30)
            except subprocess.TimeoutExpired:
                operator.kill()
        shards = registry_shards(emulator)
        sizes = [sum(len(k) + len(v) for k, v in data.items()) for data in shards.values()]
        results["registry_shards"] = len(shards)
        results["largest_shard_bytes"] = max(sizes)
        results["largest_shard_base64_bytes"] = max(sizes) * 4 // 3
        shard_file = workdir / "shards.json"
        shard_file.write_text(json.dumps(shards))
        probe = subprocess.run(  # noqa: ASYNC221 - the measurement is the point, not overlap
            [sys.executable, "-c", API_PROBE, str(shard_file)],
            check=True,
            capture_output=True,
            text=True,
        )
        api = json.loads(probe.stdout)
        results["api_registry_tenants"] = api["tenants"]
        results["api_registry_keys"] = api["keys"]
        results["api_registry_load_seconds"] = round(api["load_s"], 2)
        results["api_registry_rss_mib"] = round(api["rss_mib_after"] - api["rss_mib_before"], 1)
        results["api_process_rss_mib"] = round(api["rss_mib_after"], 1)
        results["api_lookup_ns"] = round(api["lookup_ns"])
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--grow-to", type=int, default=10_000)
    parser.add_argument(
        "--shards", type=int, default=1024, help="registry shards (TENANTRY_REGISTRY__SHARD_COUNT)"
    )
    arguments = parser.parse_args()
    random.seed(7)
    os.environ["TENANTRY_REGISTRY__SHARD_COUNT"] = str(arguments.shards)
    print(json.dumps(asyncio.run(main(arguments.tenants, arguments.grow_to)), indent=2))
