"""What one worker process keeps for its life: an event loop on a thread of its own, one
database engine, one Redis pool, the registry and the job context.

Celery's prefork children run tasks synchronously; each task hands its coroutine to this loop
and waits. Keeping one loop (instead of `asyncio.run` per task) is what lets the engine's
connection pool, the Redis pool and the registry source live across tasks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
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
from tenantry.worker.semaphore import RedisSemaphore

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
        self._thread = threading.Thread(target=self.loop.run_forever, name="tenantry-loop")
        self._thread.daemon = True
        self._thread.start()
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
            limiter=RedisSemaphore(self.redis),
            breakers=CircuitBreakers(
                worker.breaker_failure_threshold, worker.breaker_cooldown_seconds
            ),
        )
        self.flusher = UsageFlusher(
            self.redis, self.context.sessions, grace_seconds=worker.usage_flush_grace_seconds
        )
        self._source = source or registry_source(settings)
        self._source_task: Future[None] = asyncio.run_coroutine_threadsafe(
            self._source.run(self.holder), self.loop
        )

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the process's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

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
        self._source_task.cancel()

        async def dispose() -> None:
            await self.redis.aclose()
            await self.engine.dispose()
            await self.statement_engine.dispose()

        self.call(dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
