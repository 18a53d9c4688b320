"""Fixtures of the API tests: the real app (lifespan included) on real Redis and Postgres,
tenants from `tests/api/manifests.yaml`, and the plaintext keys the file source issued."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.trace import Tracer
from prometheus_client.parser import text_string_to_metric_families

from tenantry.api.app import create_app
from tenantry.api.runtime import ApiRuntime
from tenantry.settings import Settings
from tenantry.sources.files import FileRegistrySource

MANIFESTS = Path(__file__).with_name("manifests.yaml")


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    source: FileRegistrySource
    settings: Settings

    @property
    def runtime(self) -> ApiRuntime:
        runtime: ApiRuntime = self.app.state.runtime
        return runtime

    def key(self, tenant: str, name: str = "main") -> str:
        """The plaintext of a tenant's key, as its owners read it from the key Secret."""
        states = self.source.reconcile().keys
        return states[f"team-t/{tenant}"].keys[name].plaintext

    def reload(self) -> None:
        """Reconcile the manifests now (instead of waiting for the source's poll)."""
        assert self.source.publish(self.runtime.holder)


async def metric(api: Api, sample: str, **labels: str) -> float:
    """The value of one sample of the API's `/metrics`, as Prometheus would scrape it."""
    text = (await api.client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    raise AssertionError(f"no sample {sample} {labels} in /metrics")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ServeApi = Callable[..., AbstractAsyncContextManager[Api]]


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A copy of the test manifests the test may edit."""
    copy = tmp_path / "manifests" / "tenants.yaml"
    copy.parent.mkdir()
    shutil.copy(MANIFESTS, copy)
    return copy


@pytest.fixture
def serve_api(tmp_path: Path, manifests: Path) -> ServeApi:
    @asynccontextmanager
    async def serve(
        *,
        database_url: str,
        redis_url: str | None,
        client_address: tuple[str, int] = ("203.0.113.7", 50000),
        tracer: Tracer | None = None,
        routes: Callable[[FastAPI], None] | None = None,
        **api: Any,
    ) -> AsyncIterator[Api]:
        """The app on its lifespan; `routes` declares more routes first (the route table is
        compiled at start-up)."""
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            redis_timeout_seconds=0.2,
            api={"access_log": False, **api},
            registry={
                "manifests": [manifests.parent],
                "keys_file": tmp_path / "keys.json",
                "poll_interval_seconds": 3600,
            },
        )
        source = FileRegistrySource(
            settings.registry.manifests,
            platform_namespace=settings.platform_namespace,
            keys_file=settings.registry.keys_file,
            poll_interval_seconds=settings.registry.poll_interval_seconds,
        )
        app = create_app(settings, source=source, tracer=tracer)
        if routes is not None:
            routes(app)
        transport = httpx.ASGITransport(app=app, client=client_address)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://api.test") as client,
        ):
            yield Api(app, client, source, settings)

    return serve


@pytest.fixture
async def api(serve_api: ServeApi, database_url: str, redis_url: str) -> AsyncIterator[Api]:
    async with serve_api(database_url=database_url, redis_url=redis_url) as running:
        yield running
