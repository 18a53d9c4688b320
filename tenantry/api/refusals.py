"""Refused keys, sampled into the audit trail.

Someone guessing keys produces refusals by the thousand; the audit trail wants the evidence,
not every attempt. So at most one row per client address and reason is queued per window,
the queue is bounded, and a refusal that finds it full is counted in a metric rather than
kept. A background task writes the queued rows, each in a transaction of its own, off the
request path: a refused request never waits on the database.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import structlog
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.audit import append_audit
from tenantry.contract.keys import MalformedApiKeyError, parse_key

log = structlog.get_logger("tenantry.api.refusals")

ACTION = "key.refused"


@dataclass(frozen=True, slots=True)
class Refusal:
    address: str
    reason: str
    key_id: str | None
    request_id: str


class RefusalAudit:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dropped: Counter,
        *,
        window_seconds: float = 60.0,
        max_pending: int = 1000,
        max_addresses: int = 65_536,
    ) -> None:
        self._sessions = sessions
        self._dropped = dropped
        self._window = window_seconds
        self._max_addresses = max_addresses
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._queue: asyncio.Queue[Refusal] = asyncio.Queue(maxsize=max_pending)

    def offer(self, address: str, reason: str, presented: str | None, request_id: str) -> None:
        """Queue a row for this refusal unless one for the same address and reason was
        queued within the window. Only a well-formed key's public id is recorded."""
        now = time.monotonic()
        sample = (address, reason)
        last = self._last.pop(sample, None)
        if last is not None and now - last < self._window:
            self._last[sample] = last
            return
        self._last[sample] = now
        while len(self._last) > self._max_addresses:
            self._last.popitem(last=False)
        try:
            key_id = parse_key(presented).key_id if presented else None
        except MalformedApiKeyError:
            key_id = None
        try:
            self._queue.put_nowait(Refusal(address, reason, key_id, request_id))
        except asyncio.QueueFull:
            self._dropped.labels("queue_full").inc()

    async def run(self) -> None:
        """Write queued rows until cancelled; a row the database refuses is counted, not retried."""
        while True:
            refusal = await self._queue.get()
            try:
                async with self._sessions.begin() as session:
                    await append_audit(
                        session,
                        actor=f"address:{refusal.address}",
                        action=ACTION,
                        detail={"reason": refusal.reason, "key_id": refusal.key_id},
                        request_id=refusal.request_id,
                    )
            except (SQLAlchemyError, OSError) as error:
                self._dropped.labels("database").inc()
                log.warning("refusal_audit_failed", reason=refusal.reason, error=str(error))
            finally:
                self._queue.task_done()

    async def drain(self, timeout_seconds: float) -> None:
        """Let `run` write what is queued (at shutdown, before it is cancelled), for up to
        `timeout_seconds`; rows still queued then are counted as dropped."""
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._queue.join()
        except TimeoutError:
            self._dropped.labels("shutdown").inc(self._queue.qsize())
            log.warning("refusal_audit_not_drained", rows=self._queue.qsize())
