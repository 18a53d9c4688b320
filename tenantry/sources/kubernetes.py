"""The Kubernetes registry source: the registry Secrets the operator writes, watched live.

It lists the Secrets labelled `tenantry.io/registry` in the platform namespace, publishes the
decoded snapshot, then follows a watch from that list's resourceVersion, publishing a new
snapshot after each change. When the watch ends or breaks (a server timeout, a dropped
connection, an unreachable API server) it lists again, which also catches anything missed,
and retries with a capped backoff. Meanwhile the holder keeps serving its last good
snapshot; a snapshot that does not decode is rejected and the last good one stays.

The label selector is sent to the server and applied again here, so the source behaves the
same against servers (and emulators) that do not filter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter

from tenantry.contract.registry import REGISTRY_LABEL, Registry, RegistryError
from tenantry.kubeconfig import load_configuration
from tenantry.settings import Settings
from tenantry.sources import RegistryHolder

log = structlog.get_logger("tenantry.sources.kubernetes")

WATCH_RESTARTS = Counter(
    "tenantry_registry_watch_restarts_total",
    "Times the registry watch was re-established, by cause (ended, error).",
    ["cause"],
)

# Errors that mean "the API server is not answering right now": retried, never fatal.
UNREACHABLE = (ApiException, aiohttp.ClientError, OSError, TimeoutError)


def decode_shard(secret: Mapping[str, Any]) -> dict[str, str]:
    """A registry Secret's entries as JSON text; raises `RegistryError` naming a bad entry."""
    name = (secret.get("metadata") or {}).get("name")
    entries = {}
    for data_key, value in (secret.get("data") or {}).items():
        try:
            entries[data_key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as error:
            raise RegistryError(f"{name}/{data_key}: not base64 text: {error}") from error
    return entries


def _is_registry_shard(secret: Mapping[str, Any]) -> bool:
    return REGISTRY_LABEL in ((secret.get("metadata") or {}).get("labels") or {})


class KubernetesRegistrySource:
    """Serve the registry the operator keeps in `namespace`.

    `namespace` is the platform namespace (`settings.platform_namespace`). `resync_seconds`
    bounds a watch's life before a fresh list (the server may end it sooner);
    `retry_seconds` is the first delay after a failure, doubled up to `max_retry_seconds`.
    The connection comes from the pod's service account, or the kubeconfig outside a pod.
    """

    def __init__(
        self,
        namespace: str,
        *,
        resync_seconds: float = 300.0,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.resync_seconds = resync_seconds
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self._shards: dict[str, dict[str, str]] = {}

    async def run(self, holder: RegistryHolder) -> None:
        """Keep `holder` current until cancelled."""
        delay = self.retry_seconds
        while True:
            try:
                async with k8s.ApiClient(await load_configuration()) as api_client:
                    api_client.user_agent = "tenantry-api"
                    core = k8s.CoreV1Api(api_client)
                    while True:
                        version = await self._list(core, holder)
                        delay = self.retry_seconds
                        await self._watch(core, holder, version)
                        WATCH_RESTARTS.labels(cause="ended").inc()
            except UNREACHABLE as error:
                WATCH_RESTARTS.labels(cause="error").inc()
                log.warning(
                    "registry_watch_failed",
                    namespace=self.namespace,
                    error=str(error) or type(error).__name__,
                    retry_in=delay,
                    serving=holder.registry.version,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_seconds)

    async def _list(self, core: k8s.CoreV1Api, holder: RegistryHolder) -> str | None:
        # Raw JSON: the registry needs the data map, not typed models of every Secret.
        response: Any = await core.list_namespaced_secret(
            self.namespace, label_selector=REGISTRY_LABEL, _preload_content=False
        )
        listing = await response.json()
        self._shards = {}
        for secret in listing.get("items") or []:
            if _is_registry_shard(secret):
                self._shards[secret["metadata"]["name"]] = dict(secret.get("data") or {})
        self._publish(holder)
        version = (listing.get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    async def _watch(
        self, core: k8s.CoreV1Api, holder: RegistryHolder, version: str | None
    ) -> None:
        # The watch is read as raw JSON lines: `watch=true` spelled as the API documents it
        # (the client's own helper sends `True`, which not every server or emulator parses).
        options: dict[str, Any] = {
            "label_selector": REGISTRY_LABEL,
            "timeout_seconds": int(self.resync_seconds),
            "allow_watch_bookmarks": "true",
            "watch": "true",
        }
        if version:
            options["resource_version"] = version
        async with asyncio.timeout(self.resync_seconds + 5):
            response: Any = await core.list_namespaced_secret(
                self.namespace, _preload_content=False, **options
            )
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                secret = event.get("object") or {}
                kind = event.get("type")
                if kind == "BOOKMARK":
                    holder.publish(holder.registry)  # the server confirms we are current
                    continue
                if kind == "ERROR":  # e.g. 410 Gone: our version is too old; list again
                    return
                if not _is_registry_shard(secret):
                    continue
                name = secret["metadata"]["name"]
                if kind == "DELETED":
                    self._shards.pop(name, None)
                else:
                    self._shards[name] = dict(secret.get("data") or {})
                self._publish(holder)

    def _publish(self, holder: RegistryHolder) -> None:
        try:
            shards = {
                name: decode_shard({"metadata": {"name": name}, "data": data})
                for name, data in self._shards.items()
            }
            registry = Registry.decode(shards)
        except RegistryError as error:
            holder.reject()
            log.error("registry_rejected", namespace=self.namespace, error=str(error))
            return
        before = holder.registry.version
        holder.publish(registry)
        if registry.version != before:
            log.info(
                "registry_loaded",
                namespace=self.namespace,
                version=registry.version,
                tenants=len(registry.tenants),
                shards=len(shards),
            )


def source_from_settings(settings: Settings) -> KubernetesRegistrySource:
    """The source `settings.registry.source == "kubernetes"` selects."""
    return KubernetesRegistrySource(settings.platform_namespace)
