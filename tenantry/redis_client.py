"""The one place redis-py clients are made: for one Redis or a Redis Cluster, whichever
`TENANTRY_REDIS_URL` points at, with timeouts short enough that a hung Redis costs a request
milliseconds, never a stuck worker.

The URL may name any node of a cluster: the first contact asks the server (`INFO cluster`)
whether it is one, and the matching client is made then, so there is no second setting to
keep in step with the first. Until Redis has answered once, `RedisConnector.client()` raises
the connection error its callers already handle for a Redis that is away.

Every key of a tenant carries its hash tag (`tenantry.contract.usage`), so whatever touches
one tenant (a script, a pipeline of its keys) lands on one node of a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

log = structlog.get_logger("tenantry.redis")

RedisClient = aioredis.Redis | aioredis.RedisCluster
REDIS_DOWN = (RedisError, RedisClusterException, OSError)
"""What a Redis (or a cluster with no reachable node, which redis-py raises outside its
`RedisError` family) that is away raises: what callers that fall back catch."""


def create_redis(
    url: str, *, timeout_seconds: float = 0.25, max_connections: int = 64
) -> aioredis.Redis:
    """A client of one Redis node."""
    return aioredis.Redis.from_url(
        url, health_check_interval=30, **_options(timeout_seconds, max_connections)
    )


def _options(timeout_seconds: float, max_connections: int) -> dict[str, Any]:
    return {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "max_connections": max_connections,
        "decode_responses": False,
    }


def cluster_enabled(info: Mapping[str, Any]) -> bool:
    """Whether a node's answer to `INFO cluster` says it runs in cluster mode."""
    return bool(int(info.get("cluster_enabled", 0)))


class RedisConnector:
    """The process's redis-py client, for one Redis or a cluster, decided on first contact."""

    def __init__(self, url: str, *, timeout_seconds: float, max_connections: int = 64) -> None:
        self.url = url
        self._timeout = timeout_seconds
        self._max_connections = max_connections
        self._client: RedisClient | None = None
        self._lock = asyncio.Lock()

    @property
    def cluster(self) -> bool | None:
        """True or False once Redis answered; None before."""
        if self._client is None:
            return None
        return isinstance(self._client, aioredis.RedisCluster)

    async def client(self) -> RedisClient:
        """The client; raises one of `REDIS_DOWN` while Redis has never answered."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._detect()
        return self._client

    async def _detect(self) -> RedisClient:
        """The client of the one node, unless that node says it belongs to a cluster."""
        single = create_redis(
            self.url, timeout_seconds=self._timeout, max_connections=self._max_connections
        )
        try:
            clustered = cluster_enabled(await single.info("cluster"))
        except BaseException:
            await single.aclose()
            raise
        if not clustered:
            log.info("redis_connected", cluster=False)
            return single
        await single.aclose()
        cluster = aioredis.RedisCluster.from_url(
            self.url,
            # A master that is down takes only its own slots away: the others keep serving.
            require_full_coverage=False,
            **_options(self._timeout, self._max_connections),
        )
        await cluster.initialize()
        log.info("redis_connected", cluster=True, masters=len(cluster.get_primaries()))
        return cluster

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def node_of(client: RedisClient, key: str) -> str:
    """The node serving `key` now ("host:port"); the one node's name off a cluster. Lets a
    caller that meets a node that is down skip that node's other keys in the same round."""
    if isinstance(client, aioredis.RedisCluster):
        node: ClusterNode | None = client.get_node_from_key(key)
        if node is not None:
            return str(node.name)
    return "redis"


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))
