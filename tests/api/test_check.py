"""The gateway check, in process on real Redis and PostgreSQL: each gateway's convention for
naming the original request, the decisions and headers a gateway acts on, and admission
through the same layer as Tenantry's own routes (scopes, route overrides, metering by
template). `tests/gateways/` runs the same check behind real Caddy and nginx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantry.api.check import original_path
from tenantry.api.server import Listeners
from tenantry.contract.keys import generate_key
from tests.api.conftest import Api, ServeApi, auth, metric
from tests.harness.servers import RedisProcess

CHECK_PORT = 18_081  # what the check's listener is configured with; nothing is bound

PRODUCT_MANIFESTS = """
apiVersion: tenantry.io/v1alpha1
kind: ApiProduct
metadata: {name: flights, namespace: tenantry-system}
spec:
  displayName: Flight data
  routes:
    - {method: GET, path: "/flights/{flight_id}", scopes: ["flights:read"]}
    - {method: POST, path: "/flights/{flight_id}/bookings", scopes: ["bookings:write"]}
    - {method: GET, path: /status, public: true}
---
apiVersion: tenantry.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: gated, namespace: tenantry-system}
spec:
  requestsPerMinute: 6000
  burst: 100
  routes:
    - {method: POST, path: "/flights/{flight_id}/bookings", requestsPerMinute: 60, burst: 1}
---
apiVersion: tenantry.io/v1alpha1
kind: ApiTenant
metadata: {name: flyer, namespace: team-t}
spec:
  displayName: Flyer
  policyRef: {name: gated}
  keys:
    - {name: main}
    - {name: reader, scopes: ["flights:read"]}
    - {name: usage, scopes: ["usage:read"]}
"""


@dataclass
class Check:
    api: Api
    client: httpx.AsyncClient  # to the check's listener

    async def ask(
        self, method: str, target: str, key: str | None = None, **headers: str
    ) -> httpx.Response:
        """Ask as Caddy's `forward_auth` does: GET /authz/ naming the original request."""
        sent = {"X-Forwarded-Method": method, "X-Forwarded-Uri": target, **headers}
        if key is not None:
            sent |= auth(key)
        return await self.client.get("/authz/", headers=sent)


@pytest.fixture
def serve_check(serve_api: ServeApi, manifests: Path) -> Callable[..., Any]:
    (manifests.parent / "products.yaml").write_text(PRODUCT_MANIFESTS)

    @asynccontextmanager
    async def serve(**settings: Any) -> AsyncIterator[Check]:
        gateway = settings.pop("gateway_address", ("10.1.2.3", 40000))
        async with serve_api(check_port=CHECK_PORT, **settings) as api:
            transport = httpx.ASGITransport(app=Listeners(api.app), client=gateway)
            base_url = f"http://127.0.0.1:{CHECK_PORT}"
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield Check(api, client)

    return serve


@pytest.fixture
async def check(
    serve_check: Callable[..., Any], database_url: str, redis_url: str
) -> AsyncIterator[Check]:
    async with serve_check(database_url=database_url, redis_url=redis_url) as running:
        yield running


Ask = Callable[[Check, str, str, dict[str, str]], Awaitable[httpx.Response]]


async def _caddy(check: Check, method: str, target: str, headers: dict[str, str]) -> httpx.Response:
    sent = {"X-Forwarded-Method": method, "X-Forwarded-Uri": target, **headers}
    return await check.client.get("/authz/", headers=sent)


async def _nginx(check: Check, method: str, target: str, headers: dict[str, str]) -> httpx.Response:
    sent = {"X-Original-Method": method, "X-Original-URI": target, **headers}
    return await check.client.get("/authz/", headers=sent)


async def _envoy(check: Check, method: str, target: str, headers: dict[str, str]) -> httpx.Response:
    return await check.client.request(method, "/authz" + target, headers=headers)


CONVENTIONS = pytest.mark.parametrize(
    "ask", [_caddy, _nginx, _envoy], ids=["forward-auth", "nginx-auth-request", "envoy-ext-authz"]
)


@CONVENTIONS
async def test_an_allowed_request_gets_200_with_no_body_and_the_callers_headers(
    check: Check, ask: Ask
) -> None:
    answer = await ask(check, "GET", "/flights/BA117?fields=all", auth(check.api.key("flyer")))
    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["x-tenantry-tenant"] == "team-t/flyer"
    assert answer.headers["x-tenantry-tier"] == "gated"
    assert answer.headers["x-tenantry-key"] == "main"
    assert answer.headers["x-tenantry-scopes"] == "*"
    assert answer.headers["x-request-id"]
    assert answer.headers["ratelimit-policy"] == '"tenant";q=6000;w=60'
    assert answer.headers["x-ratelimit-remaining"] == "100"
    assert "x-frame-options" not in answer.headers  # for browsers; this goes to a gateway


