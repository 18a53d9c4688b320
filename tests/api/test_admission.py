"""The admission layer: one component admits every protected route before its handler runs,
against the route table compiled at start-up."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import pytest
import redis
from fastapi import Depends, FastAPI

from tenantry.api import Caller, requires
from tenantry.api.app import public_paths
from tenantry.api.routes import RouteTable
from tenantry.contract.usage import usage_index_key
from tests.api.conftest import Api, ServeApi, auth, metric

pytestmark = pytest.mark.integration

PROBLEMS = "https://tenantry.io/problems/"


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


async def test_every_protected_route_of_the_app_refuses_a_request_without_a_key(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    async with serve_api(
        database_url=database_url, redis_url=redis_url, auth_failures_burst=100
    ) as api:
        table = RouteTable.compile(api.app.routes, public_paths=public_paths(api.app))
        protected = [entry for entry in table.entries if not entry.public]
        assert {entry.name for entry in protected} >= {
            "GET /v1/limits",
            "GET /v1/usage",
            "POST /v1/jobs",
            "GET /v1/jobs/{job_id}",
            "POST /v1/jobs/{job_id}/cancel",
            "GET /widgets/whoami",  # the installed test plug-in's
            "POST /widgets/reports",
        }
        for entry in protected:
            path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", entry.template)
            response = await api.client.request(entry.method, path)
            assert response.status_code == 401, entry.name
            assert response.json()["type"] == PROBLEMS + "missing-api-key"
        for path in ("/livez", "/openapi.json", "/docs", "/widgets/health"):
            assert (await api.client.get(path)).status_code == 200, path


async def test_a_path_no_route_has_is_a_404_problem_without_a_redis_call_or_metering(
    api: Api, redis_url: str
) -> None:
    key = api.key("alpha")
    client = redis.Redis.from_url(redis_url)
    before = _evalsha_calls(client)
    response = await api.client.get("/v1/nothing/here/42", headers=auth(key))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEMS + "not-found"
    assert body["request_id"] == response.headers["x-request-id"]
    assert "ratelimit" not in response.headers
    assert _evalsha_calls(client) == before
    assert client.zcard(usage_index_key("team-t/alpha")) == 0
    unmatched = await metric(
        api,
        "tenantry_api_requests_total",
        method="GET",
        route="<unmatched>",
        status_class="4xx",
    )
    assert unmatched == 1


async def test_a_method_the_route_does_not_allow_is_a_405_with_allow(
    api: Api, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    before = _evalsha_calls(client)
    response = await api.client.delete("/v1/limits", headers=auth(api.key("alpha")))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["type"] == PROBLEMS + "method-not-allowed"
    jobs = await api.client.put("/v1/jobs", headers=auth(api.key("alpha")))
    assert jobs.status_code == 405
    assert jobs.headers["allow"] == "GET, POST"
    assert _evalsha_calls(client) == before


@pytest.fixture
def job_route_override(manifests: Path) -> None:
    """The `tight` tier (alpha's) limits `GET /v1/jobs/{job_id}` to 60/min, burst 1."""
    override = '    - {method: GET, path: "/v1/jobs/{job_id}", requestsPerMinute: 60, burst: 1}\n'
    manifests.write_text(manifests.read_text().replace("  routes:\n", "  routes:\n" + override, 1))


@pytest.mark.usefixtures("job_route_override")
async def test_a_route_override_applies_to_the_template_whatever_the_path(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    async with serve_api(database_url=database_url, redis_url=redis_url) as api:
        key = api.key("alpha")
        statuses = []
        for job_id in (
            "6f1c1a52-4b3e-4d5c-9a51-1c2b3d4e5f60",
            "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d",
            "11111111-2222-4333-8444-555555555555",
        ):
            response = await api.client.get(f"/v1/jobs/{job_id}", headers=auth(key))
            statuses.append(response.status_code)
        # Two different jobs use up the route's burst; the third id is refused by the route.
        assert statuses == [404, 404, 429]
        assert response.json()["violated-policies"] == ["route"]
        route_total = await metric(
            api,
            "tenantry_api_requests_total",
            method="GET",
            route="/v1/jobs/{job_id}",
            status_class="4xx",
        )
        assert route_total == 3


async def test_a_route_added_after_start_up_is_never_served_unadmitted(api: Api) -> None:
    async def late() -> dict[str, bool]:
        return {"ok": True}

    api.app.add_api_route("/v1/late", late)
    response = await api.client.get("/v1/late")
    assert response.status_code == 404


async def test_a_public_route_is_served_without_a_key_and_without_limits(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    from tenantry.api.routes import public

    async def status() -> dict[str, str]:
        return {"status": "green"}

    def routes(app: FastAPI) -> None:
        app.add_api_route("/status", status, dependencies=[public])

    async with serve_api(database_url=database_url, redis_url=redis_url, routes=routes) as api:
        client = redis.Redis.from_url(redis_url)
        before = _evalsha_calls(client)
        responses = [await api.client.get("/status") for _ in range(10)]
        assert {r.status_code for r in responses} == {200}
        assert "ratelimit" not in responses[0].headers
        assert "cache-control" not in responses[0].headers
        assert _evalsha_calls(client) == before
        document = (await api.client.get("/openapi.json")).json()
        assert document["paths"]["/status"]["get"]["security"] == []  # documented as open


def sync_handler(caller: Caller) -> dict[str, str]:
    return {"tenant": caller.tenant_id}


async def tier_of(caller: Caller) -> str:
    return caller.tier


async def nested(tier: Annotated[str, Depends(tier_of)]) -> dict[str, str]:
    return {"tier": tier}


async def key_name_of(caller: Caller) -> AsyncIterator[str]:
    yield caller.key_name


async def from_generator(key: Annotated[str, Depends(key_name_of)]) -> dict[str, str]:
    return {"key": key}


async def test_every_kind_of_handler_and_dependency_is_handed_the_admitted_caller(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    """Compiling hands the caller to handlers and dependencies directly: a `def` handler (run
    in a thread), a dependency taking the caller, and a generator dependency (left to FastAPI)
    all get it; and the routes, compiled again, still declare their scopes."""

    def routes(app: FastAPI) -> None:
        scoped = [requires("jobs:read")]
        app.add_api_route("/sync", sync_handler, dependencies=scoped)
        app.add_api_route("/nested", nested, dependencies=scoped)
        app.add_api_route("/generator", from_generator, dependencies=scoped)

    async with serve_api(database_url=database_url, redis_url=redis_url, routes=routes) as api:
        main, reporting = auth(api.key("alpha")), auth(api.key("alpha", "jobs-only"))
        assert (await api.client.get("/sync", headers=main)).json() == {"tenant": "team-t/alpha"}
        assert (await api.client.get("/nested", headers=main)).json() == {"tier": "tight"}
        assert (await api.client.get("/generator", headers=main)).json() == {"key": "main"}
        assert (await api.client.get("/sync", headers=reporting)).status_code == 200
        again = RouteTable.compile(api.app.routes, public_paths=public_paths(api.app))
        for path in ("/sync", "/nested", "/generator", "/v1/usage"):
            entry = again.match("GET", path).entry
            assert entry is not None
            assert entry.scopes == ({"usage:read"} if path == "/v1/usage" else {"jobs:read"})
