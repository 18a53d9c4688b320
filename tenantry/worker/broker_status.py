"""What the worker's probes and metrics ask of the broker, on Redis or on RabbitMQ.

Two questions, each with a short timeout and no retries of its own (the callers repeat on
their own schedule): does the broker answer, and how many messages wait in each queue.
Each broker's errors are mapped here to `BrokerUnreachableError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import redis
from amqp.exceptions import AMQPError, NotFound
from kombu.connection import Connection
from kombu.exceptions import KombuError
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tenantry.jobs.broker import AMQP_DEAD_LETTER_QUEUE, is_amqp


class BrokerUnreachableError(Exception):
    """The broker did not answer within the timeout."""


class BrokerStatus(Protocol):
    def ping(self) -> None: ...

    def depths(self, queues: Sequence[str]) -> list[int]: ...

    def close(self) -> None: ...


class RedisBrokerStatus:
    """Redis: PING, and LLEN of each queue's list in one pipeline."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        # One attempt per call: redis-py's default retries would add up to a second of
        # backoff to every check while the broker is away.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )

    def ping(self) -> None:
        try:
            self.client.ping()
        except (RedisError, OSError) as error:
            raise BrokerUnreachableError(str(error)) from error

    def depths(self, queues: Sequence[str]) -> list[int]:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(queue)
                return [int(depth) for depth in pipe.execute()]
        except (RedisError, OSError) as error:
            raise BrokerUnreachableError(str(error)) from error

    def close(self) -> None:
        self.client.close()


class AmqpBrokerStatus:
    """RabbitMQ: an AMQP connection that opens, and a passive `queue.declare` per queue,
    whose answer carries the count of messages ready in it. The connection is kept between
    calls and opened again after a failure."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        self.url = url
        self.timeout = timeout_seconds
        self.connection: Connection | None = None

    def _connected(self) -> Connection:
        if self.connection is None:
            connection = Connection(  # type: ignore[no-untyped-call]
                self.url, connect_timeout=self.timeout, heartbeat=0
            )
            try:
                connection.ensure_connection(max_retries=0, timeout=self.timeout)  # type: ignore[no-untyped-call]
            except (KombuError, AMQPError, OSError) as error:
                connection.release()  # type: ignore[no-untyped-call]
                raise BrokerUnreachableError(str(error)) from error
            self.connection = connection
        return self.connection

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.release()  # type: ignore[no-untyped-call]
            self.connection = None

    def ping(self) -> None:
        self._connected()
        self._drop()

    def depths(self, queues: Sequence[str]) -> list[int]:
        """Also declares `jobs.dead` on each new connection: the jobs queue dead-letters into
        it, and RabbitMQ drops what it dead-letters to a queue that does not exist (declaring
        an existing queue changes nothing)."""
        fresh = self.connection is None
        connection = self._connected()
        counts = []
        try:
            if fresh:
                with connection.channel() as channel:  # type: ignore[no-untyped-call]
                    channel.queue_declare(
                        queue=AMQP_DEAD_LETTER_QUEUE, durable=True, auto_delete=False
                    )
            for queue in queues:
                # A failed passive declare closes its channel: one channel per queue.
                with connection.channel() as channel:  # type: ignore[no-untyped-call]
                    try:
                        declared = channel.queue_declare(queue=queue, passive=True)
                    except NotFound:
                        counts.append(0)  # not declared yet: nothing waits in it
                        continue
                    counts.append(int(declared.message_count))
        except (KombuError, AMQPError, OSError) as error:
            self._drop()
            raise BrokerUnreachableError(str(error)) from error
        return counts

    def close(self) -> None:
        self._drop()


def broker_status(url: str, timeout_seconds: float) -> BrokerStatus:
    if is_amqp(url):
        return AmqpBrokerStatus(url, timeout_seconds)
    return RedisBrokerStatus(url, timeout_seconds)
