"""Running jobs: signed webhook delivery, retries, dead letters, cancellation, limits and
recovery, with the same execution code the Celery worker runs, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.registry import Registry
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import Job, JobStatus
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.webhook import WebhookDeliver, verify
from tenantry.sources import RegistryHolder
from tenantry.worker.execution import Verdict, execute_job
from tenantry.worker.outbox import sweep_outbox, trim_idempotency_keys
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


async def test_max_concurrent_jobs_holds_across_workers(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    holder = RegistryHolder()
    holder.publish(Registry.build([tenant(ACME, max_concurrent_jobs=2)]))
    settings = fast_settings()
    # Two workers, each with four consumers, sharing the tenant's slots through PostgreSQL.
    first = Harness(sessions, holder, settings)
    second = Harness(sessions, holder, settings)
    second.queue = first.queue
    with running_receiver([Reply(200, delay_seconds=0.3)]) as receiver:
        async with first.worker().running(), second.worker().running():
            jobs = [await first.submit("webhook.deliver", hook(receiver.url)) for _ in range(6)]
            for job_id in jobs:
                await first.wait_status(job_id, JobStatus.SUCCEEDED)
    assert len(receiver.deliveries) == 6
    assert receiver.max_in_flight == 2
    assert [(await first.job(job_id)).attempts for job_id in jobs] == [1] * 6


async def test_claims_racing_for_one_tenants_slots_never_take_more_than_its_limit(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    limit, jobs_per_round, workers = 3, 40, 8
    engines = [
        create_engine(database_url, pool_size=5, autocommit=True, pre_ping=False)
        for _ in range(workers)
    ]

    async def claim(worker: int, job_id: uuid.UUID, tenant_id: str) -> bool:
        now = datetime.now(UTC)
        async with engines[worker].connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT status FROM jobs_claim(:job_id, 0, :tenant_id, :slots, :now, "
                        ":lease_expires_at)"
                    ),
                    {
                        "job_id": job_id,
                        "tenant_id": tenant_id,
                        "slots": limit,
                        "now": now,
                        "lease_expires_at": now + timedelta(minutes=5),
                    },
                )
            ).first()
        return row is not None and row.status == JobStatus.RUNNING.value

    for round_number in range(10):
        tenant_id = f"customers/race-{round_number}"
        job_ids = [uuid.uuid4() for _ in range(jobs_per_round)]
        async with sessions() as session, session.begin():
            session.add_all(
                Job(id=job_id, tenant_id=tenant_id, kind="noop", queue="jobs.default", payload={})
                for job_id in job_ids
            )
        claimed = await asyncio.gather(
            *(claim(number % workers, job_id, tenant_id) for number, job_id in enumerate(job_ids))
        )
        async with sessions() as session:
            running = await session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.tenant_id == tenant_id, Job.status == JobStatus.RUNNING)
            )
        assert (sum(claimed), running) == (limit, limit), f"round {round_number}"
    for engine in engines:
        await engine.dispose()


async def test_a_dead_workers_slot_frees_itself_when_its_lease_lapses(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    holder = RegistryHolder()
    holder.publish(Registry.build([tenant(ACME, max_concurrent_jobs=1)]))
    harness = Harness(sessions, holder, fast_settings())
    dead = await harness.submit("noop", {})
    waiting = await harness.submit("noop", {})
    await harness.queue.get()
    message = await harness.queue.get()
    async with harness.sessions() as session, session.begin():
        # What a worker killed mid-job leaves behind: a running job whose lease nobody renews.
        await session.execute(
            update(Job)
            .where(Job.id == dead)
            .values(
                status=JobStatus.RUNNING,
                attempts=1,
                lease_expires_at=datetime.now(UTC) + timedelta(seconds=1),
            )
        )
    verdict = await execute_job(harness.context, waiting, message.attempt, ACME)
    assert verdict is Verdict.DEFERRED
    assert (await harness.job(waiting)).attempts == 0  # a deferral uses no attempt

    async def started() -> bool:
        verdict = await execute_job(harness.context, waiting, message.attempt, ACME)
        return verdict is Verdict.SUCCEEDED

    await wait_for(started, within=5, what="the dead job's slot to free itself")


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
