"""Submitting, reading, listing and cancelling jobs: the service behind `/v1/jobs`.

A job is committed to PostgreSQL before its message is published, so a broker that loses the
message (or was never reached) loses no job: the outbox sweep re-sends it. Every query is
scoped by tenant id, so one tenant can never read or touch another's job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.audit import append_audit
from tenantry.contract.registry import TenantEntry
from tenantry.db.tables import IdempotencyKey, Job, JobStatus
from tenantry.jobs import metrics
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.queueing import JobMessage, JobPublisher, PublishError
from tenantry.settings import WorkerSettings

log = structlog.get_logger("tenantry.jobs")

MAX_PAGE_SIZE = 100


class JobError(Exception):
    """Base of what the service refuses; the API maps each to a problem+json status."""


class JobNotFoundError(JobError):
    """No such job for this tenant (another tenant's job is "not found" too)."""


class JobAlreadyEndedError(JobError):
    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"the job already ended ({status.value})")
        self.status = status


class JobNotFinishedError(JobError):
    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"the job has no result: it is {status.value}")
        self.status = status


class IdempotencyKeyReusedError(JobError):
    """The key was used before for a different request body."""


class TenantCannotRunJobsError(JobError):
    """The tenant's policy is unresolved, so there is no queue or concurrency to use."""


class InvalidCursorError(JobError):
    pass


@dataclass(frozen=True)
class JobSubmission:
    kind: str
    payload: Mapping[str, Any]
    idempotency_key: str
    actor: str
    request_id: str | None = None
    trace_context: str | None = None


@dataclass(frozen=True)
class SubmitOutcome:
    """`created` is False when this is a replay of an earlier submission with the same key."""

    job_id: uuid.UUID
    created: bool
    response_status: int
    response_body: dict[str, Any]


