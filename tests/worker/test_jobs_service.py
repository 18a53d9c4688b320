"""Submitting, reading, listing and cancelling jobs against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tenantry.audit import verify_chain
from tenantry.db.tables import AuditEntry, Job, JobStatus
from tenantry.jobs.kinds import InvalidPayloadError, UnknownJobKindError
from tenantry.jobs.service import (
    IdempotencyKeyReusedError,
    InvalidCursorError,
    JobAlreadyEndedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobSubmission,
)
from tests.worker.conftest import ACME, GLOBEX, Harness

pytestmark = pytest.mark.integration

HOOK: dict[str, Any] = {"url": "https://hooks.example.com/in", "body": {"order": 42}}


def submission(key: str, payload: dict[str, Any] = HOOK) -> JobSubmission:
    return JobSubmission(
        kind="webhook.deliver", payload=payload, idempotency_key=key, actor="key:abc"
    )


async def test_a_submitted_job_is_queued_on_its_tenants_priority_queue(harness: Harness) -> None:
    job_id = await harness.submit("webhook.deliver", HOOK)
    job = await harness.job(job_id)
    assert job.status == JobStatus.QUEUED
    assert job.queue == "jobs.default"
    assert job.max_attempts == 8
    assert harness.queue.pending() == 1  # committed, then enqueued


async def test_retry_with_same_key_and_body_replays_the_first_response(harness: Harness) -> None:
    tenant = harness.holder.registry.tenants[ACME]
    first = await harness.service.submit(tenant, submission("order-42"))
    again = await harness.service.submit(tenant, submission("order-42"))
    assert first.created
    assert not again.created
    assert again.job_id == first.job_id
    assert again.response_body == first.response_body
    assert again.response_status == 202


async def test_same_key_with_a_different_body_is_refused(harness: Harness) -> None:
    tenant = harness.holder.registry.tenants[ACME]
    await harness.service.submit(tenant, submission("order-42"))
    other = {"url": "https://hooks.example.com/in", "body": {"order": 43}}
    with pytest.raises(IdempotencyKeyReusedError, match="different request body"):
        await harness.service.submit(tenant, submission("order-42", other))


async def test_the_same_key_in_two_tenants_makes_two_jobs(harness: Harness) -> None:
    tenants = harness.holder.registry.tenants
    one = await harness.service.submit(tenants[ACME], submission("k"))
    two = await harness.service.submit(tenants[GLOBEX], submission("k"))
    assert one.job_id != two.job_id


async def test_100_concurrent_identical_posts_with_one_key_make_one_job(harness: Harness) -> None:
    tenant = harness.holder.registry.tenants[ACME]
    outcomes = await asyncio.gather(
        *(harness.service.submit(tenant, submission("burst")) for _ in range(100))
    )
    assert {o.job_id for o in outcomes} == {outcomes[0].job_id}
    assert sum(o.created for o in outcomes) == 1
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 1
    assert harness.queue.pending() == 1


@pytest.mark.parametrize(
    ("kind", "payload", "error", "message"),
    [
        ("webhook.send", HOOK, UnknownJobKindError, "unknown job kind 'webhook.send'"),
        ("webhook.deliver", {**HOOK, "color": "red"}, InvalidPayloadError, "color: Extra"),
        ("webhook.deliver", {"body": {}}, InvalidPayloadError, "url"),
        ("webhook.deliver", {**HOOK, "url": "ftp://x.example"}, InvalidPayloadError, "url"),
        (
            "usage.export",
            {"start": "2026-02-01", "end": "2026-01-01"},
            InvalidPayloadError,
            "before start",
        ),
    ],
)
async def test_unknown_kinds_and_bad_payloads_are_refused_with_the_reason(
    harness: Harness,
    kind: str,
    payload: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await harness.submit(kind, payload)
    async with harness.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0


async def test_a_tenant_never_sees_or_touches_another_tenants_job(harness: Harness) -> None:
    job_id = await harness.submit("webhook.deliver", HOOK, tenant_id=ACME)
    service = harness.service
    with pytest.raises(JobNotFoundError):
        await service.get(GLOBEX, job_id)
    with pytest.raises(JobNotFoundError):
        await service.cancel(GLOBEX, job_id, actor="key:globex")
    with pytest.raises(JobNotFoundError):
        await service.output(GLOBEX, job_id)
    assert (await service.list(GLOBEX)).jobs == []
    assert (await service.get(ACME, job_id)).status == JobStatus.QUEUED  # untouched


async def test_listing_pages_newest_first_and_filters(harness: Harness) -> None:
    ids = [await harness.submit("webhook.deliver", HOOK) for _ in range(5)]
    export = await harness.submit("usage.export", {"start": "2026-01-01", "end": "2026-01-31"})
    await harness.service.cancel(ACME, ids[0], actor="key:abc")
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await harness.service.list(ACME, kind="webhook.deliver", limit=2, cursor=cursor)
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    cancelled = await harness.service.list(ACME, status=JobStatus.CANCELLED)
    assert [job.id for job in cancelled.jobs] == [ids[0]]
    exports = await harness.service.list(ACME, kind="usage.export")
    assert [job.id for job in exports.jobs] == [export]


async def test_a_cursor_that_was_not_issued_is_refused(harness: Harness) -> None:
    with pytest.raises(InvalidCursorError, match="cursor"):
        await harness.service.list(ACME, cursor="not-a-cursor!")


async def test_cancelling_a_queued_job_ends_it_and_a_second_cancel_is_a_conflict(
    harness: Harness,
) -> None:
    job_id = await harness.submit("webhook.deliver", HOOK)
    job = await harness.service.cancel(ACME, job_id, actor="key:abc")
    assert job.status == JobStatus.CANCELLED
    assert job.finished_at is not None
    with pytest.raises(JobAlreadyEndedError, match="cancelled"):
        await harness.service.cancel(ACME, job_id, actor="key:abc")
    with pytest.raises(JobNotFinishedError, match="cancelled"):
        await harness.service.output(ACME, job_id)


async def test_submissions_and_cancellations_are_audited_in_an_intact_chain(
    harness: Harness,
) -> None:
    job_id = await harness.submit("webhook.deliver", HOOK)
    await harness.service.cancel(ACME, job_id, actor="key:abc")
    async with harness.sessions() as session:
        actions = (await session.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
        report = await verify_chain(session)
    assert actions == ["job.submitted", "job.cancelled"]
    assert report.intact
    assert report.rows == 2


@pytest.mark.parametrize(
    ("tampering", "reason"),
    [
        ("UPDATE audit_log SET actor = 'key:someone-else' WHERE id = 2", "content altered"),
        ("DELETE FROM audit_log WHERE id = 2", "link does not match"),
    ],
)
async def test_an_altered_or_deleted_audit_row_is_detected(
    harness: Harness, tampering: str, reason: str
) -> None:
    for _ in range(3):
        await harness.submit("webhook.deliver", HOOK)
    async with harness.sessions() as session, session.begin():
        # A superuser can get around the append-only trigger; the chain still shows it.
        await session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await session.execute(text(tampering))
        await session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    async with harness.sessions() as session:
        report = await verify_chain(session)
    assert not report.intact
    assert report.broken_at in (2, 3)
    assert reason in (report.reason or "")


async def test_audit_verify_command_reports_the_first_broken_row(
    harness: Harness, database_url: str
) -> None:
    for _ in range(3):
        await harness.submit("webhook.deliver", HOOK)
    env = {**os.environ, "TENANTRY_DATABASE_URL": database_url}
    intact = await asyncio.to_thread(verify_command, env)
    assert intact.returncode == 0
    assert intact.stdout.strip() == "ok: 3 audit rows, chain intact"
    async with harness.sessions() as session, session.begin():
        await session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        await session.execute(text("UPDATE audit_log SET detail = '{}' WHERE id = 2"))
    broken = await asyncio.to_thread(verify_command, env)
    assert broken.returncode == 1
    assert broken.stderr.startswith("broken: row 2: row content altered")


def verify_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tenantry = str(Path(sys.executable).parent / "tenantry")
    return subprocess.run(
        [tenantry, "audit", "verify"], env=env, capture_output=True, text=True, check=False
    )
