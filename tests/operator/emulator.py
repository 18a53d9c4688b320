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

import collections
import itertools
import uuid
from typing import Any

import jsonpatch
import kmock
from kmock import KubernetesError, KubernetesObjectNotFoundError
from kmock._internal.dsl import Filter, Priority, Root
from kmock._internal.rendering import ReactionMismatchError

from tenantry.contract.resources import RESOURCE_KINDS


def _sees(view: Any, request: kmock.Request) -> bool:
    """`request in view` without replaying every past request through the view: along a
    chain of plain filters and priorities down to the root, only the criteria decide."""
    while True:
        if isinstance(view, Root):
            return True
        if type(view) is Filter:
            if not view.criteria(request):
                return False
        elif type(view) is not Priority:
            return bool(request in view)
        view = view._source


class FastDispatch(kmock.KubernetesScaffold):
    """kmock's request matching, in constant time per reaction for the simple views the
    emulator's fallbacks are made of (placed under `KubernetesEmulator` in the MRO)."""

    async def _handle(self, request: kmock.Request) -> Any:
        if getattr(self, "request_log_limit", None) is None:
            return await super()._handle(request)
        priorities = [payload.priorities for payload in self._payloads]
        width = max((len(priority) for priority in priorities), default=0)
        order = sorted(
            range(len(priorities)),
            key=lambda i: tuple(-p for p in priorities[i]) + (0,) * (width - len(priorities[i])),
        )
        for payload in (self._payloads[i] for i in order):
            if not payload._disabled.is_set() and _sees(payload._source, request):
                try:
                    return await payload(request)
                except ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError("no reaction matches the request")


class Emulator(kmock.KubernetesEmulator, FastDispatch):
    _versions = itertools.count(1000)
    # kmock matches each request against a view over every request so far (quadratic over a
    # long run); a benchmark keeps only the most recent ones and counts calls per client.
    request_log_limit: int | None = None
    calls_by_agent: collections.Counter[str] = collections.Counter()

    async def _render_error(self, exc: Exception) -> Any:
        """A JSON patch whose `test` fails (a stale resourceVersion) is the client's error,
        422 as the API server answers, not the emulator's 500 that clients retry blindly."""
        if isinstance(exc, jsonpatch.JsonPatchTestFailed):
            exc = KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.method in {"POST", "PATCH", "PUT"}:
            self._stamp(request)
        if self.request_log_limit is not None:
            self.calls_by_agent[request.headers.get("User-Agent", "")] += 1
            for log in [self._requests, *(payload._requests for payload in self._payloads)]:
                if len(log) > 2 * self.request_log_limit:
                    del log[: -self.request_log_limit]
        return await super()._handle(request)

    # Lookups by name in a dict rather than kmock's scan of every object (same answers; the
    # scan makes 10,000 tenants quadratic). Only the last two versions of an object are kept.

    def _named(self, request: kmock.Request, name: str | None = None) -> Any:
        key: Any = (request.resource, request.namespace, name or request.name)
        return self.objects[key] if key in self.objects else None  # noqa: SIM401 - no .get()

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = self._named(request)
        if obj is None or obj.deleted:
            raise KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> Any:
        metadata = request.data.get("metadata") or {}
        key: Any = (
            request.resource,
            request.namespace or metadata.get("namespace"),
            metadata["name"],
        )
        obj = self.objects[key]
        del obj.history[:-2]
        return obj.last.raw

    async def _serve_update(self, request: kmock.Request) -> Any:
        obj = self._named(request)
        del obj.history[:-2]
        return obj.last.raw

    async def _serve_delete(self, request: kmock.Request) -> Any:
        return self._named(request).last.raw

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
