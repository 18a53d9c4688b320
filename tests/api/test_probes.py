"""Probes and metrics: liveness never depends on anything, readiness and startup say which
dependency is missing, metrics carry only bounded labels."""

from __future__ import annotations

import asyncio
import os
import signal
from types import FrameType

import pytest

from tenantry.db.migrate import downgrade
from tests.api.conftest import Api, ServeApi, auth
from tests.harness.servers import PostgresProcess

pytestmark = pytest.mark.integration


async def test_all_probes_pass_on_a_healthy_service(api: Api) -> None:
    assert (await api.client.get("/livez")).json() == {"status": "alive"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert {name for name, check in checks.items() if check["ok"]} == {
        "registry",
        "database",
        "redis",
        "shutdown",
    }
    started = await api.client.get("/startupz")
    assert started.status_code == 200
    assert started.json()["checks"]["migrations"]["ok"] is True


async def test_postgres_stopped_makes_readiness_503_and_liveness_stays_200(
    serve_api: ServeApi, own_postgres: PostgresProcess, redis_url: str
) -> None:
    async with serve_api(database_url=own_postgres.url, redis_url=redis_url) as api:
        assert (await api.client.get("/readyz")).status_code == 200
        own_postgres.stop()
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["database"]["error"]
        assert body["checks"]["registry"]["ok"] is True
        assert (await api.client.get("/livez")).status_code == 200
        # Requests that need no database keep being served.
        response = await api.client.get("/v1/limits", headers=auth(api.key("open")))
        assert response.status_code == 200
        # Usage history needs the database: a clear 503, not a 500.
        usage = await api.client.get(
            "/v1/usage", params={"fresh": "true"}, headers=auth(api.key("open"))
        )
        assert usage.status_code == 503
        assert usage.json()["type"] == "https://tenantry.io/problems/service-unavailable"
        own_postgres.start()
        assert (await api.client.get("/readyz")).status_code == 200


async def test_startup_is_not_complete_on_an_unmigrated_database(
    serve_api: ServeApi, own_postgres: PostgresProcess, redis_url: str
) -> None:
    await asyncio.to_thread(downgrade, own_postgres.url, "base")
    async with serve_api(database_url=own_postgres.url, redis_url=redis_url) as api:
        started = await api.client.get("/startupz")
        assert started.status_code == 503
        assert "tenantry migrate" in started.json()["checks"]["migrations"]["error"]


async def test_readiness_is_503_once_shutdown_begins(api: Api) -> None:
    api.runtime.draining = True
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["shutdown"]["ok"] is False
    assert (await api.client.get("/livez")).status_code == 200


async def test_metrics_use_route_templates_and_no_tenant_label(api: Api) -> None:
    key = api.key("alpha")
    await api.client.get("/v1/limits", headers=auth(key))
    await api.client.get("/v1/limits", headers=auth("tnt_nonsense"))
    await api.client.get("/no/such/path/12345")
    text = (await api.client.get("/metrics")).text
    assert (
        'tenantry_api_requests_total{method="GET",route="/v1/limits",status_class="2xx"} 1.0'
        in text
    )
    assert 'route="<unmatched>"' in text
    assert "/no/such/path/12345" not in text
    assert 'tenantry_api_limiter_decisions_total{decision="allowed",source="redis"} 1.0' in text
    assert 'tenantry_api_auth_failures_total{reason="malformed-api-key"} 1.0' in text
    assert "tenantry_api_registry_tenants 7.0" in text
    assert "team-t/alpha" not in text
    assert "tenantry_api_request_duration_seconds_bucket" in text


async def test_the_tenant_label_appears_only_when_enabled(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    async with serve_api(
        database_url=database_url, redis_url=redis_url, tenant_metrics_label=True
    ) as api:
        await api.client.get("/v1/limits", headers=auth(api.key("alpha")))
        text = (await api.client.get("/metrics")).text
        assert 'tenantry_api_tenant_requests_total{tenant="team-t/alpha"} 1.0' in text


async def test_readiness_is_503_from_the_moment_sigterm_arrives(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    received: list[int] = []

    def server_handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)  # stands in for uvicorn's graceful shutdown

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        async with serve_api(database_url=database_url, redis_url=redis_url) as api:
            assert (await api.client.get("/readyz")).status_code == 200
            os.kill(os.getpid(), signal.SIGTERM)
            ready = await api.client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["shutdown"]["ok"] is False
            assert received == [signal.SIGTERM]  # the server still shuts down gracefully
            assert (await api.client.get("/livez")).status_code == 200
        assert signal.getsignal(signal.SIGTERM) is server_handler
    finally:
        signal.signal(signal.SIGTERM, original)
