"""The job queues on the Celery broker, as both sides see them.

The API (and the outbox sweep) publish job messages through `broker_app`; the worker builds
its Celery app on the same one (`tenantry.worker.celery_app`), adding its tasks, delivery
settings and schedule. One declaration of the queues, the task name and the transport
options, so a message sent is a message the worker understands.

Two brokers, one precedence: housekeeping first, then jobs by their tier's priority.
- Redis: a list per tier queue (`jobs.high`, `jobs.default`, `jobs.low`) and `maintenance`,
  which kombu's Redis transport polls in the listed order (`queue_order_strategy`).
- RabbitMQ: a broker delivers from several queues to one consumer in turn, whatever their
  backlog, so queues cannot give one tier precedence there. All messages go to one durable
  priority queue, `jobs` (`x-max-priority`), each with its tier's message priority; with
  the worker's prefetch of one message per process, the broker hands out the highest
  priority waiting. A message the worker refuses (an unknown task, a malformed body) is
  dead-lettered to `jobs.dead` instead of being dropped. A worker holds a delayed message
  unacknowledged until it is due, and RabbitMQ closes the channel of a consumer that holds one
  past its `consumer_timeout`: a retry delayed longer than `worker.retry_max_seconds` (only a
  receiver's Retry-After asks for that) is not published, and the outbox sweep sends it from
  PostgreSQL once it is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import structlog
from amqp.exceptions import AMQPError
from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from tenantry.contract.resources import JobPriority
from tenantry.jobs.queueing import JobMessage, PublishError
from tenantry.jobs.redis_transport import TRANSPORT
from tenantry.redis_client import cluster_enabled
from tenantry.settings import Settings

MAINTENANCE_QUEUE = "maintenance"
# Consumed in this order ("priority" strategy): housekeeping first, then by job priority.
QUEUES = (
    MAINTENANCE_QUEUE,
    JobPriority.HIGH.queue,
    JobPriority.DEFAULT.queue,
    JobPriority.LOW.queue,
)
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
# RabbitMQ: one priority queue for everything, the tier queues' names become priorities.
AMQP_JOBS_QUEUE = "jobs"
AMQP_DEAD_LETTER_QUEUE = "jobs.dead"
AMQP_PRIORITIES: Mapping[str, int] = {
    MAINTENANCE_QUEUE: 3,
    JobPriority.HIGH.queue: 2,
    JobPriority.DEFAULT.queue: 1,
    JobPriority.LOW.queue: 0,
}
RUN_JOB = "tenantry.run_job"
log = structlog.get_logger("tenantry.jobs")
# Celery configuration key: the longest countdown a message is published with (RabbitMQ only).
COUNTDOWN_LIMIT = "tenantry_countdown_limit_seconds"
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


def is_amqp(url: str) -> bool:
    return urlsplit(url).scheme in AMQP_SCHEMES


def _queue(name: str, arguments: dict[str, Any] | None = None) -> Queue:
    """A queue with its own direct exchange and routing key, so a message sent to one queue
    lands in that queue only."""
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name, queue_arguments=arguments)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class BrokerQueues:
    """The broker's queues, and where a message meant for a tier queue goes."""

    amqp: bool

    @property
    def consumed(self) -> tuple[str, ...]:
        """The queues a worker consumes, the first one served first."""
        return (AMQP_JOBS_QUEUE,) if self.amqp else QUEUES

    @property
    def observed(self) -> tuple[str, ...]:
        """The queues whose depth the worker reports."""
        return (AMQP_JOBS_QUEUE, AMQP_DEAD_LETTER_QUEUE) if self.amqp else QUEUES

    def declarations(self) -> list[Queue]:
        if not self.amqp:
            return [_queue(name) for name in QUEUES]
        return [
            _queue(
                AMQP_JOBS_QUEUE,
                {
                    "x-max-priority": max(AMQP_PRIORITIES.values()),
                    # The default exchange routes by queue name, and always exists.
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": AMQP_DEAD_LETTER_QUEUE,
                },
            )
        ]

    def route(self, queue: str) -> dict[str, Any]:
        """Celery's routing options for a message meant for the tier queue `queue`."""
        if not self.amqp:
            return {"queue": queue}
        return {"queue": AMQP_JOBS_QUEUE, "priority": AMQP_PRIORITIES[queue]}


def broker_queues(settings_or_url: Settings | str) -> BrokerQueues:
    url = settings_or_url if isinstance(settings_or_url, str) else broker_url(settings_or_url)
    return BrokerQueues(amqp=is_amqp(url))


def refuse_a_redis_cluster(url: str) -> None:
    """Raise `ValueError` when the Redis broker URL names a node of a Redis Cluster: Celery's
    Redis transport speaks to one node, and a cluster answers it with redirections. A Redis
    that does not answer is left to Celery's own reconnection."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        info: dict[str, Any] = client.info("cluster")
    except (RedisError, OSError):
        return
    finally:
        client.close()
    if cluster_enabled(info):
        raise ValueError(
            "the broker is a Redis Cluster node, which Celery's Redis transport cannot use: set "
            "TENANTRY_WORKER__BROKER_URL to RabbitMQ (amqp://...) or to a Redis of its own"
        )


def broker_app(settings: Settings) -> Celery:
    """A Celery app that knows the broker and the queues: enough to publish job messages.
    Raises `ValueError` for a broker Celery cannot use."""
    url = broker_url(settings)
    if not is_amqp(url):
        refuse_a_redis_cluster(url)
    queues = broker_queues(url)
    app = Celery("tenantry", broker=url, set_as_current=True)
    if urlsplit(url).scheme in ("redis", "rediss"):
        app.conf.broker_transport = TRANSPORT  # kombu's, surviving a broker drop mid-job
    # No `task_default_priority`: it would take precedence over the routes' priorities.
    app.conf.update(
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=queues.declarations(),
        task_default_queue=AMQP_JOBS_QUEUE if queues.amqp else JobPriority.DEFAULT.queue,
    )
    if queues.amqp:
        app.conf[COUNTDOWN_LIMIT] = settings.worker.retry_max_seconds
    else:
        app.conf.broker_transport_options = {
            "visibility_timeout": settings.worker.visibility_timeout_seconds,
            "queue_order_strategy": "priority",
        }
    return app


class CeleryPublisher:
    """`JobPublisher` onto the Celery broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.queues = broker_queues(str(app.conf.broker_url))
        self.countdown_limit: float | None = app.conf.get(COUNTDOWN_LIMIT)

    def publish_now(self, message: JobMessage) -> None:
        if self.countdown_limit is not None and message.countdown_seconds > self.countdown_limit:
            # Left in PostgreSQL (queued, `available_at` ahead): the outbox sends it when due.
            log.info(
                "job.publish_deferred_to_outbox",
                job_id=str(message.job_id),
                countdown_seconds=message.countdown_seconds,
            )
            return
        try:
            self.app.send_task(
                RUN_JOB,
                args=[str(message.job_id), message.attempt, message.tenant_id],
                **self.queues.route(message.queue),
                countdown=message.countdown_seconds or None,
                time_limit=message.time_limit_seconds,
                headers={"request_id": message.request_id, "traceparent": message.trace_context},
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except (KombuError, RedisError, AMQPError, OSError) as error:
            raise PublishError(f"broker refused job {message.job_id}: {error}") from error

    async def publish(self, message: JobMessage) -> None:
        await asyncio.to_thread(self.publish_now, message)
