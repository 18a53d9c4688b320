"""Test a plug-in's routes under the real admission layer, with tenants and keys made in the
test:

    from tenantry.testing import serve_plugins, tenant, tier

    async def test_scoring_needs_its_scope() -> None:
        manifests = [
            tier("basic", requests_per_minute=60, burst=5),
            tenant("acme", tier="basic", keys={"main": None, "reader": ["usage:read"]}),
        ]
        async with serve_plugins(manifests=manifests) as api:
            reader = api.auth("acme", "reader")
            response = await api.client.post("/v1/gps/score", json={}, headers=reader)
            assert response.status_code == 403

The app is the one `tenantry dev` serves (every installed plug-in, or the routers given),
on a SQLite database in a temporary folder and the in-process limiter unless a database or
Redis URL is given; jobs run in the same process, so a submitted job really runs.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import APIRouter, FastAPI

from tenantry.api.plugins import Plugin
from tenantry.contract.resources import API_VERSION
from tenantry.db.migrate import upgrade
from tenantry.dev import create_dev_app
from tenantry.settings import Settings
from tenantry.sources.files import FileRegistrySource, source_from_settings

PLATFORM_NAMESPACE = "tenantry-system"
ENDED = frozenset({"succeeded", "failed", "cancelled"})


def tier(
    name: str,
    *,
    requests_per_minute: int | None = 600,
    burst: int = 50,
    monthly_quota: int | None = None,
    max_concurrent_jobs: int = 2,
    routes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A `RateLimitPolicy` manifest; `routes` are its per-route overrides (`method`, `path`
    template, `requestsPerMinute`, `burst`)."""
    spec: dict[str, Any] = {"burst": burst, "maxConcurrentJobs": max_concurrent_jobs}
    if requests_per_minute is not None:
        spec["requestsPerMinute"] = requests_per_minute
    if monthly_quota is not None:
        spec["monthlyQuota"] = monthly_quota
    if routes:
        spec["routes"] = [dict(route) for route in routes]
    return _manifest("RateLimitPolicy", name, PLATFORM_NAMESPACE, spec)


def tenant(
    name: str,
    *,
    tier: str,
    namespace: str = "team-a",
    keys: Mapping[str, Sequence[str] | None] | None = None,
    suspended: bool = False,
) -> dict[str, Any]:
    """An `ApiTenant` manifest; `keys` maps each key's name to its scopes (None: every
    scope). By default the tenant has one key, `main`, holding every scope."""
    declared = []
    for key_name, scopes in (keys or {"main": None}).items():
        declared.append(
            {"name": key_name} if scopes is None else {"name": key_name, "scopes": list(scopes)}
        )
    spec = {
        "displayName": name,
        "policyRef": {"name": tier},
        "suspended": suspended,
        "keys": declared,
    }
    return _manifest("ApiTenant", name, namespace, spec)


def _manifest(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class PluginApi:
    """The running app: its HTTP client and the keys of the test's tenants."""

    app: FastAPI
    client: httpx.AsyncClient
    source: FileRegistrySource

    def key(self, tenant: str, key: str = "main", *, namespace: str = "team-a") -> str:
        """The plaintext of a tenant's key, as its owners read it from the key Secret."""
        states = self.source.reconcile().keys
        return states[f"{namespace}/{tenant}"].keys[key].plaintext

    def auth(self, tenant: str, key: str = "main", *, namespace: str = "team-a") -> dict[str, str]:
        """`Authorization` header of a tenant's key."""
        return {"Authorization": f"Bearer {self.key(tenant, key, namespace=namespace)}"}

    async def wait_for_job(
        self, location: str, headers: Mapping[str, str], *, timeout_seconds: float = 30.0
    ) -> dict[str, Any]:
        """The job at `location` (`/v1/jobs/{id}`) once it has ended; `headers` authenticate
        with a key holding `jobs:read`."""
        async with asyncio.timeout(timeout_seconds):
            while True:
                response = await self.client.get(location, headers=dict(headers))
                response.raise_for_status()
                job: dict[str, Any] = response.json()
                if job["status"] in ENDED:
                    return job
                await asyncio.sleep(0.02)


@asynccontextmanager
async def serve_plugins(
    *,
    manifests: Sequence[Mapping[str, Any]],
    plugins: Mapping[str, APIRouter] | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> AsyncIterator[PluginApi]:
    """The app on its lifespan, serving `manifests`' tenants. `plugins` (routers by plug-in
    name) replace the installed plug-ins."""
    with tempfile.TemporaryDirectory(prefix="tenantry-test-") as folder:
        root = Path(folder)
        (root / "manifests.yaml").write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        settings = Settings(
            database_url=database_url or f"sqlite+aiosqlite:///{root / 'tenantry.db'}",
            redis_url=redis_url,
            platform_namespace=PLATFORM_NAMESPACE,
            api={"access_log": False},
            registry={
                "manifests": [root / "manifests.yaml"],
                "keys_file": root / "keys.json",
                "poll_interval_seconds": 3600,
            },
        )
        if database_url is None:
            await asyncio.to_thread(upgrade, settings.database_url)
        source = source_from_settings(settings)
        given = None if plugins is None else [Plugin(n, r) for n, r in plugins.items()]
        app = create_dev_app(settings, source=source, plugins=given)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client,
        ):
            yield PluginApi(app, client, source)
