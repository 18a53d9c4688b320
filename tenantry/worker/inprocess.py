"""Jobs and metering inside one asyncio process, for `tenantry dev`: no broker, no Redis.

The queue is an in-memory one (a countdown is a timer on the event loop), job slots are
counted in process, and the same `execute_job`, outbox sweep and idempotency trimming the
Celery worker uses run as tasks on the caller's loop. PostgreSQL stays the source of truth
(SQLite in dev), so a restart of `tenantry dev` loses no job: the outbox sweep re-sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from fastapi import FastAPI

from tenantry.jobs.breaker import CircuitBreakers
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.queueing import JobMessage
from tenantry.worker import metrics
from tenantry.worker.execution import WorkerContext, execute_job
from tenantry.worker.outbox import sweep_outbox, trim_idempotency_keys
from tenantry.worker.semaphore import LocalSemaphore

log = structlog.get_logger("tenantry.worker.inprocess")


class InProcessQueue:
    """A `JobPublisher` whose messages stay in this process."""

    def __init__(self) -> None:
        self._messages: asyncio.Queue[JobMessage] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()

    async def publish(self, message: JobMessage) -> None:
        if message.countdown_seconds > 0:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(message.countdown_seconds, self._deliver, message)
            self._timers.add(handle)
        else:
            self._messages.put_nowait(message)

    def _deliver(self, message: JobMessage) -> None:
        self._timers = {timer for timer in self._timers if not timer.cancelled()}
        self._messages.put_nowait(message)

    async def get(self) -> JobMessage:
        return await self._messages.get()

    def pending(self) -> int:
        return self._messages.qsize()

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


class InProcessWorker:
    """Consumers of an `InProcessQueue` plus the periodic housekeeping, as asyncio tasks."""

    def __init__(
        self,
        context: WorkerContext,
        queue: InProcessQueue,
        *,
        concurrency: int | None = None,
        periodic: dict[str, tuple[float, Callable[[], Awaitable[object]]]] | None = None,
    ) -> None:
        self.context = context
        self.queue = queue
        self.concurrency = concurrency or context.settings.concurrency
        settings = context.settings
        self.periodic = {
            "outbox": (settings.outbox_interval_seconds, lambda: sweep_outbox(context)),
            "idempotency": (
                settings.idempotency_trim_interval_seconds,
                lambda: trim_idempotency_keys(context),
            ),
            **(periodic or {}),
        }

    async def _consume(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                await execute_job(self.context, message.job_id, message.attempt)
            except Exception:  # the job's lease lapses and the outbox sweep runs it again
                metrics.HOUSEKEEPING_ERRORS.labels(task="job").inc()
                log.exception("job.execution_error", job_id=str(message.job_id))

    async def _every(
        self, name: str, interval: float, step: Callable[[], Awaitable[object]]
    ) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception:  # the next round tries again
                metrics.HOUSEKEEPING_ERRORS.labels(task=name).inc()
                log.exception("housekeeping.failed", task=name)

    async def run(self) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.concurrency):
                group.create_task(self._consume())
            for name, (interval, step) in self.periodic.items():
                group.create_task(self._every(name, interval, step))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InProcessWorker]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.queue.close()


def install_dev_jobs(app: FastAPI) -> None:
    """Run jobs inside an API app made by `tenantry.api.app.create_app`, for `tenantry dev`.

    The app gets a jobs service on an in-process queue (`app.state.jobs`, which the jobs
    router prefers over a Celery broker), and its lifespan runs the in-process worker with the
    outbox sweep and idempotency trimming, plus the usage flush when Redis is configured. Call
    it once, after `create_app` and before serving.
    """
    from tenantry.api.runtime import ApiRuntime
    from tenantry.db.engine import session_factory
    from tenantry.jobs.service import JobsService
    from tenantry.worker.flush import UsageFlusher

    runtime: ApiRuntime = app.state.runtime
    if runtime.engine is None:
        raise ValueError("jobs need a database: set TENANTRY_DATABASE_URL")
    settings = runtime.settings.worker
    sessions = session_factory(runtime.engine)
    kinds = JobKinds.discover()
    queue = InProcessQueue()
    context = WorkerContext(
        settings=settings,
        sessions=sessions,
        kinds=kinds,
        registry=runtime.holder,
        publisher=queue,
        limiter=LocalSemaphore(),
        breakers=CircuitBreakers(
            settings.breaker_failure_threshold, settings.breaker_cooldown_seconds
        ),
    )
    periodic: dict[str, tuple[float, Callable[[], Awaitable[object]]]] = {}
    if runtime.redis is not None:
        flusher = UsageFlusher(
            runtime.redis, sessions, grace_seconds=settings.usage_flush_grace_seconds
        )

        async def flush() -> object:
            return await flusher.flush(runtime.holder.registry.tenants.values())

        periodic["usage-flush"] = (settings.usage_flush_interval_seconds, flush)
    worker = InProcessWorker(context, queue, periodic=periodic)
    app.state.jobs = JobsService(sessions, kinds, queue, settings)
    serve = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        async with serve(served), worker.running():
            log.info("dev_jobs_started", concurrency=worker.concurrency)
            yield

    app.router.lifespan_context = lifespan
