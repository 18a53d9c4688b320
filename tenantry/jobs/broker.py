"""The job queues on the Celery broker, as both sides see them.

The API (and the outbox sweep) publish job messages through `broker_app`; the worker builds
its Celery app on the same one (`tenantry.worker.celery_app`), adding its tasks, delivery
settings and schedule. One declaration of the queues, the task name and the transport
options, so a message sent is a message the worker understands.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from tenantry.contract.resources import JobPriority
from tenantry.jobs.queueing import JobMessage, PublishError
from tenantry.jobs.redis_transport import TRANSPORT
from tenantry.settings import Settings

MAINTENANCE_QUEUE = "maintenance"
# Consumed in this order ("priority" strategy): housekeeping first, then by job priority.
QUEUES = (
    MAINTENANCE_QUEUE,
    JobPriority.HIGH.queue,
    JobPriority.DEFAULT.queue,
    JobPriority.LOW.queue,
)
RUN_JOB = "tenantry.run_job"
# Publishing gives up fast when the broker is away: the outbox sends the job later.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def broker_url(settings: Settings) -> str:
    url = settings.worker.broker_url or settings.redis_url
    if not url:
        raise ValueError(
            "no broker: set TENANTRY_REDIS_URL or TENANTRY_WORKER__BROKER_URL "
            "(`tenantry dev` runs jobs in process instead)"
        )
    return url


def _queue(name: str) -> Queue:
    """A queue with its own direct exchange and routing key, so a message sent to one queue
    lands in that queue only."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def broker_app(settings: Settings) -> Celery:
    """A Celery app that knows the broker and the queues: enough to publish job messages."""
    url = broker_url(settings)
    app = Celery("tenantry", broker=url, set_as_current=True)
    if urlsplit(url).scheme in ("redis", "rediss"):
        app.conf.broker_transport = TRANSPORT  # kombu's, surviving a broker drop mid-job
    app.conf.update(
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[_queue(name) for name in QUEUES],
        task_default_queue=JobPriority.DEFAULT.queue,
        broker_transport_options={
            "visibility_timeout": settings.worker.visibility_timeout_seconds,
            "queue_order_strategy": "priority",
        },
    )
    return app


class CeleryPublisher:
    """`JobPublisher` onto the Celery broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish_now(self, message: JobMessage) -> None:
        try:
            self.app.send_task(
                RUN_JOB,
                args=[str(message.job_id), message.attempt, message.tenant_id],
                queue=message.queue,
                countdown=message.countdown_seconds or None,
                time_limit=message.time_limit_seconds,
                headers={"request_id": message.request_id, "traceparent": message.trace_context},
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except (KombuError, RedisError, OSError) as error:
            raise PublishError(f"broker refused job {message.job_id}: {error}") from error

    async def publish(self, message: JobMessage) -> None:
        await asyncio.to_thread(self.publish_now, message)
