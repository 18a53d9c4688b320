"""What every response carries and what every request is checked for, before any route."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from tenantry.api.problems import ALL_KINDS
from tenantry.api.routes import public
from tenantry.api.versioning import deprecation
from tests.api.conftest import Api, ServeApi, auth

pytestmark = pytest.mark.integration

SECURITY_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize("path", ["/livez", "/v1/limits", "/nowhere"])
async def test_security_headers_are_on_every_response(api: Api, path: str) -> None:
    response = await api.client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "permissions-policy" in response.headers


async def test_authenticated_responses_are_not_stored_by_caches(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers=auth(api.key("open")))
    assert response.headers["cache-control"] == "no-store"


async def test_a_valid_request_id_is_kept_and_echoed(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers={"X-Request-ID": "req-42.abc:1"})
    assert response.headers["x-request-id"] == "req-42.abc:1"
    assert response.json()["request_id"] == "req-42.abc:1"


@pytest.mark.parametrize(
    "hostile",
    [
        "a" * 500,
        "id\u2028with-line-separator",
        '"><script>alert(1)</script>',
        "spaces are not allowed",
        "",
    ],
)
async def test_a_hostile_request_id_is_replaced(api: Api, hostile: str) -> None:
    response = await api.client.get("/livez", headers=[(b"X-Request-ID", hostile.encode("utf-8"))])
    echoed = response.headers["x-request-id"]
    assert echoed != hostile
    assert len(echoed) == 32
    int(echoed, 16)


async def test_a_valid_traceparent_gives_the_request_its_trace_id(api: Api) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await api.client.get(
        "/livez", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    )
    assert response.headers["x-request-id"] == trace
    bad = await api.client.get(
        "/livez", headers={"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}
    )
    assert bad.headers["x-request-id"] != "0" * 32


async def test_an_oversize_body_is_refused_with_413_before_it_is_read(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    reads = []

    async def echo(request: Request) -> dict[str, int]:
        reads.append(1)
        return {"size": len(await request.body())}

    def echo_route(app: FastAPI) -> None:
        app.add_api_route("/v1/echo", echo, methods=["POST"], dependencies=[public])

    async with serve_api(
        database_url=database_url, redis_url=redis_url, max_body_bytes=1000, routes=echo_route
    ) as api:
        ok = await api.client.post("/v1/echo", content=b"x" * 1000)
        assert ok.json() == {"size": 1000}
        reads.clear()
        response = await api.client.post("/v1/echo", content=b"x" * 1001)
        assert response.status_code == 413
        assert response.json()["type"] == "https://tenantry.io/problems/request-too-large"
        assert reads == []  # the route never ran

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 400

        streamed = await api.client.post("/v1/echo", content=stream())
        assert streamed.status_code == 413
        assert "1000 bytes" in streamed.json()["detail"]


async def test_unknown_query_parameters_are_refused(api: Api) -> None:
    response = await api.client.get(
        "/v1/usage",
        params={"fresh": "true", "tenant": "team-a/acme"},
        headers=auth(api.key("open")),
    )
    assert response.status_code == 422
    body = response.json()
    assert body["type"] == "https://tenantry.io/problems/validation-failed"
    assert any(item["field"].endswith("tenant") for item in body["invalid_params"])


async def test_cors_preflight_is_answered_for_an_origin_a_tenant_allows(api: Api) -> None:
    response = await api.client.options(
        "/v1/limits",
        headers={
            "Origin": "https://app.alpha.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.alpha.example"
    assert "authorization" in response.headers["access-control-allow-headers"]
    refused = await api.client.options(
        "/v1/limits",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


async def test_cors_allows_only_the_calling_tenants_origins(api: Api) -> None:
    origin = {"Origin": "https://app.alpha.example"}
    own = await api.client.get("/v1/limits", headers={**auth(api.key("alpha")), **origin})
    assert own.headers["access-control-allow-origin"] == "https://app.alpha.example"
    assert "ratelimit" in own.headers["access-control-expose-headers"]
    other = await api.client.get("/v1/limits", headers={**auth(api.key("open")), **origin})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    assert other.headers["vary"] == "Origin"


async def test_the_access_log_has_one_line_per_request_and_no_key_material(
    serve_api: ServeApi,
    database_url: str,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tenantry.logs import configure_logging

    configure_logging("info", "json")
    try:
        async with serve_api(
            database_url=database_url, redis_url=redis_url, access_log=True
        ) as api:
            key = api.key("alpha")
            capsys.readouterr()
            await api.client.get("/v1/limits", headers={**auth(key), "X-Request-ID": "log-test-1"})
            await api.client.get("/v1/limits", headers=auth(key[:-1] + "Z"))
            output = ""
            deadline = time.monotonic() + 10
            while output.count('"event":"request"') < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # lines are written together, shortly after
                output += capsys.readouterr().out
            lines = [json.loads(line) for line in output.splitlines() if line]
    finally:
        logging.getLogger().handlers.clear()
    requests = [line for line in lines if line.get("event") == "request"]
    assert len(requests) == 2
    first = requests[0]
    assert first["request_id"] == "log-test-1"
    assert first["tenant"] == "team-t/alpha"
    assert first["route"] == "/v1/limits"
    assert first["status"] == 200
    assert first["duration_ms"] >= 0
    everything = json.dumps(lines)
    assert key not in everything
    assert key[16:] not in everything  # not even the secret part


async def test_a_deprecated_route_announces_its_sunset(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    sunset = datetime(2027, 6, 1, tzinfo=UTC)

    async def old_limits() -> dict[str, bool]:
        return {"ok": True}

    def old_route(app: FastAPI) -> None:
        app.add_api_route(
            "/v1/old-limits",
            old_limits,
            deprecated=True,
            dependencies=[deprecation(since=since, sunset=sunset, successor="/v1/limits")],
        )

    async with serve_api(database_url=database_url, redis_url=redis_url, routes=old_route) as api:
        response = await api.client.get("/v1/old-limits", headers=auth(api.key("open")))
        assert response.status_code == 200
        assert response.headers["deprecation"] == f"@{int(since.timestamp())}"
        assert response.headers["sunset"] == "Tue, 01 Jun 2027 00:00:00 GMT"
        assert response.headers["link"] == '</v1/limits>; rel="successor-version"'
        refused = await api.client.get("/v1/old-limits")
        assert refused.status_code == 401
        assert "sunset" in refused.headers


def test_a_sunset_before_the_deprecation_is_refused() -> None:
    with pytest.raises(ValueError, match="sunset"):
        deprecation(since=datetime(2027, 1, 1, tzinfo=UTC), sunset=datetime(2026, 1, 1, tzinfo=UTC))


async def test_the_openapi_document_declares_schemes_scopes_headers_and_problems(
    api: Api,
) -> None:
    document = (await api.client.get("/openapi.json")).json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    usage = document["paths"]["/v1/usage"]["get"]
    assert usage["security"] == [{"bearer": []}, {"apiKey": []}]
    assert usage["x-required-scopes"] == ["usage:read"]
    assert "RateLimit" in usage["responses"]["200"]["headers"]
    assert (
        "insufficient-scope"
        in usage["responses"]["403"]["content"]["application/problem+json"]["examples"]
    )
    assert document["paths"]["/livez"]["get"]["security"] == []
    limits = document["paths"]["/v1/limits"]["get"]
    assert limits["summary"]
    assert limits["x-required-scopes"] == []


def test_every_problem_type_is_documented() -> None:
    documented = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    for kind in ALL_KINDS:
        if kind.status in (404, 405):
            continue
        assert kind.slug in documented, kind.slug
