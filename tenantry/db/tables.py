"""Tables. Alembic migrations in `tenantry/db/migrations` create them; this is their shape."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL, JSON text elsewhere (SQLite in `tenantry dev`).
JsonDocument = JSON().with_variant(JSONB(), "postgresql")
# BIGSERIAL on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retries exhausted: the dead-letter state, with the last error
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(Base):
    """A tenant's job. Postgres is its source of truth; the broker only carries its id."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", values_callable=lambda e: [m.value for m in e]),
        default=JobStatus.QUEUED,
    )
    queue: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    result_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    result_content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    trace_context: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        server_default=func.current_timestamp(),
        onupdate=func.current_timestamp(),
    )
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Renewed by the worker running the job; once it lapses the worker is presumed dead. While
    # it is live, the running job holds one of its tenant's `maxConcurrentJobs` slots.
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # A job waiting out a retry backoff is not due (nor re-enqueued) before this moment.
    available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        # Cursor pagination of one tenant's jobs, newest first.
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # The outbox sweep: queued jobs whose enqueue may have been lost.
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
        # The lease sweep: running jobs whose worker stopped renewing.
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # A claim counts the tenant's live leases (its `maxConcurrentJobs` slots in use).
        Index(
            "ix_jobs_running_tenant",
            "tenant_id",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )


class IdempotencyKey(Base):
    """The first response to a `POST` carrying an `Idempotency-Key`, replayed to retries."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(320), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_idempotency_expires", "expires_at"),)


class UsageGranularity(StrEnum):
    MINUTE = "minute"
    DAY = "day"


class UsageFlush(Base):
    """One flush of closed usage buckets from Redis; its id is recorded exactly once."""

    __tablename__ = "usage_flushes"

    flush_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket_count: Mapped[int] = mapped_column(Integer)
    request_count: Mapped[int] = mapped_column(BigInteger)
    flushed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )


class UsageCounter(Base):
    """Admitted requests per tenant, bucket and route; `last_flush_id` names who wrote it last."""

    __tablename__ = "usage_counters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(320))
    granularity: Mapped[UsageGranularity] = mapped_column(
        Enum(
            UsageGranularity,
            name="usage_granularity",
            values_callable=lambda e: [m.value for m in e],
        )
    )
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    route: Mapped[str] = mapped_column(String(300), default="")
    request_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_flush_id: Mapped[str] = mapped_column(ForeignKey("usage_flushes.flush_id"))

    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "granularity", "bucket_start", "route", name="uq_usage_bucket"
        ),
    )


class AuditEntry(Base):
    """Append-only audit trail; each row's hash covers its content and the previous hash."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )
    tenant_id: Mapped[str | None] = mapped_column(String(320), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
