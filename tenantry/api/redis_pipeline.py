"""An auto-pipelining Redis client for the request path, for one Redis or a Redis Cluster.

Every request makes one Redis call (the limiter script). redis-py's asyncio client spends
most of a request's CPU budget on that one call (connection pool checkout, per-command
parsing and bookkeeping). Here all the calls the event loop collects during one iteration go
out in one write on one connection, and replies are matched to callers in order, parsed by
hiredis' C reader. Under load this turns N round trips into one, and the per-command cost
into a few microseconds, without changing what Redis executes: each EVALSHA is still its
own atomic script call.

A hung or unreachable Redis costs a caller at most `timeout` seconds: each written batch gets
one timer, and when it fires the connection is dropped, failing every call still waiting.
A node that failed is not called again for `NODE_RETRY_SECONDS`: its callers fail at once
(and their tenants' `failureMode` applies), then the next call connects afresh.

On a Redis Cluster (found on first contact, as `tenantry.redis_client` does) each call names
its hash slot and goes to the connection of the master serving it, from a slot map read with
`CLUSTER SLOTS`. A `MOVED` reply updates the map and the call is sent again to the new owner;
`ASK` sends it once to the importing node behind `ASKING`; `TRYAGAIN` (a slot caught half
migrated) waits a little and sends it again. Each of these replies means the command did not
run, so sending it again never counts a request twice. A node that fails, or a `MOVED`,
makes the map be read again, which is how a replica promoted after its master died is found.
Everything else (probes, the usage merge, `/v1/usage`) uses the redis-py client of
`tenantry.redis_client`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import hiredis
import structlog
from redis.asyncio.connection import parse_url

log = structlog.get_logger("tenantry.api.redis")

SLOTS = 16384
NODE_RETRY_SECONDS = 0.5  # after a node failed, its callers fail at once this long
REFRESH_INTERVAL_SECONDS = 0.5  # the slot map is read at most this often
MAX_REDIRECTIONS = 5
TRY_AGAIN_DELAYS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)  # a slot half migrated


def pack(args: Sequence[bytes | str | int]) -> bytes:
    """RESP encoding by hiredis (its type stub declares a one-element tuple; any length works)."""
    packed: bytes = hiredis.pack_command(cast(Any, tuple(args)))
    return packed


class RedisUnavailableError(ConnectionError):
    """Redis could not be reached or did not answer in time."""


class RedisReplyError(RuntimeError):
    """Redis answered with an error reply (e.g. `NOSCRIPT`)."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, node: _Node) -> None:
        self._loop = loop
        self._timeout = timeout
        self._node = node
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._outgoing: list[bytes] = []
        self._batch: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self.closed = False

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while (reply := self._reader.gets()) is not False:
            future = waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._node.failed(f"connection lost: {exc or 'closed'}")
        self._fail_all(RedisUnavailableError(f"connection to Redis lost: {exc or 'closed'}"))

    # --- calls -------------------------------------------------------------------------

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.closed:
            future.set_exception(RedisUnavailableError("connection to Redis is closed"))
            return future
        self._outgoing.append(packed)
        self._waiting.append(future)
        self._batch.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        if self._transport is None:
            self._fail_all(RedisUnavailableError("connection to Redis is not open"))
            return
        self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()
        batch, self._batch = self._batch, []
        self._loop.call_later(self._timeout, self._expire, batch)

    def _expire(self, batch: list[asyncio.Future[Any]]) -> None:
        if any(not future.done() for future in batch):
            self._node.failed(f"no answer in {self._timeout}s")
            self._fail_all(RedisUnavailableError(f"Redis did not answer in {self._timeout}s"))

    def _fail_all(self, error: Exception) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self._outgoing.clear()
        self._batch.clear()

    def close(self) -> None:
        self._fail_all(RedisUnavailableError("connection to Redis closed"))


