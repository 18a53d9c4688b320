"""What one worker process keeps for its life: an event loop, one database engine, one Redis
pool, the registry and the job context.

Celery's prefork children run tasks synchronously on their main thread; each task runs its
coroutine to completion on the process's loop, in that same thread (no hand-over to another
thread per task). Keeping one loop (instead of `asyncio.run` per task) is what lets the
engine's connection pool and the Redis pool live across tasks; a job's own background work
(its lease renewal) runs while the job does, which is the only time it is needed.

The registry source runs on a loop of its own, on a thread: it must keep following the
registry between tasks, when the jobs' loop is not running. It shares nothing with the jobs'
loop but the holder, whose snapshots are swapped by one reference assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from tenantry.db.engine import create_engine, session_factory
from tenantry.jobs.breaker import CircuitBreakers
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.queueing import JobPublisher
from tenantry.redis_client import RedisConnector
from tenantry.settings import Settings
from tenantry.sources import RegistryHolder, RegistrySource, registry_source
from tenantry.worker.execution import WorkerContext
from tenantry.worker.flush import UsageFlusher

log = structlog.get_logger("tenantry.worker")

T = TypeVar("T")
FIRST_REGISTRY_WAIT_SECONDS = 30.0


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        publisher: JobPublisher,
        *,
        kinds: JobKinds | None = None,
        source: RegistrySource | None = None,
    ) -> None:
        if settings.redis_url is None:
            raise ValueError("the worker needs Redis: set TENANTRY_REDIS_URL")
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.holder = RegistryHolder()
        self.engine = create_engine(settings.database_url, pool_size=4)
        # Claims, lease renewals and outcomes: one statement each, in autocommit and without a
        # ping (`execution` retries them on a lost connection), so one round trip each.
        self.statement_engine = create_engine(
            settings.database_url, pool_size=2, autocommit=True, pre_ping=False
        )
        self.redis = RedisConnector(settings.redis_url, timeout_seconds=5.0, max_connections=16)
        worker = settings.worker
        self.context = WorkerContext(
            settings=worker,
            sessions=session_factory(self.engine),
            statements=session_factory(self.statement_engine),
            kinds=kinds or JobKinds.discover(),
            registry=self.holder,
            publisher=publisher,
            breakers=CircuitBreakers(
                worker.breaker_failure_threshold, worker.breaker_cooldown_seconds
            ),
        )
        self.flusher = UsageFlusher(
            self.redis, self.context.sessions, grace_seconds=worker.usage_flush_grace_seconds
        )
        self._registry_loop = asyncio.new_event_loop()
        self._source_task = self._registry_loop.create_task(
            (source or registry_source(settings)).run(self.holder)
        )
        self._registry_thread = threading.Thread(
            target=self._follow_registry, name="tenantry-registry", daemon=True
        )
        self._registry_thread.start()

    def _follow_registry(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            self._registry_loop.run_until_complete(self._source_task)
        self._registry_loop.close()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the process's loop, in the calling thread, to completion."""
        return self.loop.run_until_complete(coroutine)

    def wait_for_registry(self) -> bool:
        """Block until the source published a first snapshot (jobs of unknown tenants would
        otherwise be deferred); False after `FIRST_REGISTRY_WAIT_SECONDS`."""
        deadline = time.monotonic() + FIRST_REGISTRY_WAIT_SECONDS
        while not self.holder.loaded:
            if time.monotonic() > deadline:
                log.error("worker.registry_not_loaded", waited_seconds=FIRST_REGISTRY_WAIT_SECONDS)
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._registry_loop.call_soon_threadsafe(self._source_task.cancel)
        self._registry_thread.join(timeout=5)

        async def dispose() -> None:
            await self.redis.aclose()
            await self.engine.dispose()
            await self.statement_engine.dispose()

        self.call(dispose())
        self.loop.close()
