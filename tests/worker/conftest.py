"""Fixtures of the worker's tests: a real database, tenants in a registry, and the same job
execution the Celery worker runs, driven in process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.registry import Registry, TenantEntry
from tenantry.contract.resources import EffectiveLimits, FailureMode, JobPriority
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import Job, JobStatus
from tenantry.jobs.breaker import CircuitBreakers
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.service import JobsService, JobSubmission
from tenantry.settings import WorkerSettings
from tenantry.sources import RegistryHolder
from tenantry.worker.execution import WorkerContext
from tenantry.worker.inprocess import InProcessQueue, InProcessWorker
from tests.harness.rabbitmq import RabbitMQProcess
from tests.harness.servers import RedisProcess

ACME = "customers/acme"
GLOBEX = "customers/globex"


def tenant(
    tenant_id: str,
    *,
    max_concurrent_jobs: int = 4,
    priority: JobPriority = JobPriority.DEFAULT,
    monthly_quota: int | None = None,
) -> TenantEntry:
    return TenantEntry(
        tenant_id=tenant_id,
        display_name=tenant_id.split("/")[1].title(),
        tier="standard",
        limits=EffectiveLimits(
            requests_per_minute=600,
            burst=10,
            monthly_quota=monthly_quota,
            max_concurrent_jobs=max_concurrent_jobs,
            job_priority=priority,
            reserved_requests_per_second=0,
            failure_mode=FailureMode.OPEN,
        ),
        webhook_signing_secret=f"whsec-{tenant_id.split('/')[1]}",
    )


def fast_settings(**overrides: Any) -> WorkerSettings:
    """Intervals short enough for tests; loopback receivers explicitly allowed."""
    values: dict[str, Any] = {
        "job_lease_seconds": 1.5,
        "outbox_interval_seconds": 0.2,
        "outbox_grace_seconds": 0.5,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "concurrency_retry_seconds": 0.05,
        "outcome_deadline_seconds": 30,
        "webhook_timeout_seconds": 5,
        "webhook_allowed_networks": [ip_network("127.0.0.0/8")],
        "breaker_failure_threshold": 50,
        "breaker_cooldown_seconds": 0.3,
        "usage_flush_grace_seconds": 0,
    }
    return WorkerSettings(**(values | overrides))


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, within: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def holder() -> RegistryHolder:
    registry_holder = RegistryHolder()
    registry_holder.publish(Registry.build([tenant(ACME), tenant(GLOBEX)]))
    return registry_holder


async def read_job(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job:
    """The job's row as Postgres has it now."""
    async with sessions() as session:
        job = await session.get(Job, job_id)
    assert job is not None, f"no job {job_id}"
    return job


class Harness:
    """A service, a worker context and an in-process queue over one database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        holder: RegistryHolder,
        settings: WorkerSettings,
        kinds: JobKinds | None = None,
    ) -> None:
        self.sessions = sessions
        self.holder = holder
        self.settings = settings
        self.kinds = kinds or JobKinds.discover()
        self.queue = InProcessQueue()
        self.context = WorkerContext(
            settings=settings,
            sessions=sessions,
            kinds=self.kinds,
            registry=holder,
            publisher=self.queue,
            breakers=CircuitBreakers(
                settings.breaker_failure_threshold, settings.breaker_cooldown_seconds
            ),
        )
        self.service = JobsService(sessions, self.kinds, self.queue, settings)

    def worker(self, concurrency: int = 4) -> InProcessWorker:
        return InProcessWorker(self.context, self.queue, concurrency=concurrency)

    async def submit(
        self, kind: str, payload: dict[str, Any], *, tenant_id: str = ACME, key: str | None = None
    ) -> uuid.UUID:
        outcome = await self.service.submit(
            self.holder.registry.tenants[tenant_id],
            JobSubmission(
                kind=kind,
                payload=payload,
                idempotency_key=key or uuid.uuid4().hex,
                actor="key:test",
            ),
        )
        return outcome.job_id

    async def job(self, job_id: uuid.UUID) -> Job:
        return await read_job(self.sessions, job_id)

    async def wait_status(
        self, job_id: uuid.UUID, *statuses: JobStatus, within: float = 20.0
    ) -> Job:
        async def reached() -> bool:
            return (await self.job(job_id)).status in statuses

        await wait_for(reached, within=within, what=f"job {job_id} to be {statuses}")
        return await self.job(job_id)


@pytest.fixture
def harness(sessions: async_sessionmaker[AsyncSession], holder: RegistryHolder) -> Harness:
    return Harness(sessions, holder, fast_settings())


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Each broker Tenantry runs its jobs on: the session's Redis, then its RabbitMQ."""
    if request.param == "redis":
        return redis_url
    url: str = request.getfixturevalue("rabbitmq_url")
    return url


@dataclass
class OwnBroker:
    """A broker of the test's own, which the test may kill and start again, and the Redis
    the worker keeps its tenants' job slots in (the same server when the broker is Redis)."""

    server: RedisProcess | RabbitMQProcess
    redis_url: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(params=["redis", "rabbitmq"])
def own_broker(request: pytest.FixtureRequest) -> OwnBroker:
    if request.param == "redis":
        own_redis: RedisProcess = request.getfixturevalue("own_redis")
        return OwnBroker(own_redis, own_redis.url)
    own_rabbitmq: RabbitMQProcess = request.getfixturevalue("own_rabbitmq")
    return OwnBroker(own_rabbitmq, request.getfixturevalue("redis_url"))
