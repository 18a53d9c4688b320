"""Running jobs: signed webhook delivery, retries, dead letters, cancellation, limits and
recovery, with the same execution code the Celery worker runs, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.registry import Registry
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import Job, JobStatus
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.webhook import WebhookDeliver, verify
from tenantry.redis_client import create_redis
from tenantry.sources import RegistryHolder
from tenantry.worker.execution import Verdict, execute_job
from tenantry.worker.outbox import sweep_outbox, trim_idempotency_keys
from tenantry.worker.semaphore import LocalSemaphore, RedisSemaphore
from tests.harness.servers import PostgresProcess
from tests.worker.conftest import ACME, Harness, fast_settings, tenant, wait_for
from tests.worker.receiver import Reply, running_receiver

pytestmark = pytest.mark.integration


def hook(url: str, **body: Any) -> dict[str, Any]:
    return {"url": url, "event": "order.paid", "body": body or {"order": 42}}


async def test_webhook_is_delivered_signed_with_a_stable_delivery_id(harness: Harness) -> None:
    with running_receiver() as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            job = await harness.wait_status(job_id, JobStatus.SUCCEEDED)
    [delivery] = receiver.deliveries
    secret = harness.holder.registry.tenants[ACME].webhook_signing_secret
    assert verify(secret, delivery.headers["Tenantry-Signature"], delivery.body)
    assert not verify("another-secret", delivery.headers["Tenantry-Signature"], delivery.body)
    assert delivery.headers["Tenantry-Delivery"] == str(job_id)
    assert delivery.headers["Tenantry-Event"] == "order.paid"
    assert json.loads(delivery.body) == {"order": 42}
    assert job.result == {"status_code": 200, "delivery_id": str(job_id)}
    assert job.attempts == 1


async def test_5xx_and_timeouts_are_retried_with_the_same_delivery_id(harness: Harness) -> None:
    script = [Reply(503), Reply(200, delay_seconds=6), Reply(200)]  # 6 s > the 5 s timeout
    with running_receiver(script) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            job = await harness.wait_status(job_id, JobStatus.SUCCEEDED, within=30)
    assert job.attempts == 3
    assert set(receiver.delivery_ids()) == {str(job_id)}
    assert len(receiver.deliveries) == 3


async def test_429_retry_after_is_honoured(harness: Harness) -> None:
    script = [Reply(429, headers={"Retry-After": "1"}), Reply(200)]
    with running_receiver(script) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            await harness.wait_status(job_id, JobStatus.SUCCEEDED)
    assert len(receiver.deliveries) == 2
    # The retry waited the second the receiver asked for, not the 0.2 s backoff cap.
    job = await harness.job(job_id)
    assert job.available_at is not None
    assert job.started_at is not None
    assert job.started_at >= job.available_at
    assert job.enqueued_at is not None
    assert (job.available_at - job.enqueued_at).total_seconds() >= 1.0


async def test_other_4xx_fail_at_once_with_the_error(harness: Harness) -> None:
    with running_receiver([Reply(404)]) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            job = await harness.wait_status(job_id, JobStatus.FAILED)
    assert len(receiver.deliveries) == 1
    assert job.attempts == 1
    assert job.last_error == "receiver answered 404; not retried"


async def test_a_receiver_that_keeps_failing_dead_letters_the_job(harness: Harness) -> None:
    with running_receiver([Reply(500)]) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            job = await harness.wait_status(job_id, JobStatus.FAILED, within=30)
    assert job.attempts == job.max_attempts == 8
    assert len(receiver.deliveries) == 8
    assert job.last_error == "receiver answered 500"
    assert job.finished_at is not None


async def test_circuit_breaker_stops_hammering_a_failing_host(
    sessions: async_sessionmaker[AsyncSession], holder: RegistryHolder
) -> None:
    settings = fast_settings(breaker_failure_threshold=2, breaker_cooldown_seconds=30)
    harness = Harness(sessions, holder, settings)
    with running_receiver([Reply(500)]) as receiver:
        async with harness.worker(concurrency=1).running():
            jobs = [await harness.submit("webhook.deliver", hook(receiver.url)) for _ in range(4)]

            async def all_waiting_on_the_breaker() -> bool:
                errors = [(await harness.job(j)).last_error or "" for j in jobs]
                return sum("circuit open" in e for e in errors) >= 2

            await wait_for(all_waiting_on_the_breaker, what="the breaker to open")
    assert len(receiver.deliveries) == 2  # the threshold; nothing more while open


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "http://[fe80::1]/hook",
        "http://192.168.0.10/hook",
    ],
)
async def test_private_loopback_and_link_local_targets_are_refused(
    sessions: async_sessionmaker[AsyncSession], holder: RegistryHolder, url: str
) -> None:
    harness = Harness(sessions, holder, fast_settings(webhook_allowed_networks=[]))
    job_id = await harness.submit("webhook.deliver", hook(url))
    message = await harness.queue.get()
    assert await execute_job(harness.context, message.job_id, message.attempt) is Verdict.FAILED
    job = await harness.job(job_id)
    assert "refused destination" in (job.last_error or "")
    assert job.attempts == 1


class SlowWebhook(WebhookDeliver):
    """A plug-in kind with a short soft time limit, registered like any other kind."""

    name: ClassVar[str] = "webhook.deliver"
    soft_time_limit_seconds: ClassVar[float] = 0.5
    time_limit_seconds: ClassVar[float] = 1.0
    max_attempts: ClassVar[int] = 2


async def test_the_soft_time_limit_stops_an_attempt_and_counts_as_a_failure(
    sessions: async_sessionmaker[AsyncSession], holder: RegistryHolder
) -> None:
    harness = Harness(sessions, holder, fast_settings(), kinds=JobKinds([SlowWebhook()]))
    with running_receiver([Reply(200, delay_seconds=3)]) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            job = await harness.wait_status(job_id, JobStatus.FAILED)
    assert job.attempts == 2
    assert job.last_error == "soft time limit of 0.5s exceeded"


async def test_cancelling_a_running_job_stops_it(harness: Harness) -> None:
    with running_receiver([Reply(200, delay_seconds=4)]) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            await harness.wait_status(job_id, JobStatus.RUNNING)
            running = await harness.service.cancel(ACME, job_id, actor="key:abc")
            assert running.status == JobStatus.RUNNING
            assert running.cancel_requested
            job = await harness.wait_status(job_id, JobStatus.CANCELLED, within=3)
    assert job.last_error == "cancelled while running"
    assert len(receiver.deliveries) == 1


class SwallowingRenewals(LocalSemaphore):
    """Slot renewals that swallow a cancellation landing in them, as redis-py's asyncio
    client can during a command."""

    async def acquire(self, tenant_id: str, job_id: str, slots: int, lease_seconds: float) -> bool:
        if job_id in self._held.get(tenant_id, set()):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(2)
        return await super().acquire(tenant_id, job_id, slots, lease_seconds)


async def test_a_job_ends_even_when_its_lease_renewal_swallows_the_stop(
    sessions: async_sessionmaker[AsyncSession], holder: RegistryHolder
) -> None:
    harness = Harness(sessions, holder, fast_settings(), limiter=SwallowingRenewals())
    # The delivery ends while the first renewal (after a third of the 1.5 s lease) is in flight.
    with running_receiver([Reply(200, delay_seconds=1)]) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            job = await harness.wait_status(job_id, JobStatus.SUCCEEDED, within=15)
    assert job.attempts == 1


async def test_max_concurrent_jobs_holds_across_workers(
    sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    holder = RegistryHolder()
    holder.publish(Registry.build([tenant(ACME, max_concurrent_jobs=2)]))
    client = create_redis(redis_url, timeout_seconds=2)
    settings = fast_settings()
    # Two workers, each with four consumers, sharing the tenant's slots through Redis.
    first = Harness(sessions, holder, settings, limiter=RedisSemaphore(client))
    second = Harness(sessions, holder, settings, limiter=RedisSemaphore(client))
    second.queue = first.queue
    with running_receiver([Reply(200, delay_seconds=0.3)]) as receiver:
        async with first.worker().running(), second.worker().running():
            jobs = [await first.submit("webhook.deliver", hook(receiver.url)) for _ in range(6)]
            for job_id in jobs:
                await first.wait_status(job_id, JobStatus.SUCCEEDED)
    await client.aclose()
    assert len(receiver.deliveries) == 6
    assert receiver.max_in_flight == 2


async def test_a_crashed_workers_slot_frees_itself(redis_url: str) -> None:
    client = create_redis(redis_url, timeout_seconds=2)
    slots = RedisSemaphore(client)
    assert await slots.acquire(ACME, "job-a", 1, lease_seconds=0.3)
    assert not await slots.acquire(ACME, "job-b", 1, lease_seconds=0.3)
    assert await slots.acquire(ACME, "job-a", 1, lease_seconds=0.3)  # renewal

    async def freed() -> bool:
        return await slots.acquire(ACME, "job-b", 1, lease_seconds=5)

    await wait_for(freed, within=3, what="the dead holder's lease to lapse")
    assert await slots.holders(ACME) == ["job-b"]
    await client.aclose()


async def test_a_job_whose_message_was_lost_is_sent_again(harness: Harness) -> None:
    with running_receiver() as receiver:
        job_id = await harness.submit("webhook.deliver", hook(receiver.url))
        await harness.queue.get()  # the broker loses the message
        async with harness.worker().running():
            job = await harness.wait_status(job_id, JobStatus.SUCCEEDED)
    assert job.attempts == 1
    assert receiver.delivery_ids() == [str(job_id)]


async def test_a_job_whose_worker_died_is_handed_on_after_its_lease(harness: Harness) -> None:
    with running_receiver() as receiver:
        job_id = await harness.submit("webhook.deliver", hook(receiver.url))
        message = await harness.queue.get()
        async with harness.sessions() as session, session.begin():
            # What a worker killed right after claiming leaves behind.
            await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.RUNNING, attempts=1, lease_expires_at=datetime.now(UTC))
            )
        # The dead worker's message comes back: it is stale and does nothing.
        assert await execute_job(harness.context, job_id, message.attempt) is Verdict.STALE
        async with harness.worker().running():
            job = await harness.wait_status(job_id, JobStatus.SUCCEEDED)
    assert job.attempts == 2
    assert receiver.delivery_ids() == [str(job_id)]


async def test_duplicate_messages_run_a_job_once(harness: Harness) -> None:
    with running_receiver() as receiver:
        job_id = await harness.submit("webhook.deliver", hook(receiver.url))
        message = await harness.queue.get()
        verdicts = await asyncio.gather(
            *(execute_job(harness.context, job_id, message.attempt) for _ in range(5))
        )
    assert sorted(verdicts) == sorted([Verdict.SUCCEEDED] + [Verdict.STALE] * 4)
    assert len(receiver.deliveries) == 1


async def test_expired_idempotency_keys_are_trimmed(
    sessions: async_sessionmaker[AsyncSession], holder: RegistryHolder
) -> None:
    harness = Harness(sessions, holder, fast_settings(idempotency_retention_hours=1e-6))
    first = await harness.submit("noop", {}, key="once")
    await asyncio.sleep(0.01)
    assert await trim_idempotency_keys(harness.context) == 1
    assert await harness.submit("noop", {}, key="once") != first


async def test_outbox_sweep_leaves_fresh_and_finished_jobs_alone(harness: Harness) -> None:
    job_id = await harness.submit("noop", {})
    assert await sweep_outbox(harness.context) == 0  # still within the grace period
    message = await harness.queue.get()
    assert await execute_job(harness.context, job_id, message.attempt) is Verdict.SUCCEEDED
    await asyncio.sleep(harness.settings.outbox_grace_seconds)
    assert await sweep_outbox(harness.context) == 0


async def test_postgres_stopped_during_a_job_neither_loses_nor_repeats_it(
    own_postgres: PostgresProcess, holder: RegistryHolder
) -> None:
    engine = create_engine(own_postgres.url)
    harness = Harness(session_factory(engine), holder, fast_settings(job_lease_seconds=30))
    with running_receiver([Reply(200, delay_seconds=1.5)]) as receiver:
        async with harness.worker().running():
            job_id = await harness.submit("webhook.deliver", hook(receiver.url))
            await harness.wait_status(job_id, JobStatus.RUNNING)
            await asyncio.to_thread(own_postgres.stop)  # while the receiver works

            async def answered() -> bool:
                return len(receiver.deliveries) == 1 and receiver.in_flight == 0

            await wait_for(answered, what="the receiver to answer")
            await asyncio.sleep(0.5)  # the worker now retries recording the outcome
            await asyncio.to_thread(own_postgres.start)
            job = await harness.wait_status(job_id, JobStatus.SUCCEEDED)
    assert job.attempts == 1
    assert receiver.delivery_ids() == [str(job_id)]
    await engine.dispose()