@dataclass(frozen=True)
class JobPage:
    jobs: Sequence[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class JobOutput:
    body: bytes
    content_type: str


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it to its tenant."""
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": JobStatus(job.status).value,
        "queue": job.queue,
        "payload": job.payload,
        "result": job.result,
        "has_output": job.result_blob is not None,
        "last_error": job.last_error,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def request_fingerprint(kind: str, payload: Mapping[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_cursor(job: Job) -> str:
    raw = f"{_iso(job.created_at)}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, job_id = raw.split("|", 1)
        return datetime.fromisoformat(moment.replace("Z", "+00:00")), uuid.UUID(job_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidCursorError("cursor: not a cursor this API returned") from error


def message_for(job: Job, kinds: JobKinds, countdown_seconds: float = 0.0) -> JobMessage:
    kind = kinds.get(job.kind)
    return JobMessage(
        job_id=job.id,
        attempt=job.attempts,
        queue=job.queue,
        tenant_id=job.tenant_id,
        countdown_seconds=countdown_seconds,
        soft_time_limit_seconds=kind.soft_time_limit_seconds,
        time_limit_seconds=kind.time_limit_seconds,
        request_id=job.request_id,
        trace_context=job.trace_context,
    )


async def publish_or_leave_to_outbox(publisher: JobPublisher, message: JobMessage) -> bool:
    """Publish; on failure the job stays queued in PostgreSQL and the outbox re-sends it."""
    try:
        await publisher.publish(message)
    except PublishError as error:
        metrics.ENQUEUE_FAILURES.inc()
        log.warning("job.enqueue_failed", job_id=str(message.job_id), error=str(error))
        return False
    return True


class JobsService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        kinds: JobKinds,
        publisher: JobPublisher,
        settings: WorkerSettings,
    ) -> None:
        self.sessions = sessions
        self.kinds = kinds
        self.publisher = publisher
        self.settings = settings

    async def submit(self, tenant: TenantEntry, submission: JobSubmission) -> SubmitOutcome:
        """Create the job, or replay the first response to this idempotency key."""
        kind = self.kinds.get(submission.kind)
        payload = kind.validate(submission.payload).model_dump(mode="json")
        if tenant.limits is None:
            raise TenantCannotRunJobsError(f"tenant {tenant.tenant_id} has no resolved policy")
        fingerprint = request_fingerprint(submission.kind, submission.payload)
        now = datetime.now(UTC)
        async with self.sessions() as session, session.begin():
            claimed = await session.scalar(
                _insert(session)(IdempotencyKey)
                .values(
                    tenant_id=tenant.tenant_id,
                    key=submission.idempotency_key,
                    request_fingerprint=fingerprint,
                    expires_at=now + timedelta(hours=self.settings.idempotency_retention_hours),
                )
                .on_conflict_do_nothing()
                .returning(IdempotencyKey.key)
            )
            if claimed is None:
                # Another request holds this key; its transaction has committed by now (the
                # conflicting insert waited for it), so its response is there to replay.
                record = await session.get(
                    IdempotencyKey, (tenant.tenant_id, submission.idempotency_key)
                )
                assert record is not None
                if record.request_fingerprint != fingerprint:
                    raise IdempotencyKeyReusedError(
                        "Idempotency-Key: already used with a different request body"
                    )
                assert record.job_id is not None
                assert record.response_body is not None
                return SubmitOutcome(
                    record.job_id, False, record.response_status or 202, record.response_body
                )
            job = Job(
                id=uuid.uuid4(),
                tenant_id=tenant.tenant_id,
                kind=kind.name,
                status=JobStatus.QUEUED,
                queue=tenant.limits.job_priority.queue,
                payload=payload,
                attempts=0,
                max_attempts=kind.max_attempts,
                cancel_requested=False,
                request_id=submission.request_id,
                trace_context=submission.trace_context,
                created_at=now,
                enqueued_at=now,
            )
            session.add(job)
            await session.flush()
            body = job_view(job)
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.tenant_id == tenant.tenant_id,
                    IdempotencyKey.key == submission.idempotency_key,
                )
                .values(job_id=job.id, response_status=202, response_body=body)
            )
            await append_audit(
                session,
                actor=submission.actor,
                action="job.submitted",
                tenant_id=tenant.tenant_id,
                detail={"job_id": str(job.id), "kind": job.kind},
                request_id=submission.request_id,
            )
        metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
        await publish_or_leave_to_outbox(self.publisher, message_for(job, self.kinds))
        return SubmitOutcome(job.id, True, 202, body)

    async def get(self, tenant_id: str, job_id: uuid.UUID) -> Job:
        async with self.sessions() as session:
            job = await session.scalar(
                select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
            )
        if job is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return job

    async def list(
        self,
        tenant_id: str,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """Newest first; `next_cursor` continues after the last job of this page."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise JobError(f"limit: must be between 1 and {MAX_PAGE_SIZE}")
        query = select(Job).where(Job.tenant_id == tenant_id)
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if cursor is not None:
            after, after_id = decode_cursor(cursor)
            query = query.where(
                or_(Job.created_at < after, and_(Job.created_at == after, Job.id < after_id))
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        async with self.sessions() as session:
            jobs = list((await session.scalars(query)).all())
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs, encode_cursor(jobs[-1]) if more and jobs else None)

    async def cancel(
        self, tenant_id: str, job_id: uuid.UUID, *, actor: str, request_id: str | None = None
    ) -> Job:
        """One atomic transition: a queued job becomes `cancelled` at once; a running one is
        flagged and its worker stops it; an ended job is refused."""
        queued = Job.status == JobStatus.QUEUED
        async with self.sessions() as session, session.begin():
            job = await session.scalar(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.tenant_id == tenant_id,
                    Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                )
                .values(
                    cancel_requested=True,
                    status=case((queued, JobStatus.CANCELLED), else_=Job.status),
                    finished_at=case((queued, func.now()), else_=Job.finished_at),
                    last_error=case((queued, "cancelled"), else_=Job.last_error),
                )
                .returning(Job)
                .execution_options(synchronize_session=False)
            )
            if job is None:
                existing = await session.scalar(
                    select(Job.status).where(Job.id == job_id, Job.tenant_id == tenant_id)
                )
                if existing is None:
                    raise JobNotFoundError(f"job {job_id} not found")
                raise JobAlreadyEndedError(JobStatus(existing))
            await append_audit(
                session,
                actor=actor,
                action="job.cancelled",
                tenant_id=tenant_id,
                detail={"job_id": str(job_id), "status": JobStatus(job.status).value},
                request_id=request_id,
            )
        return job

    async def output(self, tenant_id: str, job_id: uuid.UUID) -> JobOutput:
        """A succeeded job's file (e.g. the CSV of `usage.export`), or its JSON result."""
        job = await self.get(tenant_id, job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise JobNotFinishedError(JobStatus(job.status))
        if job.result_blob is not None:
            return JobOutput(job.result_blob, job.result_content_type or "application/octet-stream")
        return JobOutput(json.dumps(job.result or {}).encode(), "application/json")


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
