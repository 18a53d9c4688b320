"""The broker transport keeps a broker drop during a running job from stopping the worker."""

from __future__ import annotations

import logging

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from tenantry.jobs.redis_transport import TRANSPORT

pytestmark = pytest.mark.integration


def test_a_broker_drop_mid_job_leaves_its_message_unacked_and_the_worker_running(
    redis_url: str,
) -> None:
    """What Celery does when Redis drops mid-job: the connection is released, the channel
    holding the job's unacknowledged message is closed, and the finished job is acked on
    that channel. Kombu's own transport raises `AttributeError` in both (an "unrecoverable
    error": the worker stops); this one raises the connection error Celery handles, and the
    message stays in Redis' unacknowledged set for the visibility timeout to restore."""
    exchange = Exchange("transport-test", type="direct")  # type: ignore[no-untyped-call]
    queue = Queue("transport-test", exchange, "transport-test")  # type: ignore[no-untyped-call]
    with Connection(redis_url, transport=TRANSPORT) as connection:  # type: ignore[no-untyped-call]
        channel = connection.channel()
        producer = connection.Producer(channel)
        producer.publish(
            {"job": 1}, exchange=queue.exchange, routing_key="transport-test", declare=[queue]
        )
        message = channel.basic_get("transport-test", no_ack=False)
        assert message is not None
        errors = connection.connection_errors + connection.channel_errors
        # The state the drop leaves: the channel's pool reset, the transport released.
        channel._pool = None
        channel.connection.client = None
        connection.maybe_close_channel(channel)  # as Celery closes it
        message.ack_log_error(logging.getLogger("test"), errors)  # as Celery acks the job
    assert redis.Redis.from_url(redis_url).hlen("unacked") == 1
