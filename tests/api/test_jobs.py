"""`/v1/jobs` over HTTP: the real app on real PostgreSQL and Redis (the broker)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tenantry.db.engine import session_factory
from tenantry.db.migrate import upgrade
from tenantry.dev import create_dev_app
from tenantry.jobs.breaker import CircuitBreakers
from tenantry.jobs.service import JobsService
from tenantry.settings import Settings
from tenantry.sources.files import FileRegistrySource
from tenantry.worker.execution import Verdict, WorkerContext, execute_job
from tests.api.conftest import Api, auth
from tests.worker.conftest import wait_for

pytestmark = pytest.mark.integration

NOOP: dict[str, Any] = {"kind": "noop", "payload": {}}
HOOK: dict[str, Any] = {
    "kind": "webhook.deliver",
    "payload": {"url": "https://hooks.example.com/in", "body": {"order": 42}},
}


def headers(api: Api, tenant: str = "open", key: str | None = None, **extra: str) -> dict[str, str]:
    return {**auth(api.key(tenant)), "Idempotency-Key": key or uuid.uuid4().hex, **extra}


async def submit(api: Api, body: dict[str, Any], tenant: str = "open") -> dict[str, Any]:
    response = await api.client.post("/v1/jobs", json=body, headers=headers(api, tenant))
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def run_queued(api: Api, job_id: str) -> Verdict:
    """Run the job's first attempt with the worker's own execution code."""
    service: JobsService = api.app.state.jobs  # built by the first request to /v1/jobs
    assert api.runtime.engine is not None
    context = WorkerContext(
        settings=api.settings.worker,
        sessions=session_factory(api.runtime.engine),
        kinds=service.kinds,
        registry=api.runtime.holder,
        publisher=service.publisher,
        breakers=CircuitBreakers(5, 30),
    )
    return await execute_job(context, uuid.UUID(job_id), 0)


async def test_a_job_is_accepted_stored_and_queued_on_the_tenants_queue(
    api: Api, redis_url: str
) -> None:
    response = await api.client.post("/v1/jobs", json=HOOK, headers=headers(api))
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["queue"] == "jobs.default"
    fetched = await api.client.get(f"/v1/jobs/{job['id']}", headers=auth(api.key("open")))
    assert fetched.json() == job
    assert redis.Redis.from_url(redis_url).llen("jobs.default") == 1


async def test_a_retry_replays_and_a_different_body_is_refused(api: Api) -> None:
    sent = headers(api, key="order-42")
    first = await api.client.post("/v1/jobs", json=HOOK, headers=sent)
    again = await api.client.post("/v1/jobs", json=HOOK, headers=sent)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = {**HOOK, "payload": {**HOOK["payload"], "body": {"order": 43}}}
    refused = await api.client.post("/v1/jobs", json=other, headers=sent)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "https://tenantry.io/problems/idempotency-key-reused"


async def test_100_concurrent_identical_posts_make_one_job(api: Api) -> None:
    sent = headers(api, key="one-key")
    responses = await asyncio.gather(
        *(api.client.post("/v1/jobs", json=NOOP, headers=sent) for _ in range(100))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    listed = await api.client.get("/v1/jobs", headers=auth(api.key("open")))
    assert len(listed.json()["jobs"]) == 1


@pytest.mark.parametrize(
    ("body", "drop_key", "field"),
    [
        (HOOK, True, "header.Idempotency-Key"),
        ({"kind": "webhook.send", "payload": {}}, False, "body.kind"),
        ({**HOOK, "payload": {**HOOK["payload"], "color": "red"}}, False, "body.payload.color"),
        ({**HOOK, "priority": "high"}, False, "body.priority"),
        (
            {"kind": "usage.export", "payload": {"start": "2026-13-01", "end": "2026-01-01"}},
            False,
            "body.payload.start",
        ),
    ],
)
async def test_bad_submissions_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], drop_key: bool, field: str
) -> None:
    sent = headers(api)
    if drop_key:
        del sent["Idempotency-Key"]
    response = await api.client.post("/v1/jobs", json=body, headers=sent)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert field in [p["field"] for p in problem["invalid_params"]]
    assert problem["request_id"]


async def test_a_tenant_never_sees_or_touches_another_tenants_job(api: Api) -> None:
    theirs = await submit(api, NOOP, tenant="metered")
    mine = auth(api.key("open"))
    for method, path in [
        ("GET", f"/v1/jobs/{theirs['id']}"),
        ("GET", f"/v1/jobs/{theirs['id']}/result"),
        ("POST", f"/v1/jobs/{theirs['id']}/cancel"),
    ]:
        response = await api.client.request(method, path, headers=mine)
        assert response.status_code == 404, (method, path)
        assert response.json()["type"] == "https://tenantry.io/problems/job-not-found"
    assert (await api.client.get("/v1/jobs", headers=mine)).json()["jobs"] == []
    owner = await api.client.get(f"/v1/jobs/{theirs['id']}", headers=auth(api.key("metered")))
    assert owner.json()["status"] == "queued"  # untouched


async def test_a_read_only_key_cannot_submit_or_cancel(api: Api) -> None:
    job = await submit(api, NOOP, tenant="alpha")
    read_only = auth(api.key("alpha", "jobs-only"))
    refused = await api.client.post(
        "/v1/jobs", json=NOOP, headers={**read_only, "Idempotency-Key": "k"}
    )
    assert refused.status_code == 403
    assert refused.json()["missing_scopes"] == ["jobs:write"]
    cancel = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=read_only)
    assert cancel.status_code == 403
    assert (await api.client.get(f"/v1/jobs/{job['id']}", headers=read_only)).status_code == 200


async def test_listing_pages_with_a_cursor_and_filters(api: Api) -> None:
    ids = [(await submit(api, NOOP))["id"] for _ in range(5)]
    hook = await submit(api, HOOK)
    mine = auth(api.key("open"))
    seen: list[str] = []
    params: dict[str, Any] = {"kind": "noop", "limit": 2}
    while True:
        page = (await api.client.get("/v1/jobs", params=params, headers=mine)).json()
        seen += [job["id"] for job in page["jobs"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(reversed(ids))
    await api.client.post(f"/v1/jobs/{hook['id']}/cancel", headers=mine)
    cancelled = await api.client.get("/v1/jobs", params={"status": "cancelled"}, headers=mine)
    assert [job["id"] for job in cancelled.json()["jobs"]] == [hook["id"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "query.status"),
        ({"limit": 1000}, "query.limit"),
        ({"cursor": "not-ours"}, "query.cursor"),
        ({"color": "red"}, "query.color"),
    ],
)
async def test_bad_list_queries_are_refused(api: Api, params: dict[str, Any], field: str) -> None:
    response = await api.client.get("/v1/jobs", params=params, headers=auth(api.key("open")))
    assert response.status_code == 422, response.text
    assert field in [p["field"] for p in response.json()["invalid_params"]]


async def test_cancel_is_a_transition_and_an_ended_job_is_a_conflict(api: Api) -> None:
    job = await submit(api, HOOK)
    mine = auth(api.key("open"))
    cancelled = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=mine)
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    again = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=mine)
    assert again.status_code == 409
    assert again.json()["status"] == "cancelled"
    assert again.json()["type"] == "https://tenantry.io/problems/job-already-ended"


async def test_the_result_is_served_once_the_job_succeeded(api: Api) -> None:
    mine = auth(api.key("open"))
    noop = await submit(api, NOOP)
    early = await api.client.get(f"/v1/jobs/{noop['id']}/result", headers=mine)
    assert early.status_code == 409
    assert early.json()["type"] == "https://tenantry.io/problems/job-not-finished"
    assert await run_queued(api, noop["id"]) is Verdict.SUCCEEDED
    result = await api.client.get(f"/v1/jobs/{noop['id']}/result", headers=mine)
    assert result.status_code == 200
    assert result.json() == {"ok": True}

    export = await submit(
        api, {"kind": "usage.export", "payload": {"start": "2026-11-01", "end": "2026-11-30"}}
    )
    assert await run_queued(api, export["id"]) is Verdict.SUCCEEDED
    csv = await api.client.get(f"/v1/jobs/{export['id']}/result", headers=mine)
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.text == "bucket_start,route,requests\n"
    assert "attachment" in csv.headers["content-disposition"]


async def test_no_broker_answers_503_not_500(serve_api: Any, database_url: str) -> None:
    async with serve_api(database_url=database_url, redis_url=None) as api:
        response = await api.client.post("/v1/jobs", json=NOOP, headers=headers(api))
    assert response.status_code == 503
    assert "TENANTRY_REDIS_URL" in response.json()["detail"]


async def test_dev_runs_jobs_in_process_on_sqlite(tmp_path: Path, manifests: Path) -> None:
    """`tenantry dev`: no broker, no Redis, no PostgreSQL, and a job still runs to the end."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}"
    await asyncio.to_thread(upgrade, database_url)
    settings = Settings(
        database_url=database_url,
        redis_url=None,
        registry={"manifests": [manifests.parent], "keys_file": tmp_path / "keys.json"},
    )
    source = FileRegistrySource(
        settings.registry.manifests,
        platform_namespace=settings.platform_namespace,
        keys_file=settings.registry.keys_file,
    )
    key = source.reconcile().keys["team-t/open"].keys["main"].plaintext
    app = create_dev_app(settings, source=source)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://dev") as client,
    ):
        sent = {**auth(key), "Idempotency-Key": "first-job"}
        created = await client.post("/v1/jobs", json=NOOP, headers=sent)
        assert created.status_code == 202
        job_url = created.headers["Location"]

        async def succeeded() -> bool:
            response = await client.get(job_url, headers=auth(key))
            return bool(response.json()["status"] == "succeeded")

        await wait_for(succeeded, what="the dev job to succeed")
        result = await client.get(f"{job_url}/result", headers=auth(key))
    assert result.json() == {"ok": True}
