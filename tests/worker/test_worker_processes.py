"""Fault tests with real `tenantry worker` processes on real PostgreSQL and Redis, and on each
broker: Redis, RabbitMQ."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu.connection import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.registry import Registry
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import Job, JobStatus
from tenantry.jobs.broker import (
    AMQP_DEAD_LETTER_QUEUE,
    AMQP_JOBS_QUEUE,
    CeleryPublisher,
    broker_queues,
)
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.service import JobsService, JobSubmission
from tenantry.settings import Settings, WorkerSettings
from tenantry.worker.celery_app import create_celery
from tests.harness.servers import PostgresProcess
from tests.worker.conftest import OwnBroker, read_job, wait_for
from tests.worker.processes import TENANT, reconcile_registry, running_worker, worker_env
from tests.worker.receiver import Reply, running_receiver

pytestmark = pytest.mark.integration

TENANTRY = str(Path(sys.executable).parent / "tenantry")


class Submitter:
    """What the API does on `POST /v1/jobs`: the jobs service with a Celery publisher."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        registry: Registry,
        broker_url: str | None = None,
    ) -> None:
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            worker=WorkerSettings(broker_url=broker_url),
        )
        self.engine = create_engine(database_url)
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(self.engine)
        kinds = JobKinds.discover()
        publisher = CeleryPublisher(create_celery(settings, kinds))
        self.service = JobsService(self.sessions, kinds, publisher, settings.worker)
        self.registry = registry
        self.tenant = registry.tenants[TENANT]

    async def noop(self, tenant_id: str) -> uuid.UUID:
        outcome = await self.service.submit(
            self.registry.tenants[tenant_id],
            JobSubmission(
                kind="noop", payload={}, idempotency_key=uuid.uuid4().hex, actor="key:test"
            ),
        )
        return outcome.job_id

    async def webhook(self, url: str) -> uuid.UUID:
        outcome = await self.service.submit(
            self.tenant,
            JobSubmission(
                kind="webhook.deliver",
                payload={"url": url, "body": {"n": 1}},
                idempotency_key=uuid.uuid4().hex,
                actor="key:test",
            ),
        )
        return outcome.job_id

    async def job(self, job_id: uuid.UUID) -> Job:
        return await read_job(self.sessions, job_id)

    async def wait_all(self, job_ids: list[uuid.UUID], status: JobStatus, within: float) -> None:
        async def done() -> bool:
            statuses = [(await self.job(j)).status for j in job_ids]
            return all(s == status for s in statuses)

        try:
            await wait_for(done, within=within, what=f"{len(job_ids)} jobs to be {status.value}")
        except AssertionError as error:
            jobs = [await self.job(j) for j in job_ids]
            states = [
                f"{j.id} {j.status.value} attempts={j.attempts} lease={j.lease_expires_at}"
                for j in jobs
            ]
            raise AssertionError(f"{error}; the jobs: {states}") from None


@pytest.fixture
async def submitter(
    database_url: str, redis_url: str, broker_url: str, tmp_path: Path
) -> AsyncIterator[Submitter]:
    registry = reconcile_registry(tmp_path / "keys.json")
    submitter = Submitter(database_url, redis_url, registry, broker_url)
    yield submitter
    await submitter.engine.dispose()


def broker_env(url: str) -> dict[str, str]:
    return {"TENANTRY_WORKER__BROKER_URL": url}


