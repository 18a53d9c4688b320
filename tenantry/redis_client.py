"""The one place Redis clients are made, with timeouts short enough that a hung Redis costs a
request milliseconds, never a stuck worker."""

from __future__ import annotations

import redis.asyncio as aioredis


def create_redis(
    url: str, *, timeout_seconds: float = 0.25, max_connections: int = 64
) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        max_connections=max_connections,
        decode_responses=False,
    )
