"""kmock's Kubernetes emulator, completed with the bookkeeping a real API server does on
every write and that Kopf relies on.

- `metadata.resourceVersion` is set on create (Kopf's JSON patches test it); it does not move
  on later writes here, so Kopf's wait for the version of its own patch ends by its timeout
  (`settings.operator.consistency_timeout_seconds`, short in tests) rather than on the echo;
- `metadata.generateName` names the object (Kopf posts its Events so);
- a failed JSON patch `test` (a stale resourceVersion) is answered 422.

Used by the operator scenarios and `make bench-operator`.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import jsonpatch
import kmock
from kmock import KubernetesError

from tenantry.contract.resources import RESOURCE_KINDS


class Emulator(kmock.KubernetesEmulator):
    _versions = itertools.count(1000)

    async def _render_error(self, exc: Exception) -> Any:
        """A JSON patch whose `test` fails (a stale resourceVersion) is the client's error,
        422 as the API server answers, not the emulator's 500 that clients retry blindly."""
        if isinstance(exc, jsonpatch.JsonPatchTestFailed):
            exc = KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.method in {"POST", "PATCH", "PUT"}:
            self._stamp(request)
        return await super()._handle(request)

    def _stamp(self, request: kmock.Request) -> None:
        data = request.data
        if isinstance(data, dict) and request.method == "POST":
            metadata = data.setdefault("metadata", {})
            if metadata.get("generateName"):
                metadata.setdefault("name", metadata["generateName"] + uuid.uuid4().hex[:5])
            metadata.setdefault("resourceVersion", str(next(self._versions)))


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """What the API server would discover: the built-in kinds and our three CRDs."""
    emulator.resources.load_bundled()
    for kind in RESOURCE_KINDS:
        emulator.resources[f"tenantry.io/v1alpha1/{kind.plural}"] = kmock.ResourceInfo(
            kind=kind.kind_name,
            singular=kind.kind_name.lower(),
            namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            shortnames=set(kind.short_names),
            subresources={"status"},
        )