async def test_kill_9_mid_job_finishes_the_job_once_in_effect(
    submitter: Submitter, database_url: str, redis_url: str, broker_url: str, tmp_path: Path
) -> None:
    env = worker_env(tmp_path, database_url, redis_url, broker_env(broker_url))
    with running_receiver([Reply(200, delay_seconds=30), Reply(200)]) as receiver:
        with running_worker(tmp_path, env, "first") as worker:
            job_id = await submitter.webhook(receiver.url)

            async def in_flight() -> bool:
                return len(receiver.deliveries) == 1

            await wait_for(in_flight, what="the delivery to be in flight")
            worker.kill_hard()
        assert (await submitter.job(job_id)).status == JobStatus.RUNNING
        with running_worker(tmp_path, env, "second") as worker:
            await submitter.wait_all([job_id], JobStatus.SUCCEEDED, within=30)
    job = await submitter.job(job_id)
    assert set(receiver.delivery_ids()) == {str(job_id)}  # one delivery id, redelivered
    assert len(receiver.deliveries) == 2
    assert job.attempts == 2
    assert job.result == {"status_code": 200, "delivery_id": str(job_id)}


async def test_broker_restarted_with_jobs_queued_loses_no_job(
    database_url: str, own_broker: OwnBroker, tmp_path: Path
) -> None:
    """Redis restarts empty (no persistence); RabbitMQ, killed, may lose what it had not
    written yet: either way the outbox sends again what PostgreSQL still has queued."""
    registry = reconcile_registry(tmp_path / "keys.json")
    submitter = Submitter(database_url, own_broker.redis_url, registry, own_broker.url)
    env = worker_env(tmp_path, database_url, own_broker.redis_url, broker_env(own_broker.url))
    with running_receiver() as receiver:
        queued = [await submitter.webhook(receiver.url) for _ in range(5)]  # no worker yet
        own_broker.server.kill()
        own_broker.server.start()
        with running_worker(tmp_path, env) as worker:
            await submitter.wait_all(queued, JobStatus.SUCCEEDED, within=40)
            # The broker goes away once more under a running worker; work resumes after it.
            own_broker.server.kill()
            own_broker.server.start()
            later = [await submitter.webhook(receiver.url) for _ in range(3)]
            await submitter.wait_all(later, JobStatus.SUCCEEDED, within=40)
            assert worker.process.poll() is None
            port = env["TENANTRY_WORKER__METRICS_PORT"]
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            finished = 'tenantry_jobs_finished_total{kind="webhook.deliver",outcome="succeeded"}'
            assert f"{finished} 8.0" in scraped  # counted in the pool processes, served together
            for queue in broker_queues(own_broker.url).observed:
                assert f'tenantry_queue_depth{{queue="{queue}"}}' in scraped
    assert sorted(receiver.delivery_ids()) == sorted(str(j) for j in queued + later)
    await submitter.engine.dispose()


async def test_a_high_tier_job_queued_behind_low_tier_ones_runs_first(
    submitter: Submitter, database_url: str, redis_url: str, broker_url: str, tmp_path: Path
) -> None:
    low = [await submitter.noop("team-b/initech") for _ in range(3)]  # tier free: jobs.low
    high = await submitter.noop("team-a/globex")  # tier enterprise: jobs.high
    env = worker_env(
        tmp_path,
        database_url,
        redis_url,
        broker_env(broker_url) | {"TENANTRY_WORKER__CONCURRENCY": "1"},
    )
    with running_worker(tmp_path, env):
        await submitter.wait_all([*low, high], JobStatus.SUCCEEDED, within=30)
    high_started = (await submitter.job(high)).started_at
    low_started = [(await submitter.job(job_id)).started_at for job_id in low]
    assert high_started is not None
    assert all(started is not None and high_started < started for started in low_started)


async def test_sigterm_lets_the_running_job_finish(
    submitter: Submitter, database_url: str, redis_url: str, broker_url: str, tmp_path: Path
) -> None:
    env = worker_env(tmp_path, database_url, redis_url, broker_env(broker_url))
    with (
        running_receiver([Reply(200, delay_seconds=2)]) as receiver,
        running_worker(tmp_path, env) as worker,
    ):
        job_id = await submitter.webhook(receiver.url)

        async def in_flight() -> bool:
            return len(receiver.deliveries) == 1

        await wait_for(in_flight, what="the delivery to be in flight")
        worker.terminate()
        code = await asyncio.to_thread(worker.process.wait, 30)
        assert code == 0, worker.log()
    job = await submitter.job(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert len(receiver.deliveries) == 1


def probe(env: dict[str, Any], which: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TENANTRY, "worker", "probe", which], env=env, capture_output=True, text=True, check=False
    )