@CONVENTIONS
async def test_refusals_are_the_problems_tenantrys_own_routes_answer(
    check: Check, ask: Ask
) -> None:
    missing = await ask(check, "GET", "/flights/BA117", {})
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["x-content-type-options"] == "nosniff"  # passed on to the client
    assert missing.json()["type"].endswith("/missing-api-key")
    unknown = await ask(check, "GET", "/flights/BA117", auth(generate_key().plaintext))
    assert unknown.status_code == 401
    assert unknown.json()["type"].endswith("/unknown-api-key")
    lacking = await ask(
        check, "POST", "/flights/BA117/bookings", auth(check.api.key("flyer", "reader"))
    )
    assert lacking.status_code == 403
    assert lacking.json()["missing_scopes"] == ["bookings:write"]
    # The tier limits the bookings route to a burst of 1 (two at once), per tenant.
    key = auth(check.api.key("flyer"))
    statuses = [(await ask(check, "POST", "/flights/BA117/bookings", key)) for _ in range(3)]
    assert [answer.status_code for answer in statuses] == [200, 200, 429]
    refused = statuses[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["violated-policies"] == ["route"]
    assert refused.headers["ratelimit-policy"] == '"tenant";q=6000;w=60, "route";q=60;w=60'
    assert "x-tenantry-tenant" not in refused.headers


async def test_a_refusal_asked_by_nginx_also_carries_the_problem_in_a_header(check: Check) -> None:
    refused = await _nginx(check, "GET", "/flights/BA117", {})
    assert refused.status_code == 401
    assert json.loads(refused.headers["x-tenantry-problem"]) == refused.json()
    allowed = await _caddy(check, "GET", "/flights/BA117", {})
    assert "x-tenantry-problem" not in allowed.headers


async def test_a_public_route_passes_without_a_key_and_with_empty_caller_headers(
    check: Check,
) -> None:
    answer = await check.ask("GET", "/status")
    assert answer.status_code == 200
    caller_headers = {k: v for k, v in answer.headers.items() if k.startswith("x-tenantry-")}
    assert caller_headers == dict.fromkeys(
        ("x-tenantry-tenant", "x-tenantry-tier", "x-tenantry-key", "x-tenantry-scopes"), ""
    )
    assert "ratelimit" not in answer.headers


async def test_a_path_no_product_lists_is_admitted_on_the_tenants_limit_under_one_name(
    check: Check,
) -> None:
    key = check.api.key("flyer", "reader")
    for target in ("/airports/LHR", "/airports/CDG?x=1", "/flights/BA117/seats/12A"):
        answer = await check.ask("GET", target, key)
        assert answer.status_code == 200, target
        assert answer.headers["ratelimit-policy"] == '"tenant";q=6000;w=60'
    assert (await check.ask("GET", "/airports/LHR")).status_code == 401  # a key is still needed
    metrics = (await check.api.client.get("/metrics")).text
    assert 'route="<unlisted>"' in metrics
    assert "airports" not in metrics
    assert "12A" not in metrics
    usage = await check.api.client.get("/v1/usage", headers=auth(check.api.key("flyer", "usage")))
    routes = {row["route"]: row["requests"] for row in usage.json()["routes"]}
    assert routes["GET <unlisted>"] == 3


async def test_a_listed_path_takes_only_its_listed_methods(check: Check) -> None:
    reader = check.api.key("flyer", "reader")  # flights:read, not bookings:write
    sneaked = await check.ask("PUT", "/flights/BA117/bookings", reader)
    assert sneaked.status_code == 405
    assert sneaked.headers["allow"] == "POST"
    assert sneaked.json()["type"].endswith("/method-not-allowed")
    head = await check.ask("HEAD", "/flights/BA117", reader)  # a GET route answers HEAD
    assert head.status_code == 200
    unscoped = await check.ask("HEAD", "/flights/BA117", check.api.key("flyer", "usage"))
    assert unscoped.status_code == 403


async def test_admitted_requests_are_metered_by_the_products_route_template(check: Check) -> None:
    key = check.api.key("flyer")
    for flight in ("BA117", "LH400", "AF22"):
        assert (await check.ask("GET", f"/flights/{flight}", key)).status_code == 200
    usage = await check.api.client.get("/v1/usage", headers=auth(check.api.key("flyer", "usage")))
    routes = {row["route"]: row["requests"] for row in usage.json()["routes"]}
    assert routes["GET /flights/{flight_id}"] == 3
    requests = await metric(
        check.api, "tenantry_api_requests_total", route="/flights/{flight_id}", method="GET"
    )
    assert requests == 3


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/flights/BA117", "/flights/BA117"),
        ("/flights/BA117?x=/status", "/flights/BA117"),
        ("/status/../flights/BA117", "/flights/BA117"),
        ("/status/%2e%2e/flights/BA117", "/flights/BA117"),
        ("/./flights//BA117/", "/flights/BA117/"),
        ("/..", "/"),
        ("//status", "/status"),
        ("/a%20b", "/a b"),
        ("flights/BA117", None),
        ("https://evil.example/status", None),
    ],
)
def test_the_original_path_is_matched_as_the_upstream_resolves_it(
    target: str, expected: str | None
) -> None:
    assert original_path(target) == expected


