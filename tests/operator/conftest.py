"""The operator under test, running for real (Kopf, its watches and patches over HTTP) against
kmock's Kubernetes API emulator, or against a real cluster with `pytest --kubeconfig=PATH`.

The scenarios talk to the API only through HTTP, so they read the same on both. Where the
emulator differs from a real API server the `Cluster` helper supplies what a server would:
`uid`, `generation` (bumped on each spec change) and `creationTimestamp`; `Emulator` adds
the `resourceVersion` and `generateName` handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import kmock
import pytest
import yaml

from tenantry.operator.kube import KubeClient, core_path, custom_path
from tenantry.operator.run import run_operator
from tenantry.settings import OperatorSettings, RegistrySettings, Settings
from tests.operator.emulator import Emulator, declare_resources

T = TypeVar("T")
TEST_AGENT = "tenantry-tests"
OPERATOR_AGENT = "tenantry-operator"
CRDS = Path(__file__).resolve().parents[2] / "crds"


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 10.0, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = await probe()
        except AssertionError as error:
            last = error
        else:
            if last:
                return cast(T, last)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.05)


@dataclass
class Cluster:
    """The API as a user or a test sees it: create, edit and delete objects over HTTP."""

    client: KubeClient
    emulated: bool
    platform_namespace: str
    tenant_namespace: str
    emulator: kmock.KubernetesEmulator | None = None
    _generations: dict[str, int] = field(default_factory=dict)

    async def create(self, plural: str, namespace: str, manifest: dict[str, Any]) -> None:
        metadata = manifest.setdefault("metadata", {})
        metadata["namespace"] = namespace
        if self.emulated:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("generation", 1)
            metadata.setdefault("creationTimestamp", datetime.now(UTC).isoformat()[:19] + "Z")
            self._generations[f"{plural}/{namespace}/{metadata['name']}"] = 1
        await self.client.create(self._collection(plural, namespace), manifest)

    async def patch(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A user's edit; on the emulator a spec change bumps `generation` as a server would."""
        if self.emulated and "spec" in patch:
            key = f"{plural}/{namespace}/{name}"
            self._generations[key] = self._generations.get(key, 1) + 1
            patch = {
                **patch,
                "metadata": {**patch.get("metadata", {}), "generation": self._generations[key]},
            }
        assert await self.client.patch(self._path(plural, namespace, name), patch) is not None

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.client.get(self._path(plural, namespace, name))

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        return await self.client.delete(self._path(plural, namespace, name))

    async def list_secrets(self, namespace: str, label: str) -> list[dict[str, Any]]:
        """Secrets carrying `label`; filtered here too, since the emulator ignores selectors."""
        found = await self.client.get(core_path("secrets", namespace) + f"?labelSelector={label}")
        items = (found or {}).get("items") or []
        return [s for s in items if label in ((s.get("metadata") or {}).get("labels") or {})]

    async def events(self, namespace: str) -> list[dict[str, Any]]:
        found = await self.client.get(core_path("events", namespace))
        return list((found or {}).get("items") or [])

    def _collection(self, plural: str, namespace: str) -> str:
        if plural in {"secrets", "events"}:
            return core_path(plural, namespace)
        if plural == "horizontalpodautoscalers":
            return f"/apis/autoscaling/v2/namespaces/{namespace}/{plural}"
        return f"/apis/tenantry.io/v1alpha1/namespaces/{namespace}/{plural}"

    def _path(self, plural: str, namespace: str, name: str) -> str:
        if plural in {"apitenants", "ratelimitpolicies", "apiplatforms"}:
            return custom_path(plural, namespace, name)
        return f"{self._collection(plural, namespace)}/{name}"

    def writes_since(self, mark: int) -> list[str]:
        """Write calls (create, patch, delete) by anything but the tests, after `mark`."""
        assert self.emulator is not None, "request history exists only on the emulator"
        return [
            f"{request.method.value} {request.url.path} {request.text[:300]}"
            for request in list(self.emulator)[mark:]
            if request.method in {"POST", "PUT", "PATCH", "DELETE"}
            and not request.headers.get("User-Agent", "").startswith(TEST_AGENT)
        ]

    def request_mark(self) -> int:
        assert self.emulator is not None, "request history exists only on the emulator"
        return len(list(self.emulator))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "emulator_only: needs the emulator's request log or control over its server; on a "
        "real cluster deselect with -m 'not emulator_only'",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The RBAC check runs last, so it sees the calls of every scenario of the session."""
    items.sort(key=lambda item: "test_rbac" in item.nodeid)


@pytest.fixture(autouse=True)
def _emulator_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("emulator_only") and request.config.getoption(
        "--kubeconfig"
    ):
        pytest.fail(
            "this scenario needs the emulator; on a real cluster run with -m 'not emulator_only'",
            pytrace=False,
        )


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "tests"}}
                ],
                "users": [{"name": "tests", "user": {"token": "emulator"}}],
            }
        )
    )
    return path


# Every run on the emulator records the calls of all runs of the session, for the RBAC test.
RECORDED_CALLS: list[tuple[str, str, str, str]] = []


def _record(emulator: kmock.KubernetesEmulator) -> None:
    for request in list(emulator):
        agent = request.headers.get("User-Agent", "")
        if agent.startswith(TEST_AGENT) or request.resource is None or not request.action:
            continue
        if not request.resource.plural:
            continue  # API discovery, open to every authenticated client
        resource = request.resource.plural
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        action = str(request.action.value).lower()
        verb = {"fetch": "get", "update": "patch"}.get(action, action)
        RECORDED_CALLS.append((agent, verb, request.resource.group or "", resource))


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Cluster]:
    kubeconfig = request.config.getoption("--kubeconfig")
    suffix = uuid.uuid4().hex[:6]
    async with contextlib.AsyncExitStack() as stack:
        emulator: kmock.KubernetesEmulator | None = None
        if kubeconfig is None:
            emulator = await stack.enter_async_context(Emulator())
            await stack.enter_async_context(kmock.Server(emulator))
            declare_resources(emulator)
            kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", str(emulator.url)))
        monkeypatch.setenv("KUBECONFIG", kubeconfig)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        client = await KubeClient.connect("tenantry-tests", user_agent=TEST_AGENT)
        stack.push_async_callback(client.close)
        found = Cluster(
            client=client,
            emulated=emulator is not None,
            platform_namespace=f"tenantry-system-{suffix}",
            tenant_namespace=f"team-{suffix}",
            emulator=emulator,
        )
        # The emulator keeps objects in any namespace without a Namespace object (and cannot
        # parse a POST to /api/v1/namespaces); a real cluster needs them created.
        for namespace in (
            () if found.emulated else (found.platform_namespace, found.tenant_namespace)
        ):
            await client.create(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            )
            stack.push_async_callback(client.delete, f"/api/v1/namespaces/{namespace}")
        yield found
        if emulator is not None:
            _record(emulator)


def operator_settings(cluster: Cluster, **overrides: Any) -> Settings:
    """Tight timings so the scenarios take seconds; everything else as in production."""
    return Settings(
        platform_namespace=cluster.platform_namespace,
        registry=RegistrySettings(shard_count=4),
        operator=OperatorSettings(
            standalone=True,
            namespaces=[cluster.platform_namespace, cluster.tenant_namespace],
            retry_delay_seconds=0.5,
            platform_debounce_seconds=0.05,
            watch_reconnect_seconds=0.1,
            idle_timeout_seconds=1.0,
            consistency_timeout_seconds=0.5,
            **overrides,
        ),
    )


@dataclass
class RunningOperator:
    """The operator on a thread and event loop of its own, as in its own process: Kopf
    treats every task started in its loop after it as its own and cancels it at exit."""

    thread: threading.Thread
    stop: threading.Event
    errors: list[BaseException]

    async def stop_now(self) -> None:
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 15)
        if self.thread.is_alive():
            pytest.fail("the operator did not stop within 15 s")


@contextlib.asynccontextmanager
async def running_operator(settings: Settings) -> AsyncIterator[RunningOperator]:
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(run_operator(settings, stop_flag=stop, ready_flag=ready))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=serve, name="operator", daemon=True)
    running = RunningOperator(thread, stop, errors)
    thread.start()
    try:
        if not await asyncio.to_thread(ready.wait, 15):
            pytest.fail(f"the operator did not start within 15 s: {errors}")
        yield running
    finally:
        await running.stop_now()
        if errors:
            raise AssertionError("the operator crashed") from errors[0]


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[RunningOperator]:
    async with running_operator(operator_settings(cluster)) as running:
        yield running
