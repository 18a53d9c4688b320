"""Where a running service gets its registry from, and how it holds it.

A `RegistrySource` watches something (manifest files in `tenantry dev`, the registry Secrets
in Kubernetes) and hands each complete new snapshot to a `RegistryHolder`. The holder swaps
snapshots atomically (one reference assignment: a request sees the old registry or the new
one, never a mix) and keeps the last good one when a source offers a bad one.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tenantry.contract.registry import EMPTY_REGISTRY, Registry

if TYPE_CHECKING:
    from tenantry.settings import Settings


class RegistrySource(Protocol):
    """Runs until cancelled, publishing every new complete snapshot it sees."""

    async def run(self, holder: RegistryHolder) -> None: ...


class RegistryHolder:
    """The registry a process serves, and how fresh it is."""

    def __init__(self, on_swap: Callable[[Registry], None] | None = None) -> None:
        self._registry = EMPTY_REGISTRY
        self._loaded = False
        self._updated_at = time.monotonic()
        self._confirmed_at = time.monotonic()
        self._on_swap = on_swap
        self.rejected = 0  # snapshots refused because they were bad

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def loaded(self) -> bool:
        """True once a first snapshot arrived: until then the process is not ready."""
        return self._loaded

    def publish(self, registry: Registry) -> None:
        """Swap in a new snapshot (a no-op swap when its version is unchanged)."""
        now = time.monotonic()
        self._confirmed_at = now
        if self._loaded and registry.version == self._registry.version:
            return
        self._registry = registry
        self._loaded = True
        self._updated_at = now
        if self._on_swap is not None:
            self._on_swap(registry)

    def reject(self) -> None:
        """A source saw a bad snapshot; the last good one keeps serving."""
        self.rejected += 1

    def age_seconds(self) -> float:
        """Seconds since the source last confirmed the snapshot is current."""
        return time.monotonic() - self._confirmed_at


def registry_source(settings: Settings) -> RegistrySource:
    """The source `settings.registry.source` names. Each is imported only when chosen, so a
    process using the file source never loads the Kubernetes client."""
    if settings.registry.source == "kubernetes":
        module = importlib.import_module("tenantry.sources.kubernetes")
    else:
        module = importlib.import_module("tenantry.sources.files")
    source: RegistrySource = module.source_from_settings(settings)
    return source
