"""The gateway check behind real gateways: Caddy (`forward_auth`) and nginx (`auth_request`)
running the configurations shipped in `examples/gateways/`, in front of an upstream that
records what reached it. Every behaviour is one test, run once behind each gateway.

Each request names a path of its own (a fresh flight id), so what the upstream saw for it is
told apart from every other test's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantry.contract.keys import generate_key
from tests.gateways.conftest import (
    FARES_BURST,
    SEATS_BURST,
    SLOW_RATE,
    TIER,
    TenantryApi,
    Tenants,
    manifests,
    start_gateway,
    wait_for,
)
from tests.harness.gateways import (
    CADDYFILE,
    NGINX_TEMPLATE,
    REPO,
    Gateway,
    NginxGateway,
    RecordingUpstream,
    caddy_binary,
    render_nginx_template,
)
from tests.harness.servers import free_port

pytestmark = pytest.mark.integration

PROBLEMS = "https://tenantry.io/problems/"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
IDENTITY = ("X-Tenantry-Tenant", "X-Tenantry-Tier", "X-Tenantry-Key", "X-Tenantry-Scopes")
RATE_LIMIT_HEADERS = (
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def flight() -> str:
    """A path of the product no other request names."""
    return f"/flights/{uuid.uuid4().hex}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def mistyped(key: str) -> str:
    """The key with its last character changed, as a client that copied it badly sends it."""
    return key[:-1] + ("1" if key.endswith("0") else "0")


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response's problem document, once its status and media type are the refusal's."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json", response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


def test_a_valid_key_reaches_the_upstream_which_learns_who_called(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    path = flight()
    request_id = f"trace-{uuid.uuid4().hex}"
    response = client.get(path, headers={**bearer(tenants.key("acme")), "X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "served_by": "upstream",
        "method": "GET",
        "path": path,
        "body_bytes": 0,
    }
    # The client sees its allowance, as on Tenantry's own routes.
    assert all(name in response.headers for name in RATE_LIMIT_HEADERS), response.headers
    (seen,) = upstream.seen(path)
    assert [seen.header(name) for name in IDENTITY] == [
        f"{tenants.namespace}/acme",
        TIER,
        "main",
        "*",
    ]
    assert seen.header("X-Request-ID") == request_id  # the client's, carried through
    # The key was for Tenantry: the upstream never sees key material.
    assert seen.header("Authorization") is None
    assert seen.header("X-API-Key") is None


def test_a_key_in_x_api_key_with_some_scopes_is_named_with_its_scopes(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    path = flight()
    response = client.get(path, headers={"X-API-Key": tenants.key("acme", "reader")})
    assert response.status_code == 200, response.text
    (seen,) = upstream.seen(path)
    assert seen.header("X-Tenantry-Key") == "reader"
    assert seen.header("X-Tenantry-Scopes") == "flights:read"
    request_id = seen.header("X-Request-ID")
    assert request_id  # Tenantry's own, as none was sent
    assert seen.header("X-API-Key") is None


@pytest.mark.parametrize(
    ("credentials", "problem_type"),
    [
        pytest.param(lambda tenants: {}, "missing-api-key", id="no-key"),
        pytest.param(lambda tenants: bearer("not-a-key"), "malformed-api-key", id="malformed"),
        pytest.param(
            lambda tenants: bearer(generate_key().plaintext), "unknown-api-key", id="unknown"
        ),
        pytest.param(
            lambda tenants: {"X-API-Key": mistyped(tenants.key("acme"))},
            "malformed-api-key",
            id="mistyped",
        ),
    ],
)
def test_a_missing_or_bad_key_gets_401_problem_and_the_upstream_is_never_called(
    client: httpx.Client,
    tenants: Tenants,
    upstream: RecordingUpstream,
    credentials: Any,
    problem_type: str,
) -> None:
    path = flight()
    response = client.get(path, headers=credentials(tenants))
    problem = problem_of(response, 401)
    assert problem["type"] == PROBLEMS + problem_type
    assert upstream.seen(path) == []


def test_past_the_burst_the_client_gets_429_with_retry_after_and_the_problem(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    acme = bearer(tenants.key("acme"))
    paths = [flight() + "/seats" for _ in range(SEATS_BURST + 2)]
    statuses = [client.get(path, headers=acme).status_code for path in paths[:-1]]
    assert statuses == [200] * (SEATS_BURST + 1)
    refused = client.get(paths[-1], headers=acme)
    problem = problem_of(refused, 429)
    assert problem["type"] == QUOTA_EXCEEDED
    assert problem["violated-policies"] == ["route"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"].endswith(f'"route";q={SLOW_RATE};w=60')
    assert [len(upstream.seen(path)) for path in paths] == [1] * (SEATS_BURST + 1) + [0]
    # A tenant's limit is its own: another tenant still passes on the same route.
    other = client.get(flight() + "/seats", headers=bearer(tenants.key("globex")))
    assert other.status_code == 200, other.text


def test_a_route_needing_a_scope_the_key_lacks_gets_403_problem(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    path = flight() + "/bookings"
    response = client.post(
        path, headers=bearer(tenants.key("acme", "reader")), json={"seat": "12A"}
    )
    problem = problem_of(response, 403)
    assert problem["type"] == PROBLEMS + "insufficient-scope"
    assert problem["missing_scopes"] == ["bookings:write"]
    assert upstream.seen(path) == []


def test_a_method_the_product_does_not_list_on_a_listed_path_gets_405(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    path = flight() + "/bookings"
    response = client.put(path, headers=bearer(tenants.key("acme", "reader")), json={})
    problem = problem_of(response, 405)
    assert problem["type"] == PROBLEMS + "method-not-allowed"
    assert response.headers["allow"] == "POST"
    assert upstream.seen(path) == []


def test_an_allowed_post_reaches_the_upstream_with_its_body(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    path = flight() + "/bookings"
    body = json.dumps({"seat": "12A", "passenger": "x" * 20_000}).encode()
    response = client.post(
        path,
        headers={**bearer(tenants.key("acme")), "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == 200, response.text
    (seen,) = upstream.seen(path)
    assert (seen.method, seen.body) == ("POST", body)


def test_a_public_route_passes_without_a_key(
    client: httpx.Client, upstream: RecordingUpstream
) -> None:
    path = f"/status?probe={uuid.uuid4().hex}"
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.json()["path"] == path
    (seen,) = upstream.seen(path)
    assert [seen.header(name) for name in IDENTITY] == [None] * len(IDENTITY)


@pytest.mark.parametrize(
    ("route", "key", "expected"),
    [
        pytest.param("flight", "reader", ["acme", TIER, "reader", "flights:read"], id="with-a-key"),
        pytest.param("status", None, [None, None, None, None], id="public-route-no-key"),
    ],
)
def test_x_tenantry_headers_the_client_sends_never_reach_the_upstream(
    client: httpx.Client,
    tenants: Tenants,
    upstream: RecordingUpstream,
    route: str,
    key: str | None,
    expected: list[str | None],
) -> None:
    path = flight() if route == "flight" else f"/status?probe={uuid.uuid4().hex}"
    forged = {
        "X-Tenantry-Tenant": f"{tenants.namespace}/globex",
        "X-Tenantry-Tier": "enterprise",
        "X-Tenantry-Key": "admin",
        "X-Tenantry-Scopes": "*",
    }
    headers = {**forged, **(bearer(tenants.key("acme", key)) if key else {})}
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    (seen,) = upstream.seen(path)
    tenant, *rest = expected
    wanted = [None if tenant is None else f"{tenants.namespace}/{tenant}", *rest]
    assert [seen.header_values(name) for name in IDENTITY] == [
        [] if value is None else [value] for value in wanted
    ]


def test_a_client_cannot_make_the_check_judge_another_request(
    client: httpx.Client, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    """Each gateway names the original request in its own headers; a client that sends the
    other convention's (or the same) names for a public route is judged on what it really
    asks for."""
    disguise = {
        "X-Original-Method": "GET",
        "X-Original-URI": "/status",
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/status",
    }
    booking = flight() + "/bookings"
    lacking = client.post(booking, headers={**disguise, **bearer(tenants.key("acme", "reader"))})
    assert problem_of(lacking, 403)["type"] == PROBLEMS + "insufficient-scope"
    keyless = flight()
    assert problem_of(client.get(keyless, headers=disguise), 401)["type"] == (
        PROBLEMS + "missing-api-key"
    )
    assert upstream.seen(booking) == upstream.seen(keyless) == []


def test_a_revoked_key_is_refused_within_seconds(
    gateway: Gateway, client: httpx.Client, tenantry_api: TenantryApi, tenants: Tenants
) -> None:
    """A key added to the manifests is served once the file source has issued it; removed,
    it is refused. The manifests end as they began."""
    name = f"temporary-{gateway.name}"
    tenantry_api.declare(manifests(extra_key=(tenants.namespace, name)))
    try:
        key = wait_for(lambda: tenants.issued_key("acme", name), f"key {name} issued")
        wait_for(
            lambda: client.get(flight(), headers=bearer(key)).status_code == 200,
            f"key {name} admitted",
        )
    finally:
        tenantry_api.declare(manifests())

    def refusal() -> httpx.Response | None:
        response = client.get(flight(), headers=bearer(key))
        return response if response.status_code == 401 else None

    refused = wait_for(refusal, f"key {name} refused")
    assert problem_of(refused, 401)["type"] == PROBLEMS + "revoked-api-key"


async def test_limits_are_exact_under_concurrent_clients_through_the_gateway(
    gateway: Gateway, tenantry_api: TenantryApi, tenants: Tenants, upstream: RecordingUpstream
) -> None:
    """300 requests, 20 at a time, on a route allowing FARES_BURST + 1 at once: exactly
    that many pass (one more per minute of refill), every other one gets 429, and the
    usage Tenantry reports is the admitted count."""
    allowance = FARES_BURST + 1
    run = uuid.uuid4().hex
    headers = bearer(tenants.key("globex"))
    gate = asyncio.Semaphore(20)
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)

    async def call(client: httpx.AsyncClient, number: int) -> int:
        async with gate:
            response = await client.get(f"/flights/{run}-{number}/fares", headers=headers)
            return response.status_code

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60.0, limits=limits) as client:
        statuses = Counter(await asyncio.gather(*(call(client, n) for n in range(300))))
    refill = int((time.monotonic() - started) * SLOW_RATE / 60) + 1
    assert set(statuses) <= {200, 429}, statuses
    assert allowance <= statuses[200] <= allowance + refill, statuses
    assert len(upstream.seen_under(f"/flights/{run}-")) == statuses[200]

    async with httpx.AsyncClient(base_url=tenantry_api.url, timeout=30.0) as api:
        usage = (await api.get("/v1/usage?fresh=true", headers=headers)).json()
    assert {"route": "GET /flights/{flight_id}/fares", "requests": statuses[200]} in usage[
        "routes"
    ], usage


@pytest.mark.parametrize("kind", ["caddy", "nginx"])
def test_when_the_check_cannot_be_reached_the_request_is_refused(
    kind: str, upstream: RecordingUpstream
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    gateway = start_gateway(kind, nowhere, upstream.address)
    try:
        path = f"/status?probe={uuid.uuid4().hex}"
        response = httpx.get(gateway.url + path, timeout=30.0)
    finally:
        gateway.remove()
    assert response.status_code == 502
    assert upstream.seen(path) == []


def test_the_shipped_caddyfile_is_valid_and_formatted(tmp_path: Path) -> None:
    caddy = str(caddy_binary())
    env = {
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TENANTRY_CHECK_ADDRESS": "127.0.0.1:8081",
        "UPSTREAM_ADDRESS": "127.0.0.1:9000",
    }
    validated = subprocess.run(
        [caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr
    formatted = subprocess.run(
        [caddy, "fmt", str(CADDYFILE)], capture_output=True, text=True, check=True
    )
    assert formatted.stdout == CADDYFILE.read_text()


def test_the_rendered_nginx_configuration_passes_nginx_t() -> None:
    gateway = NginxGateway(check="127.0.0.1:8081", upstream="127.0.0.1:9000")
    try:
        tested = gateway.test_configuration()
    finally:
        gateway.remove()
    assert tested.returncode == 0, tested.stderr
    assert "test is successful" in tested.stderr


def test_the_nginx_template_refuses_a_placeholder_without_a_value() -> None:
    with pytest.raises(KeyError, match="UPSTREAM_ADDRESS"):
        render_nginx_template(
            {"GATEWAY_BIND": "127.0.0.1", "GATEWAY_PORT": "80", "TENANTRY_CHECK_ADDRESS": "x"}
        )


@pytest.mark.parametrize("shipped", [CADDYFILE, NGINX_TEMPLATE], ids=lambda path: path.name)
def test_docs_show_the_tested_configurations_as_they_are(shipped: Path) -> None:
    documented = (REPO / "docs" / "gateways.md").read_text()
    assert shipped.read_text().strip() in documented
