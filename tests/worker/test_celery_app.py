"""The Celery application's routing and its refusal of unsafe settings."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from kombu.connection import Connection

from tenantry.jobs.broker import (
    AMQP_JOBS_QUEUE,
    AMQP_PRIORITIES,
    QUEUES,
    CeleryPublisher,
    broker_url,
)
from tenantry.jobs.queueing import JobMessage, PublishError
from tenantry.settings import Settings, WorkerSettings
from tenantry.worker.broker_status import BrokerUnreachableError, broker_status
from tenantry.worker.celery_app import create_celery
from tests.harness.servers import free_port
from tests.worker.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("queue", ["jobs.high", "jobs.default", "jobs.low"])
async def test_a_job_lands_on_its_tiers_queue_only(redis_url: str, queue: str) -> None:
    app = create_celery(Settings(redis_url=redis_url))
    await CeleryPublisher(app).publish(JobMessage(job_id=uuid.uuid4(), attempt=0, queue=queue))
    client = redis.Redis.from_url(redis_url)
    depths = {name: client.llen(name) for name in QUEUES}
    client.close()
    assert depths == {name: int(name == queue) for name in QUEUES}


def rabbitmq_settings(url: str, **worker: object) -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        worker=WorkerSettings.model_validate({"broker_url": url} | worker),
    )


def amqp_messages(url: str, queue: str) -> list[tuple[str, int]]:
    """(task name, priority) of every message waiting in `queue`, in delivery order."""
    received = []
    with Connection(url) as connection, connection.channel() as channel:  # type: ignore[no-untyped-call]
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            received.append((message.headers["task"], message.properties["priority"]))
    return received


async def test_on_rabbitmq_a_job_goes_to_the_priority_queue_with_its_tiers_priority(
    rabbitmq_url: str,
) -> None:
    publisher = CeleryPublisher(create_celery(rabbitmq_settings(rabbitmq_url)))
    for queue in ("jobs.low", "jobs.default", "jobs.high", "jobs.low"):
        await publisher.publish(JobMessage(job_id=uuid.uuid4(), attempt=0, queue=queue))
    # Published low first, delivered high first: the queue orders by message priority.
    priorities = [priority for _, priority in amqp_messages(rabbitmq_url, AMQP_JOBS_QUEUE)]
    assert priorities == [
        AMQP_PRIORITIES["jobs.high"],
        AMQP_PRIORITIES["jobs.default"],
        AMQP_PRIORITIES["jobs.low"],
        AMQP_PRIORITIES["jobs.low"],
    ]


async def test_the_queue_depths_count_the_waiting_jobs_on_either_broker(broker_url: str) -> None:
    settings = Settings(redis_url=broker_url, worker=WorkerSettings(broker_url=broker_url))
    publisher = CeleryPublisher(create_celery(settings))
    for queue in ("jobs.high", "jobs.default", "jobs.default"):
        await publisher.publish(JobMessage(job_id=uuid.uuid4(), attempt=0, queue=queue))
    status = broker_status(broker_url, timeout_seconds=2)
    try:
        queues = publisher.queues.observed
        depths = dict(zip(queues, status.depths(queues), strict=True))
    finally:
        status.close()
    expected = (
        {"jobs": 3, "jobs.dead": 0}
        if publisher.queues.amqp
        else {"maintenance": 0, "jobs.high": 1, "jobs.default": 2, "jobs.low": 0}
    )
    assert depths == expected


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_an_unreachable_broker_fails_the_depths_and_the_ping(scheme: str) -> None:
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}/" + ("0" if scheme == "redis" else "")
    status = broker_status(url, timeout_seconds=1)
    with pytest.raises(BrokerUnreachableError):
        status.ping()
    with pytest.raises(BrokerUnreachableError):
        status.depths(["jobs"])
    status.close()


async def test_on_rabbitmq_a_retry_delayed_past_retry_max_waits_in_postgres_not_in_a_worker(
    rabbitmq_url: str,
) -> None:
    """A worker would hold it unacknowledged past RabbitMQ's consumer_timeout; the outbox
    sends it once it is due instead."""
    publisher = CeleryPublisher(create_celery(rabbitmq_settings(rabbitmq_url, retry_max_seconds=5)))
    for countdown in (3600.0, 5.0):
        await publisher.publish(
            JobMessage(
                job_id=uuid.uuid4(), attempt=1, queue="jobs.default", countdown_seconds=countdown
            )
        )
    assert len(amqp_messages(rabbitmq_url, AMQP_JOBS_QUEUE)) == 1


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
async def test_an_unreachable_broker_is_a_publish_error_not_a_hang(scheme: str) -> None:
    port = free_port()
    settings = (
        Settings(redis_url=f"redis://127.0.0.1:{port}/0")
        if scheme == "redis"
        else rabbitmq_settings(f"amqp://guest:guest@127.0.0.1:{port}//")
    )
    publisher = CeleryPublisher(create_celery(settings))
    with pytest.raises(PublishError, match="broker refused job"):
        await publisher.publish(JobMessage(job_id=uuid.uuid4(), attempt=0, queue="jobs.default"))


def test_a_visibility_timeout_shorter_than_a_job_time_limit_is_refused() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0", worker=WorkerSettings(visibility_timeout_seconds=60)
    )
    with pytest.raises(ValueError, match=r"visibility_timeout_seconds \(60\) must exceed"):
        create_celery(settings)


def test_a_rabbitmq_consumer_timeout_shorter_than_a_job_and_its_retry_delay_is_refused() -> None:
    settings = rabbitmq_settings(
        "amqp://127.0.0.1:1//", broker_consumer_timeout_seconds=600, retry_max_seconds=550
    )
    with pytest.raises(ValueError, match=r"broker_consumer_timeout_seconds \(600\), RabbitMQ's "):
        create_celery(settings)
    # The Redis timeout does not apply to RabbitMQ, and the default consumer_timeout fits.
    create_celery(rabbitmq_settings("amqp://127.0.0.1:1//", visibility_timeout_seconds=60))


def test_the_worker_without_a_broker_says_what_to_set() -> None:
    with pytest.raises(ValueError, match="TENANTRY_REDIS_URL"):
        broker_url(Settings(redis_url=None))


TENANTRY = str(Path(sys.executable).parent / "tenantry")


def test_the_worker_command_without_a_broker_exits_naming_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    result = subprocess.run(
        [TENANTRY, "worker"], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 2
    assert "set TENANTRY_REDIS_URL or TENANTRY_WORKER__BROKER_URL" in result.stderr


async def test_beat_sends_the_housekeeping_tasks_to_the_maintenance_queue(
    redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "TENANTRY_REDIS_URL": redis_url,
        "TENANTRY_WORKER__BEAT_SCHEDULE_FILE": str(tmp_path / "schedule"),
        "TENANTRY_WORKER__USAGE_FLUSH_INTERVAL_SECONDS": "0.5",
        "TENANTRY_WORKER__OUTBOX_INTERVAL_SECONDS": "0.5",
    }
    beat = await asyncio.create_subprocess_exec(
        TENANTRY, "beat", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis.from_url(redis_url)
    try:

        async def sent() -> bool:
            names = {
                json.loads(raw)["headers"]["task"] for raw in client.lrange("maintenance", 0, -1)
            }
            return {"tenantry.flush_usage", "tenantry.sweep_outbox"} <= names

        await wait_for(sent, within=30, what="beat to send the flush and the outbox sweep")
        assert client.llen("jobs.default") == 0
    finally:
        beat.terminate()
        await beat.wait()
        client.close()


async def test_on_rabbitmq_beat_sends_housekeeping_ahead_of_every_tier(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    publisher = CeleryPublisher(create_celery(rabbitmq_settings(rabbitmq_url)))
    await publisher.publish(JobMessage(job_id=uuid.uuid4(), attempt=0, queue="jobs.high"))
    env = {
        **os.environ,
        "TENANTRY_REDIS_URL": "redis://127.0.0.1:1/0",
        "TENANTRY_WORKER__BROKER_URL": rabbitmq_url,
        "TENANTRY_WORKER__BEAT_SCHEDULE_FILE": str(tmp_path / "schedule"),
        # Housekeeping expires after its interval (RabbitMQ drops it then): long enough here.
        "TENANTRY_WORKER__USAGE_FLUSH_INTERVAL_SECONDS": "5",
    }
    beat = await asyncio.create_subprocess_exec(
        TENANTRY, "beat", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        async def flush_queued() -> bool:
            with Connection(rabbitmq_url) as connection, connection.channel() as channel:  # type: ignore[no-untyped-call]
                declared = channel.queue_declare(queue=AMQP_JOBS_QUEUE, passive=True)
            return int(declared.message_count) >= 2

        await wait_for(flush_queued, within=30, what="beat to send a usage flush")
    finally:
        beat.terminate()
        await beat.wait()
    received = amqp_messages(rabbitmq_url, AMQP_JOBS_QUEUE)
    assert received[0] == ("tenantry.flush_usage", AMQP_PRIORITIES["maintenance"])
    assert received[-1] == ("tenantry.run_job", AMQP_PRIORITIES["jobs.high"])


def test_a_redis_cluster_is_refused_as_the_broker_naming_the_setting(
    redis_cluster_url: str,
) -> None:
    with pytest.raises(ValueError, match="TENANTRY_WORKER__BROKER_URL"):
        create_celery(Settings(redis_url=redis_cluster_url))
    worker = subprocess.run(
        [str(Path(sys.executable).with_name("tenantry")), "worker"],
        env={**os.environ, "TENANTRY_REDIS_URL": redis_cluster_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 2
    assert "Redis Cluster" in worker.stderr
