"""Housekeeping that keeps PostgreSQL the source of truth for jobs.

- Jobs whose message was lost (a broker that restarted empty, a publish that failed) sit in
  `queued` past the grace period: they are sent again.
- Jobs whose worker died sit in `running` with a lapsed lease: they go back to `queued` (or
  to `failed`, when that was their last attempt) and are sent again.
Sending a job twice is harmless: only the message whose attempt count matches can claim it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import delete, func, or_, select, update

from tenantry.db.tables import IdempotencyKey, Job, JobStatus
from tenantry.jobs.kinds import UnknownJobKindError
from tenantry.jobs.service import message_for, publish_or_leave_to_outbox
from tenantry.worker import metrics
from tenantry.worker.execution import WorkerContext

log = structlog.get_logger("tenantry.outbox")

SWEEP_BATCH = 500


async def recover_lapsed_leases(context: WorkerContext) -> list[Job]:
    """Running jobs whose worker stopped renewing: back to the queue, or to an end state."""
    now = datetime.now(UTC)
    # A whole extra lease period of grace: after a database outage every running job's lease
    # has lapsed (nobody could renew it), and its worker needs a moment to write its outcome.
    cutoff = now - timedelta(seconds=context.settings.job_lease_seconds)
    lapsed = (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < cutoff)
    async with context.sessions() as session, session.begin():
        await session.execute(
            update(Job)
            .where(lapsed, Job.cancel_requested.is_(True))
            .values(
                status=JobStatus.CANCELLED,
                finished_at=now,
                lease_expires_at=None,
                last_error="cancelled (its worker stopped)",
            )
        )
        dead = await session.scalars(
            update(Job)
            .where(lapsed, Job.attempts >= Job.max_attempts)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_expires_at=None,
                last_error="worker lost during the last attempt",
            )
            .returning(Job.kind)
        )
        for kind in dead:
            metrics.DEAD_LETTERS.labels(kind=kind).inc()
        requeued = list(
            (
                await session.scalars(
                    update(Job)
                    .where(lapsed)
                    .values(
                        status=JobStatus.QUEUED,
                        lease_expires_at=None,
                        enqueued_at=now,
                        available_at=now,
                        last_error="worker lost during the attempt",
                    )
                    .returning(Job)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        )
    return requeued


async def find_lost_enqueues(context: WorkerContext) -> list[Job]:
    """Queued jobs due longer than the grace period ago: their message was probably lost."""
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=context.settings.outbox_grace_seconds)
    async with context.sessions() as session, session.begin():
        ids = (
            await session.scalars(
                select(Job.id)
                .where(
                    Job.status == JobStatus.QUEUED,
                    func.coalesce(Job.available_at, Job.enqueued_at, Job.created_at) < stale,
                    or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale),
                )
                .order_by(Job.created_at)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not ids:
            return []
        return list(
            (
                await session.scalars(
                    update(Job)
                    .where(Job.id.in_(ids))
                    .values(enqueued_at=now)
                    .returning(Job)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        )


async def sweep_outbox(context: WorkerContext) -> int:
    """Send again every job whose message was lost or whose worker died; returns how many."""
    sent = 0
    for reason, jobs in (
        ("lease_lapsed", await recover_lapsed_leases(context)),
        ("enqueue_lost", await find_lost_enqueues(context)),
    ):
        for job in jobs:
            try:
                message = message_for(job, context.kinds)
            except UnknownJobKindError:
                log.warning("outbox.unknown_kind", job_id=str(job.id), kind=job.kind)
                continue
            if await publish_or_leave_to_outbox(context.publisher, message):
                sent += 1
                metrics.OUTBOX_REQUEUED.labels(reason=reason).inc()
        if jobs:
            log.info("outbox.requeued", reason=reason, jobs=len(jobs))
    return sent


async def trim_idempotency_keys(context: WorkerContext) -> int:
    """Forget idempotency keys past their retention; a retry after that creates a new job."""
    async with context.sessions() as session, session.begin():
        removed = await session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.expires_at < datetime.now(UTC))
        )
    count = int(getattr(removed, "rowcount", 0) or 0)
    if count:
        log.info("idempotency.trimmed", keys=count)
    return count