async def test_dot_segments_cannot_dress_a_protected_route_as_a_public_one(check: Check) -> None:
    sneaked = await check.ask("GET", "/status/../flights/BA117")
    assert sneaked.status_code == 401
    scoped = await check.ask("GET", "/status/%2E%2E/flights/BA117", check.api.key("flyer", "usage"))
    assert scoped.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Uri": "/flights/BA117", "X-Original-URI": "/status"},
        {"X-Forwarded-Method": "GET", "X-Original-Method": "POST", "X-Forwarded-Uri": "/status"},
    ],
    ids=["two-paths", "two-methods"],
)
async def test_a_check_request_naming_two_requests_is_refused(
    check: Check, headers: dict[str, str]
) -> None:
    answer = await check.client.get("/authz/", headers=headers)
    assert answer.status_code == 400
    assert answer.json()["type"].endswith("/check-request-invalid")


async def test_a_cors_preflight_is_decided_like_any_request_and_left_to_the_gateway(
    check: Check,
) -> None:
    preflight = {"Origin": "https://app.alpha.example", "Access-Control-Request-Method": "GET"}
    answer = await check.client.options("/authz/flights/BA117", headers=preflight)
    assert answer.status_code == 405  # OPTIONS is not a route of the product
    assert "access-control-allow-methods" not in answer.headers
    unlisted = await check.client.options("/authz/airports/LHR", headers=preflight)
    assert unlisted.status_code == 401  # any other request needs a key
    assert "access-control-allow-methods" not in unlisted.headers


async def test_each_listener_serves_only_its_own_routes(check: Check) -> None:
    on_check = await check.client.get("/v1/limits", headers=auth(check.api.key("flyer")))
    assert on_check.status_code == 404
    on_api = await check.api.client.get("/authz/", headers={"X-Forwarded-Uri": "/status"})
    assert on_api.status_code == 404


async def test_a_registry_swap_changes_the_route_table(check: Check, manifests: Path) -> None:
    key = check.api.key("flyer", "reader")
    assert (await check.ask("GET", "/airports/LHR", key)).status_code == 200
    products = manifests.parent / "products.yaml"
    products.write_text(
        products.read_text().replace(
            "    - {method: GET, path: /status, public: true}",
            "    - {method: GET, path: /status, public: true}\n"
            '    - {method: GET, path: "/airports/{code}", scopes: ["airports:read"]}',
        )
    )
    check.api.reload()
    refused = await check.ask("GET", "/airports/LHR", key)
    assert refused.status_code == 403
    assert refused.json()["missing_scopes"] == ["airports:read"]


async def test_failed_keys_are_limited_per_client_behind_a_trusted_gateway(
    serve_check: Callable[..., Any], database_url: str, redis_url: str
) -> None:
    async with serve_check(
        database_url=database_url,
        redis_url=redis_url,
        trusted_proxies=["10.0.0.0/8"],
        auth_failures_per_minute=1,
        auth_failures_burst=2,
    ) as check:
        bad = generate_key().plaintext
        attacker = {"X-Forwarded-For": "198.51.100.7"}
        statuses = [
            (await check.ask("GET", "/flights/1", bad, **attacker)).status_code for _ in range(5)
        ]
        assert statuses[:3] == [401, 401, 401]
        assert statuses[-1] == 429
        other = await check.ask(
            "GET", "/flights/1", check.api.key("flyer"), **{"X-Forwarded-For": "198.51.100.8"}
        )
        assert other.status_code == 200


async def test_with_redis_down_each_tenant_gets_its_tiers_failure_mode_through_the_check(
    serve_check: Callable[..., Any], database_url: str, own_redis: RedisProcess
) -> None:
    async with serve_check(database_url=database_url, redis_url=own_redis.url) as check:
        closed, opened = check.api.key("shut"), check.api.key("open")
        assert (await check.ask("GET", "/flights/BA117", closed)).status_code == 200
        own_redis.stop()
        refused = await check.ask("GET", "/flights/BA117", closed)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"].endswith("/limiter-unavailable")
        assert (await check.ask("GET", "/flights/BA117", opened)).status_code == 200
        assert check.api.runtime.usage.held == 1  # counted here, merged once Redis is back