async def test_probes_follow_the_heartbeat_and_the_broker(
    database_url: str, own_broker: OwnBroker, tmp_path: Path
) -> None:
    env = worker_env(tmp_path, database_url, own_broker.redis_url, broker_env(own_broker.url))
    with running_worker(tmp_path, env) as worker:
        live, ready = probe(env, "live"), probe(env, "ready")
        assert live.returncode == 0, live.stderr
        assert ready.returncode == 0, ready.stderr
        own_broker.server.kill()
        not_ready = probe(env, "ready")
        assert not_ready.returncode == 1
        assert "broker unreachable" in not_ready.stderr
        # A lost broker is not a reason to restart: live holds past the heartbeat age limit.
        window = time.monotonic() + float(env["TENANTRY_WORKER__HEARTBEAT_MAX_AGE_SECONDS"]) + 1
        while time.monotonic() < window:
            live = await asyncio.to_thread(probe, env, "live")
            assert live.returncode == 0, live.stderr
        own_broker.server.start()

        async def ready_again() -> bool:
            return (await asyncio.to_thread(probe, env, "ready")).returncode == 0

        await wait_for(ready_again, within=30, what="the worker to be ready again")
        worker.kill_hard()

    async def stale() -> bool:
        return probe(env, "live").returncode == 1

    await wait_for(stale, within=10, what="the heartbeat to go stale")


async def test_postgres_stopped_during_a_job_the_worker_finishes_it_once(
    own_postgres: PostgresProcess, redis_url: str, tmp_path: Path
) -> None:
    registry = reconcile_registry(tmp_path / "keys.json")
    submitter = Submitter(own_postgres.url, redis_url, registry)
    env = worker_env(tmp_path, own_postgres.url, redis_url)
    with (
        running_receiver([Reply(200, delay_seconds=2)]) as receiver,
        running_worker(tmp_path, env),
    ):
        job_id = await submitter.webhook(receiver.url)

        async def in_flight() -> bool:
            return len(receiver.deliveries) == 1

        await wait_for(in_flight, what="the delivery to be in flight")
        await asyncio.to_thread(own_postgres.stop)

        async def answered() -> bool:
            return receiver.in_flight == 0

        await wait_for(answered, what="the receiver to answer")
        await asyncio.to_thread(own_postgres.start)  # the worker records the outcome now
        await submitter.engine.dispose()  # the old connections died with the server
        await submitter.wait_all([job_id], JobStatus.SUCCEEDED, within=30)
    job = await submitter.job(job_id)
    assert job.attempts == 1
    assert receiver.delivery_ids() == [str(job_id)]
    await submitter.engine.dispose()


async def test_on_rabbitmq_a_message_the_worker_cannot_take_is_dead_lettered(
    database_url: str, redis_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    env = worker_env(tmp_path, database_url, redis_url, broker_env(rabbitmq_url))
    port = env["TENANTRY_WORKER__METRICS_PORT"]
    with running_worker(tmp_path, env):
        with Connection(rabbitmq_url) as connection:  # type: ignore[no-untyped-call]
            connection.Producer().publish(
                {"args": [], "kwargs": {}},
                routing_key=AMQP_JOBS_QUEUE,
                headers={"task": "tenantry.no_such_task", "id": str(uuid.uuid4()), "lang": "py"},
                serializer="json",
                priority=1,
            )

        async def dead_lettered() -> bool:
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            return f'tenantry_queue_depth{{queue="{AMQP_DEAD_LETTER_QUEUE}"}} 1.0' in scraped

        await wait_for(dead_lettered, within=30, what="the message in the dead-letter queue")
