"""An auto-pipelining Redis connection for the request path.

Every request makes one Redis call (the limiter script). redis-py's asyncio client spends
most of a request's CPU budget on that one call (connection pool checkout, per-command
parsing and bookkeeping). Here all the calls the event loop collects during one iteration go
out in one write on one connection, and replies are matched to callers in order, parsed by
hiredis' C reader. Under load this turns N round trips into one, and the per-command cost
into a few microseconds, without changing what Redis executes: each EVALSHA is still its
own atomic script call.

A hung or unreachable Redis costs a caller at most `timeout` seconds: each written batch gets
one timer, and when it fires the connection is dropped, failing every call still waiting,
and the next call connects afresh. Everything else (probes, the usage merge, `/v1/usage`)
uses the ordinary client of `tenantry.redis_client`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url


def pack(args: Sequence[bytes | str | int]) -> bytes:
    """RESP encoding by hiredis (its type stub declares a one-element tuple; any length works)."""
    packed: bytes = hiredis.pack_command(cast(Any, tuple(args)))
    return packed


class RedisUnavailableError(ConnectionError):
    """Redis could not be reached or did not answer in time."""


class RedisReplyError(RuntimeError):
    """Redis answered with an error reply (e.g. `NOSCRIPT`)."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
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


class PipelinedRedis:
    """One auto-pipelined connection, (re)connected on demand."""

    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        options = parse_url(url)
        self._host = str(options.get("host", "127.0.0.1"))
        self._port = int(options.get("port", 6379))
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        self._tls = url.startswith("rediss://")
        self._timeout = timeout_seconds
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def execute(self, *args: bytes | str | int) -> Any:
        """Send one command; the reply, or `RedisUnavailableError` / `RedisReplyError`."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.call(pack(args))

    def send_packed(self, packed: bytes) -> Awaitable[Any]:
        """`execute` for a command already RESP-encoded by `pack` (callers that send the
        same command many times encode it once). On an open connection the reply's future
        itself is returned: the caller awaits it directly."""
        connection = self._connection
        if connection is None or connection.closed:
            return self._connect_and_send(packed)
        return connection.call(packed)

    async def _connect_and_send(self, packed: bytes) -> Any:
        connection = await self._connect()
        return await connection.call(packed)

    async def _connect(self) -> _Connection:
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
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._timeout),
                    self._host,
                    self._port,
                    ssl=ssl.create_default_context() if self._tls else None,
                )
                if self._password:
                    auth = [self._username, self._password] if self._username else [self._password]
                    await connection.call(pack(["AUTH", *auth]))
                if self._db:
                    await connection.call(pack(["SELECT", self._db]))
        except (OSError, TimeoutError) as error:
            raise RedisUnavailableError(f"cannot connect to Redis: {error}") from error
        self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
