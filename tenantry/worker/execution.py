"""One attempt of one job, from claim to recorded outcome, independent of Celery.

The rules that make a job finish once in effect:
- A message names the attempt it was sent for. Claiming is one conditional UPDATE
  (`queued` and the same attempt count → `running`, count + 1), so duplicate and stale
  messages find nothing to claim.
- A running job holds a lease its worker renews. A worker that dies stops renewing; the
  outbox sweep then hands the job on (the lost attempt counts toward `max_attempts`).
- A running job with a live lease holds one of its tenant's `maxConcurrentJobs` slots, so the
  claim takes the slot in the same round trip (`jobs_claim`, see the migration that creates
  it), and the outcome, which ends the run, gives it back. A dead worker's slot frees itself
  when the lease lapses.
- Outcomes are written only while the attempt is still this worker's, and a worker that cannot
  reach PostgreSQL keeps trying to write its outcome for `outcome_deadline_seconds`.
- Kinds with side effects outside the platform make them idempotent for receivers (the
  webhook delivery id is the job id, the same on every attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from sqlalchemy import Integer, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Update

from tenantry.db.tables import Job, JobStatus
from tenantry.jobs.breaker import CircuitBreakers
from tenantry.jobs.kinds import (
    InvalidPayloadError,
    JobContext,
    JobKind,
    JobKinds,
    JobResult,
    PermanentJobError,
    RetryableJobError,
    UnknownJobKindError,
)
from tenantry.jobs.queueing import JobPublisher, backoff_seconds
from tenantry.jobs.service import message_for, publish_or_leave_to_outbox
from tenantry.settings import WorkerSettings
from tenantry.sources import RegistryHolder
from tenantry.worker import metrics

log = structlog.get_logger("tenantry.worker")

# Errors that may mean "the database is unreachable right now"; `database_unreachable` tells
# them apart from "the statement is wrong".
DATABASE_DOWN = (DBAPIError, OSError, ConnectionError)
T = TypeVar("T")
# A receiver may ask for a pause with Retry-After; longer asks are cut to this.
RETRY_AFTER_CEILING_SECONDS = 3600.0


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STALE = "stale"  # nothing to do: a duplicate, stale or already-ended message
    DEFERRED = "deferred"  # the tenant had no free slot, or the registry was not loaded yet
    ABANDONED = "abandoned"  # the outcome could not be recorded; the lease sweep takes over


@dataclass
class WorkerContext:
    """What a worker process keeps for its lifetime (one engine, one Redis pool)."""

    settings: WorkerSettings
    sessions: async_sessionmaker[AsyncSession]
    kinds: JobKinds
    registry: RegistryHolder
    publisher: JobPublisher
    breakers: CircuitBreakers
    # Sessions whose statements commit one by one. The claim, the lease renewal and the
    # outcome are each a single conditional UPDATE, atomic on its own, so wrapping them in a
    # transaction only adds BEGIN and COMMIT round trips. None: use `sessions`.
    statements: async_sessionmaker[AsyncSession] | None = None

    @property
    def single_statements(self) -> async_sessionmaker[AsyncSession]:
        return self.statements or self.sessions


# SQLSTATE classes meaning "no usable connection now": 08 connection exception, 57 operator
# intervention (shutting down, starting up: "the database system is starting up").
UNREACHABLE_SQLSTATE_CLASSES = ("08", "57")


def database_unreachable(error: BaseException) -> bool:
    if isinstance(error, OSError | ConnectionError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in UNREACHABLE_SQLSTATE_CLASSES


def _now() -> datetime:
    return datetime.now(UTC)


async def _with_database(
    settings: WorkerSettings, job_id: uuid.UUID, write: Callable[[], Awaitable[T]]
) -> T:
    """Run `write`, retrying while PostgreSQL is unreachable, up to the outcome deadline."""
    deadline = asyncio.get_running_loop().time() + settings.outcome_deadline_seconds
    pause = 0.2
    while True:
        try:
            return await write()
        except DATABASE_DOWN as error:
            if not database_unreachable(error):
                raise  # a wrong statement: retrying cannot help
            if asyncio.get_running_loop().time() + pause > deadline:
                raise
            log.warning("job.database_unreachable", job_id=str(job_id), error=str(error))
            await asyncio.sleep(pause)
            # At most a second apart, well inside the grace the lease sweep gives after an
            # outage, so the outcome lands before the job would be handed on.
            pause = min(pause * 2, 1.0)


async def execute_job(
    context: WorkerContext, job_id: uuid.UUID, attempt: int, tenant_id: str | None = None
) -> Verdict:
    """Run the attempt `attempt` of a job of `tenant_id` if it is still due and the tenant
    has a free slot; report what happened."""
    if tenant_id is None:  # a message sent before messages named the job's tenant
        tenant_id = await _tenant_of(context, job_id)
        if tenant_id is None:
            return Verdict.STALE
    loaded = context.registry.loaded
    tenant = context.registry.registry.tenants.get(tenant_id)
    slots: int | None
    if not loaded:
        slots = 0  # its limit is not known yet: leave the job queued and send it again
    elif tenant is None or tenant.limits is None:
        slots = None  # claimed without a slot, to be failed below
    else:
        slots = tenant.limits.max_concurrent_jobs
    job = await _claim(context, job_id, attempt, tenant_id, slots)
    if job is None:
        return Verdict.STALE
    if job.status is not JobStatus.RUNNING:
        if loaded:
            metrics.CONCURRENCY_DEFERRED.inc()
        return await _defer(context, job)
    try:
        kind = context.kinds.get(job.kind)
    except UnknownJobKindError as error:
        return await _record(context, job, Verdict.FAILED, last_error=str(error))
    if tenant is None or tenant.limits is None:
        reason = "the tenant no longer exists or has no policy"
        return await _record(context, job, Verdict.FAILED, last_error=reason)
    job_context = JobContext(
        job_id=job_id,
        attempt=job.attempts,
        tenant=tenant,
        settings=context.settings,
        sessions=context.sessions,
        breakers=context.breakers,
    )
    return await _run_claimed(context, job, kind, job_context)


async def _tenant_of(context: WorkerContext, job_id: uuid.UUID) -> str | None:
    async def read() -> str | None:
        async with context.single_statements() as session:
            return await session.scalar(select(Job.tenant_id).where(Job.id == job_id))

    return await _with_database(context.settings, job_id, read)


async def _defer(context: WorkerContext, job: Job) -> Verdict:
    """Send a job that found no free slot (or no registry yet) again later. It was never
    claimed, so its attempt is unused, and a cancel meanwhile finds it queued and ends it."""
    pause = context.settings.concurrency_retry_seconds
    pause *= random.uniform(1.0, 1.5)  # noqa: S311 - jitter, not secrecy
    await publish_or_leave_to_outbox(
        context.publisher, message_for(job, context.kinds, countdown_seconds=pause)
    )
    return Verdict.DEFERRED


# Built once: constructing a statement was a third of a no-op job's CPU time in the worker.
# On PostgreSQL the claim and the tenant's slot are one call of `jobs_claim`; it returns the
# job claimed (`running`), still `queued` when every slot is held, or nothing when the message
# is stale. A NULL slot count claims without counting.
CLAIM_WITH_SLOT = select(Job).from_statement(
    text(
        "SELECT * FROM jobs_claim(:claim_job_id, :claim_attempt, :claim_tenant_id, "
        ":claim_slots, :claim_now, :claim_lease_expires_at)"
    )
    .bindparams(
        bindparam("claim_job_id", type_=Job.id.type),
        bindparam("claim_attempt", type_=Job.attempts.type),
        bindparam("claim_tenant_id", type_=Job.tenant_id.type),
        bindparam("claim_slots", type_=Integer()),
        bindparam("claim_now", type_=Job.started_at.type),
        bindparam("claim_lease_expires_at", type_=Job.lease_expires_at.type),
    )
    .columns(*Job.__table__.columns)
)

# SQLite (`tenantry dev`) has no functions, but serializes writes, so the count of live
# leases in the claim's own WHERE cannot race another claim.
_live = Job.__table__.alias("live")
LIVE_LEASES = (
    select(func.count())
    .select_from(_live)
    .where(
        _live.c.tenant_id == bindparam("claim_tenant_id", type_=Job.tenant_id.type),
        _live.c.status == JobStatus.RUNNING,
        _live.c.lease_expires_at > bindparam("claim_now", type_=Job.started_at.type),
    )
    .scalar_subquery()
)
_due = (
    Job.id == bindparam("claim_job_id", type_=Job.id.type),
    Job.status == JobStatus.QUEUED,
    Job.attempts == bindparam("claim_attempt", type_=Job.attempts.type),
)
CLAIM_COUNTING = (
    update(Job)
    .where(
        *_due,
        Job.tenant_id == bindparam("claim_tenant_id", type_=Job.tenant_id.type),
        func.coalesce(bindparam("claim_slots", type_=Integer()) > LIVE_LEASES, True),
    )
    .values(
        status=JobStatus.RUNNING,
        attempts=Job.attempts + 1,
        started_at=bindparam("claim_now", type_=Job.started_at.type),
        lease_expires_at=bindparam("claim_lease_expires_at", type_=Job.lease_expires_at.type),
    )
    .returning(Job)
    .execution_options(synchronize_session=False)
)
STILL_DUE = select(Job).where(*_due)


async def _claim(
    context: WorkerContext, job_id: uuid.UUID, attempt: int, tenant_id: str, slots: int | None
) -> Job | None:
    now = _now()
    parameters = {
        "claim_job_id": job_id,
        "claim_attempt": attempt,
        "claim_tenant_id": tenant_id,
        "claim_slots": slots,
        "claim_now": now,
        "claim_lease_expires_at": now + timedelta(seconds=context.settings.job_lease_seconds),
    }

    async def claim() -> Job | None:
        async with context.single_statements() as session, session.begin():
            claimed: Job | None
            if session.get_bind().dialect.name == "postgresql":
                claimed = await session.scalar(CLAIM_WITH_SLOT, parameters)
                return claimed
            claimed = await session.scalar(CLAIM_COUNTING, parameters)
            if claimed is None and slots is not None:
                claimed = await session.scalar(STILL_DUE, parameters)
            return claimed

    # Retried like the outcome: the statement engine does not ping connections it hands
    # out, so a connection PostgreSQL dropped shows up here, once, and the retry gets a
    # fresh one (a claim that did commit before its reply was lost finds nothing the
    # second time, and its lease lapses as if this worker had died).
    job = await _with_database(context.settings, job_id, claim)
    if job is not None and job.status is JobStatus.RUNNING:
        due = job.available_at or job.created_at
        if due.tzinfo is None:  # SQLite (`tenantry dev`) stores UTC without an offset
            due = due.replace(tzinfo=UTC)
        metrics.JOB_START_LATENCY.observe(max(0.0, (now - due).total_seconds()))
    return job


class _Lease:
    """Renews the job's lease (and with it its tenant slot) while it runs; stops the run on
    cancel."""

    def __init__(self, context: WorkerContext, job: Job, run: asyncio.Task[JobResult]) -> None:
        self.context = context
        self.job = job
        self.run = run
        self.cancelled_by_tenant = False
        self.stopping = False

    async def keep(self) -> None:
        settings = self.context.settings
        while not self.stopping:
            await asyncio.sleep(settings.job_lease_seconds / 3)
            try:
                cancel = await self._renew()
            except DATABASE_DOWN as error:
                log.warning("job.lease_renewal_failed", job_id=str(self.job.id), error=str(error))
                continue
            if cancel:
                self.cancelled_by_tenant = True
                self.run.cancel()
                return

    async def _renew(self) -> bool:
        async with self.context.single_statements() as session, session.begin():
            cancel = await session.scalar(
                update(Job)
                .where(
                    Job.id == self.job.id,
                    Job.attempts == self.job.attempts,
                    Job.status == JobStatus.RUNNING,
                )
                .values(
                    lease_expires_at=_now()
                    + timedelta(seconds=self.context.settings.job_lease_seconds)
                )
                .returning(Job.cancel_requested)
            )
        return bool(cancel)


async def _run_claimed(
    context: WorkerContext, job: Job, kind: JobKind[Any], job_context: JobContext
) -> Verdict:
    bound = log.bind(
        job_id=str(job.id),
        kind=job.kind,
        attempt=job.attempts,
        request_id=job.request_id,
        trace_context=job.trace_context,
    )
    bound.info("job.started")
    started = asyncio.get_running_loop().time()
    try:
        payload = kind.validate(job.payload)
    except InvalidPayloadError as error:
        return await _record_failure(context, job, str(error), retry=False)
    run = asyncio.create_task(kind.run(job_context, payload))
    lease = _Lease(context, job, run)
    keeper = asyncio.create_task(lease.keep())
    error_text: str
    retry_after: float | None = None
    retry = True
    try:
        async with asyncio.timeout(kind.soft_time_limit_seconds):
            result = await run
    except TimeoutError:
        error_text = f"soft time limit of {kind.soft_time_limit_seconds:g}s exceeded"
    except asyncio.CancelledError:
        if not lease.cancelled_by_tenant:
            raise  # the worker itself is stopping: the lease sweep re-queues the job
        return await _record(context, job, Verdict.CANCELLED, last_error="cancelled while running")
    except RetryableJobError as error:
        error_text, retry_after = str(error), error.retry_after
    except PermanentJobError as error:
        error_text, retry = str(error), False
    except Exception as error:  # noqa: BLE001 - a kind's bug: retried, counted, dead-lettered
        bound.exception("job.crashed")
        error_text = f"{type(error).__name__}: {error}"
    else:
        metrics.JOB_DURATION.labels(kind=job.kind).observe(
            asyncio.get_running_loop().time() - started
        )
        # The keeper stops first, so no renewal can extend the lease after the outcome.
        await _stop(lease, keeper)
        return await _record(context, job, Verdict.SUCCEEDED, result=result)
    finally:
        await _stop(lease, keeper)
    bound.warning("job.attempt_failed", error=error_text, retry_after=retry_after)
    if lease.cancelled_by_tenant:
        return await _record(context, job, Verdict.CANCELLED, last_error="cancelled while running")
    return await _record_failure(context, job, error_text, retry=retry, retry_after=retry_after)


async def _stop(lease: _Lease, keeper: asyncio.Task[None]) -> None:
    """Stop renewing, and wait until no renewal is in flight. The flag as well as the cancel:
    a client library can swallow a cancellation that lands during a call (redis-py did, when
    the lease was renewed in Redis), and the keeper would then renew the lease for ever while
    this waits for it."""
    lease.stopping = True
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper


async def _record_failure(
    context: WorkerContext,
    job: Job,
    error_text: str,
    *,
    retry: bool,
    retry_after: float | None = None,
) -> Verdict:
    if not retry or job.attempts >= job.max_attempts:
        return await _record(context, job, Verdict.FAILED, last_error=error_text)
    settings = context.settings
    delay = backoff_seconds(
        job.attempts, base=settings.retry_base_seconds, cap=settings.retry_max_seconds
    )
    if retry_after is not None:
        # The receiver's Retry-After wins over our own backoff, up to a ceiling.
        delay = max(delay, min(retry_after, RETRY_AFTER_CEILING_SECONDS))
    return await _record(context, job, Verdict.RETRYING, last_error=error_text, delay=delay)


_OUTCOME_STATEMENTS: dict[tuple[str, ...], Update] = {}


def _outcome_statement(columns: tuple[str, ...]) -> Update:
    """The outcome UPDATE setting `columns`, built on first use and kept: an outcome sets one
    of a few column sets, and building the statement per job costs more CPU than running it."""
    statement = _OUTCOME_STATEMENTS.get(columns)
    if statement is None:
        table = Job.__table__
        statement = (
            update(Job)
            .where(
                Job.id == bindparam("outcome_job_id", type_=Job.id.type),
                Job.attempts == bindparam("outcome_attempts", type_=Job.attempts.type),
                # `queued`: the lease sweep re-queued it during an outage, but no worker
                # has claimed it yet, so this finished attempt still counts.
                Job.status.in_([JobStatus.RUNNING, JobStatus.QUEUED]),
            )
            .values({name: bindparam(f"set_{name}", type_=table.c[name].type) for name in columns})
            .returning(Job.id)
        )
        _OUTCOME_STATEMENTS[columns] = statement
    return statement


async def _record(
    context: WorkerContext,
    job: Job,
    verdict: Verdict,
    *,
    result: JobResult | None = None,
    last_error: str | None = None,
    delay: float = 0.0,
) -> Verdict:
    """Write the attempt's outcome, if the attempt is still this worker's. Leaving `running`
    gives the tenant's slot back."""
    now = _now()
    values: dict[str, Any] = {"lease_expires_at": None, "last_error": last_error}
    if verdict is Verdict.SUCCEEDED:
        assert result is not None
        values |= {
            "status": JobStatus.SUCCEEDED,
            "result": result.document,
            "result_blob": result.blob,
            "result_content_type": result.content_type,
            "finished_at": now,
        }
    elif verdict is Verdict.RETRYING:
        values |= {
            "status": JobStatus.QUEUED,
            "enqueued_at": now,
            "available_at": now + timedelta(seconds=delay),
        }
    else:
        values |= {"status": JobStatus(verdict.value), "finished_at": now}

    statement = _outcome_statement(tuple(values))
    parameters = {f"set_{name}": value for name, value in values.items()}
    parameters |= {"outcome_job_id": job.id, "outcome_attempts": job.attempts}

    async def write() -> bool:
        async with context.single_statements() as session, session.begin():
            written = await session.scalar(statement, parameters)
        return written is not None

    try:
        written = await _with_database(context.settings, job.id, write)
    except DATABASE_DOWN as error:
        log.error("job.outcome_lost", job_id=str(job.id), verdict=verdict.value, error=str(error))
        return Verdict.ABANDONED
    if not written:
        log.warning("job.outcome_superseded", job_id=str(job.id), verdict=verdict.value)
        return Verdict.STALE
    outcome = "retried" if verdict is Verdict.RETRYING else verdict.value
    metrics.JOBS_FINISHED.labels(kind=job.kind, outcome=outcome).inc()
    if verdict is Verdict.FAILED:
        metrics.DEAD_LETTERS.labels(kind=job.kind).inc()
    log.info("job.finished", job_id=str(job.id), verdict=verdict.value, delay=delay or None)
    if verdict is Verdict.RETRYING:
        async with context.sessions() as session:
            fresh = await session.scalar(select(Job).where(Job.id == job.id))
        if fresh is not None:
            await publish_or_leave_to_outbox(
                context.publisher, message_for(fresh, context.kinds, countdown_seconds=delay)
            )
    return verdict
