"""Jobs and metering inside one asyncio process, for `tenantry dev` (composed by
`tenantry.dev`): no broker, no Redis.

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

from tenantry.jobs.queueing import JobMessage
from tenantry.worker import metrics
from tenantry.worker.execution import WorkerContext, execute_job
from tenantry.worker.outbox import sweep_outbox, trim_idempotency_keys

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
                await execute_job(self.context, message.job_id, message.attempt, message.tenant_id)
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
