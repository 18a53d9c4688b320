"""Kombu's Redis transport, with one failure of its own kept from stopping the worker.

When the broker drops while messages are unacknowledged (late acknowledgement: the job is
still running), Celery releases the connection, then closes its channel, and later acks the
finished job's message on that channel. Both need a Redis client, and kombu builds one from
the connection's parameters, which a released connection no longer has: the `AttributeError`
that follows is taken by Celery as unrecoverable, and the worker stops instead of
reconnecting. Here a channel whose connection was released raises a connection error, which
Celery expects of a broker that went away: the close skips restoring the messages (they stay
in Redis' unacknowledged set, for the visibility timeout to restore) and the ack is logged as
lost (the job's outcome is already in PostgreSQL; the outbox sweep re-sends the message of
any job still queued there).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError("the broker connection of this channel was released")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
