"""The installed plug-in behind the real admission layer, as a tenant's client sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gps_reliability.score import GOOD_FIX, WEAK_FIX

from tenantry.testing import PluginApi, serve_plugins, tenant, tier

MANIFESTS = [
    # Scoring has a limit of its own: two calls at once (burst 1), then one a minute; every
    # other route has the tier's 600 a minute.
    tier(
        "gps-test",
        requests_per_minute=600,
        burst=50,
        routes=[{"method": "POST", "path": "/v1/gps/score", "requestsPerMinute": 1, "burst": 1}],
    ),
    tenant(
        "acme",
        tier="gps-test",
        keys={"main": None, "device": ["gps:score"], "reporting": ["usage:read"]},
    ),
]


@pytest.fixture
async def api() -> AsyncIterator[PluginApi]:
    """The real app with every installed plug-in, this one included (entry points)."""
    async with serve_plugins(manifests=MANIFESTS, plugins=None) as running:
        yield running


async def score(api: PluginApi, key: str, fix: dict[str, Any] = GOOD_FIX) -> httpx.Response:
    return await api.client.post("/v1/gps/score", json=fix, headers=api.auth("acme", key))


async def test_a_key_with_gps_score_gets_the_score_and_the_rate_limit_headers(
    api: PluginApi,
) -> None:
    answer = await score(api, "device")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["score"], body["grade"], body["weakest"]) == (74, "B", "fix_type")
    assert body["tenant"] == "team-a/acme"
    assert '"route";q=1;w=60' in answer.headers["RateLimit-Policy"]
    assert '"route";r=1;' in answer.headers["RateLimit"]
    assert answer.headers["X-RateLimit-Remaining"] == "1"


async def test_a_key_lacking_the_scope_is_refused_naming_it(api: PluginApi) -> None:
    answer = await score(api, "reporting")
    assert answer.status_code == 403
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "https://tenantry.io/problems/insufficient-scope"
    assert problem["missing_scopes"] == ["gps:score"]
    assert "gps:score" in problem["detail"]


async def test_no_key_is_refused_with_401(api: PluginApi) -> None:
    answer = await api.client.post("/v1/gps/score", json=GOOD_FIX)
    assert answer.status_code == 401
    assert answer.json()["type"] == "https://tenantry.io/problems/missing-api-key"


async def test_an_invalid_fix_is_a_validation_problem(api: PluginApi) -> None:
    answer = await score(api, "device", {**GOOD_FIX, "satellites_used": 15})
    assert answer.status_code == 422
    assert answer.json()["type"] == "https://tenantry.io/problems/validation-failed"


async def test_the_route_override_refuses_after_its_burst_while_other_routes_pass(
    api: PluginApi,
) -> None:
    statuses = [(await score(api, "device")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = await score(api, "device")
    assert refused.status_code == 429
    assert refused.json()["violated-policies"] == ["route"]
    assert int(refused.headers["Retry-After"]) > 0
    batch = await api.client.post(
        "/v1/gps/batches",
        json={"fixes": [GOOD_FIX]},
        headers={**api.auth("acme", "device"), "Idempotency-Key": "still-allowed"},
    )
    assert batch.status_code == 202


async def test_a_batch_runs_as_a_job_whose_result_holds_every_score(api: PluginApi) -> None:
    headers = {**api.auth("acme", "device"), "Idempotency-Key": "batch-1"}
    answer = await api.client.post(
        "/v1/gps/batches", json={"fixes": [GOOD_FIX, WEAK_FIX]}, headers=headers
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "gps.batch-score"
    assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"

    ended = await api.wait_for_job(answer.headers["Location"], api.auth("acme", "main"))
    assert ended["status"] == "succeeded", ended
    result = ended["result"]
    assert result["count"] == 2
    assert [s["score"] for s in result["scores"]] == [74, 22]
    assert result["grades"] == {"A": 0, "B": 1, "C": 0, "D": 0, "F": 1}

    replay = await api.client.post(
        "/v1/gps/batches", json={"fixes": [GOOD_FIX, WEAK_FIX]}, headers=headers
    )
    assert replay.status_code == 202
    assert replay.json()["id"] == job["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"


async def test_a_batch_needs_an_idempotency_key(api: PluginApi) -> None:
    answer = await api.client.post(
        "/v1/gps/batches", json={"fixes": [GOOD_FIX]}, headers=api.auth("acme", "device")
    )
    assert answer.status_code == 422
    assert "Idempotency-Key" in answer.json()["detail"]


async def test_the_health_page_needs_no_key(api: PluginApi) -> None:
    answer = await api.client.get("/v1/gps/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    assert "RateLimit" not in answer.headers


async def test_usage_counts_the_scoring_route_by_its_template(api: PluginApi) -> None:
    for _ in range(2):
        assert (await score(api, "device")).status_code == 200
    answer = await api.client.get("/v1/usage?fresh=true", headers=api.auth("acme", "reporting"))
    assert answer.status_code == 200, answer.text
    usage = answer.json()
    assert {"route": "POST /v1/gps/score", "requests": 2} in usage["routes"]
    assert usage["requests"] == 3  # the two scores and this call


async def test_the_openapi_document_shows_the_routes_and_their_scope(api: PluginApi) -> None:
    document = (await api.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/gps/score"]["post"]
    assert operation["x-required-scopes"] == ["gps:score"]
    assert operation["x-tenantry-plugin"] == "gps"
    assert {"401", "403", "429"} <= set(operation["responses"])
    assert "examples" in document["components"]["schemas"]["Fix"]
    assert document["paths"]["/v1/gps/healthz"]["get"]["security"] == []