class _Node:
    """One Redis server: its auto-pipelined connection, opened on demand, and whether it
    failed recently."""

    def __init__(self, client: PipelinedRedis, host: str, port: int) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.connection: _Connection | None = None
        self.down_until = 0.0
        self._connecting: asyncio.Task[_Connection] | None = None

    def send(self, packed: bytes) -> Awaitable[Any]:
        connection = self.connection
        if connection is not None and not connection.closed:
            return connection.call(packed)
        return self._connect_and_send(packed)

    async def _connect_and_send(self, packed: bytes) -> Any:
        connection = await self.open_connection()
        return await connection.call(packed)

    async def open_connection(self) -> _Connection:
        connection = self.connection
        if connection is not None and not connection.closed:
            return connection
        if time.monotonic() < self.down_until:
            raise RedisUnavailableError(f"Redis at {self.name} failed moments ago")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        options = self.client.options
        try:
            async with asyncio.timeout(options.timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, options.timeout, self),
                    self.host,
                    self.port,
                    ssl=options.tls,
                )
                if options.password:
                    auth = [options.username, options.password]
                    await connection.call(pack(["AUTH", *(a for a in auth if a)]))
                if options.db:
                    await connection.call(pack(["SELECT", options.db]))
        except (OSError, TimeoutError, RedisReplyError) as error:
            self.failed(f"cannot connect: {error}")
            raise RedisUnavailableError(
                f"cannot connect to Redis at {self.name}: {error}"
            ) from error
        if self.down_until:
            log.info("redis_node_available", node=self.name)
            self.down_until = 0.0
        self.connection = connection
        return connection

    def failed(self, reason: str) -> None:
        if not self.down_until:
            log.warning("redis_node_unavailable", node=self.name, reason=reason)
        self.down_until = time.monotonic() + NODE_RETRY_SECONDS
        self.client.node_failed()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class _Options:
    """What the URL says, read as redis-py reads it (`rediss://` for TLS, with its
    `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` and `ssl_cert_reqs` query options)."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed: dict[str, Any] = dict(parse_url(url))
        self.host = str(parsed.get("host", "127.0.0.1"))
        self.port = int(parsed.get("port", 6379))
        self.db = int(parsed.get("db", 0))
        self.username: str | None = parsed.get("username")
        self.password: str | None = parsed.get("password")
        self.timeout = timeout
        self.tls: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            self.tls = ssl.create_default_context(cafile=parsed.get("ssl_ca_certs"))
            if parsed.get("ssl_certfile"):
                self.tls.load_cert_chain(parsed["ssl_certfile"], parsed.get("ssl_keyfile"))
            if parsed.get("ssl_cert_reqs") == "none":
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE


class PipelinedRedis:
    """Auto-pipelined connections to one Redis or to every master of a cluster. Each call
    names the hash slot of its keys (any value on one Redis)."""

    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        self.options = _Options(url, timeout_seconds)
        self._seed = _Node(self, self.options.host, self.options.port)
        self._nodes: dict[str, _Node] = {self._seed.name: self._seed}
        # The node serving each slot (the one node, 16384 times, off a cluster); None until
        # Redis first answered.
        self._route: list[_Node] | None = None
        self.cluster = False
        self._detecting: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    def send_packed(self, packed: bytes, slot: int = 0) -> Awaitable[Any]:
        """Send one RESP-encoded command (`pack`) about keys of hash slot `slot`; on an open
        connection the reply's future itself is returned, for the caller to await. A
        cluster's redirection comes back as `RedisReplyError`: see `follow`."""
        route = self._route
        if route is None:
            return self._detect_and_send(packed, slot)
        return route[slot].send(packed)

    async def execute(self, *args: bytes | str | int, slot: int = 0) -> Any:
        """Send one command about keys of `slot`, following a cluster's redirections."""
        return await self.request(pack(args), slot)

    async def request(self, packed: bytes, slot: int = 0) -> Any:
        """`send_packed`, following a cluster's redirections."""
        try:
            return await self.send_packed(packed, slot)
        except RedisReplyError as error:
            return await self.follow(packed, slot, error)

    async def follow(self, packed: bytes, slot: int, error: RedisReplyError) -> Any:
        """Send `packed` again where a cluster's `MOVED`, `ASK` or `TRYAGAIN` reply says;
        any other error is raised as it came."""
        tries = 0
        while True:
            kind, _, rest = str(error).partition(" ")
            if kind == "MOVED":
                node = self._node_at(rest.split()[1])
                if self._route is not None:
                    self._route[slot] = node
                self.refresh_soon()
                reply = node.send(packed)
            elif kind == "ASK":
                # `ASKING` holds for the next command on the same connection only: both go
                # out back to back, in the same write.
                connection = await self._node_at(rest.split()[1]).open_connection()
                asking = connection.call(pack([b"ASKING"]))
                reply = connection.call(packed)
                await asking
            elif kind == "TRYAGAIN" and tries < len(TRY_AGAIN_DELAYS):
                await asyncio.sleep(TRY_AGAIN_DELAYS[tries])
                reply = self.send_packed(packed, slot)
            else:
                if kind == "CLUSTERDOWN":
                    self.refresh_soon()
                raise error
            tries += 1
            try:
                return await reply
            except RedisReplyError as again:
                if tries >= MAX_REDIRECTIONS + len(TRY_AGAIN_DELAYS):
                    raise RedisUnavailableError(f"Redis kept redirecting: {again}") from again
                error = again

    # --- the cluster's shape ----------------------------------------------------------

    async def _detect_and_send(self, packed: bytes, slot: int) -> Any:
        if self._detecting is None or self._detecting.done():
            self._detecting = asyncio.get_running_loop().create_task(self._detect())
        await asyncio.shield(self._detecting)
        assert self._route is not None
        return await self._route[slot].send(packed)

    async def _detect(self) -> None:
        info = await self._seed.send(pack([b"INFO", b"cluster"]))
        self.cluster = b"cluster_enabled:1" in info
        if self.cluster:
            await self._read_slots()
            log.info("redis_cluster_found", masters=len(set(map(id, self._route or ()))))
        else:
            self._route = [self._seed] * SLOTS

    async def _read_slots(self) -> None:
        """Read the slot map from the first node that answers."""
        candidates = [self._seed, *(n for n in self._nodes.values() if n is not self._seed)]
        error: Exception | None = None
        for node in candidates:
            if time.monotonic() < node.down_until:
                continue
            try:
                shards = await node.send(pack([b"CLUSTER", b"SLOTS"]))
            except (RedisUnavailableError, RedisReplyError) as failure:
                error = failure
                continue
            route = list(self._route or [node] * SLOTS)
            for start, end, master, *_ in shards:
                owner = self._node_at(f"{master[0].decode() or node.host}:{master[1]}")
                route[start : end + 1] = [owner] * (end - start + 1)
            self._route = route
            self._refreshed_at = time.monotonic()
            return
        raise RedisUnavailableError(f"no node of the Redis Cluster answered: {error}")

    def _node_at(self, address: str) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            host, _, port = address.rpartition(":")
            node = self._nodes[address] = _Node(self, host, int(port))
        return node

    def node_failed(self) -> None:
        if self.cluster:
            self.refresh_soon()

    def refresh_soon(self) -> None:
        """Read the slot map again, at most once per `REFRESH_INTERVAL_SECONDS`."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        wait = self._refreshed_at + REFRESH_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            await self._read_slots()
        except RedisUnavailableError as error:
            log.warning("redis_cluster_map_unavailable", error=str(error))

    def close(self) -> None:
        for task in (self._detecting, self._refreshing):
            if task is not None:
                task.cancel()
        for node in self._nodes.values():
            node.close()
