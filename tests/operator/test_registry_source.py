"""The API's view of the registry: the Kubernetes source picks up what the operator writes
within seconds, keeps its last good snapshot through bad data and an unreachable API server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tenantry.contract.keys import parse_key
from tenantry.contract.registry import REGISTRY_LABEL, shard_name
from tenantry.operator import desired
from tenantry.sources import RegistryHolder
from tenantry.sources.kubernetes import KubernetesRegistrySource
from tests.operator.conftest import Cluster, RunningOperator, eventually, write_kubeconfig
from tests.operator.test_scenarios import key_secret, policy, ready_tenant, tenant

pytestmark = pytest.mark.operator

# The API's promise: from `kubectl apply` to a served key, and from revocation or suspension
# to refusal, within 5 s at the 95th percentile. Each probe here must make it every time.
PROPAGATION_SECONDS = 5.0


@contextlib.asynccontextmanager
async def serving(namespace: str) -> AsyncIterator[RegistryHolder]:
    holder = RegistryHolder()
    source = KubernetesRegistrySource(namespace, retry_seconds=0.05, max_retry_seconds=0.2)
    task = asyncio.create_task(source.run(holder))
    try:
        yield holder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_new_key_revocation_and_suspension_reach_the_api_within_seconds(
    cluster: Cluster, operator: RunningOperator
) -> None:
    await cluster.create("ratelimitpolicies", cluster.platform_namespace, policy("standard"))
    async with serving(cluster.platform_namespace) as holder:
        await eventually(lambda: _true(holder.loaded), what="first snapshot")

        started = time.monotonic()
        await cluster.create(
            "apitenants",
            cluster.tenant_namespace,
            tenant("acme", keys=[{"name": "production"}, {"name": "ci"}]),
        )

        async def plaintext() -> dict[str, str] | None:
            keys = await key_secret(cluster, "acme")
            return keys if {"production", "ci"} <= set(keys) else None

        keys = await eventually(plaintext, what="key Secret")
        production, ci = (parse_key(keys[name]).key_id for name in ("production", "ci"))
        await eventually(
            lambda: _true(holder.registry.lookup(production) is not None),
            within=PROPAGATION_SECONDS,
            what="the new key served",
        )
        assert time.monotonic() - started < PROPAGATION_SECONDS

        await cluster.patch(
            "apitenants",
            cluster.tenant_namespace,
            "acme",
            {"spec": {"keys": [{"name": "production"}]}},
        )
        await eventually(
            lambda: _true(holder.registry.lookup(ci) is None),
            within=PROPAGATION_SECONDS,
            what="the revoked key refused",
        )

        await cluster.patch(
            "apitenants", cluster.tenant_namespace, "acme", {"spec": {"suspended": True}}
        )

        async def suspended() -> bool:
            record = holder.registry.lookup(production)
            return record is not None and record.tenant.suspended

        await eventually(suspended, within=PROPAGATION_SECONDS, what="the suspension served")


async def _true(value: bool) -> bool:
    return value


async def test_bad_snapshot_is_rejected_and_the_last_good_one_keeps_serving(
    cluster: Cluster, operator: RunningOperator
) -> None:
    await cluster.create("ratelimitpolicies", cluster.platform_namespace, policy("standard"))
    await ready_tenant(cluster)
    async with serving(cluster.platform_namespace) as holder:
        await eventually(lambda: _true(len(holder.registry.tenants) == 1), what="acme served")
        good = holder.registry.version

        await cluster.create(
            "secrets",
            cluster.platform_namespace,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "tenantry-registry-9999", "labels": {REGISTRY_LABEL: "true"}},
                "data": {"team.broken": base64.b64encode(b"{not json").decode()},
            },
        )

        await eventually(lambda: _true(holder.rejected > 0), what="the bad snapshot rejected")
        assert holder.registry.version == good
        await cluster.delete("secrets", cluster.platform_namespace, "tenantry-registry-9999")


class Outage:
    """A TCP relay in front of the API server that can cut every connection and refuse new
    ones for a while: what the source sees when the API server is unreachable."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.streams: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.streams):
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.streams |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self.streams -= {writer, upstream_writer}


@pytest.mark.emulator_only
async def test_source_keeps_serving_while_the_api_server_is_down_and_resyncs_after(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The API server goes away (the watch drops, lists fail) and comes back with changes
    made meanwhile: the source serves its last snapshot throughout, then catches up."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    shard = shard_name(0)
    entry = f'{{"tenantId":"{cluster.tenant_namespace}/acme","displayName":"A","tier":"t"}}'
    emulator.objects["v1/secrets", cluster.platform_namespace, shard] = desired.registry_shard(
        shard, cluster.platform_namespace, {f"{cluster.tenant_namespace}.acme": desired.b64(entry)}
    )
    outage = Outage(emulator.url.host or "127.0.0.1", emulator.url.port or 80)
    await outage.start()
    url = f"http://127.0.0.1:{outage.port}"
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "relayed", url)))
    async with serving(cluster.platform_namespace) as holder:
        await eventually(lambda: _true(len(holder.registry.tenants) == 1), what="served")
        served = holder.registry.version

        await outage.cut()
        del emulator.objects["v1/secrets", cluster.platform_namespace, shard]
        await asyncio.sleep(0.5)  # a window of outage: there is no event to wait for
        assert holder.registry.version == served

        await outage.start()
        await eventually(
            lambda: _true(len(holder.registry.tenants) == 0),
            within=PROPAGATION_SECONDS,
            what="the resync after the outage",
        )
        await outage.cut()
