"""The API's access log (see `AccessLog`)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TextIO


class AccessLog:
    """The access log: one JSON line per request on stdout, in the shape of every other log
    line (`event`, `level`, `logger`, `timestamp`).

    It is the largest single cost of a request when written through a logging library, so
    the line is formatted here directly: the constant part is built once, names that repeat
    (route templates, tenant and key ids) are JSON-encoded once and remembered, and the
    timestamp's seconds are formatted once a second. Lines are buffered and written out
    together, `FLUSH_SECONDS` after the first of them (or at once when `MAX_PENDING` are
    waiting, and when the app stops), never dropped: a write per event-loop iteration cost a
    request more than formatting its line. It needs no key redaction: its fields are ids,
    names and numbers, never a presented header value (a request id is only kept when it
    matches a strict pattern that needs no JSON escaping; a trace id is hex).
    """

    MAX_NAMES = 65_536  # bounded: names come from the registry and the route table
    FLUSH_SECONDS = 0.1
    MAX_PENDING = 2_000

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._names: dict[str | None, str] = {None: "null"}
        self._second = -1
        self._stamp = ""

    def _name(self, value: str | None) -> str:
        encoded = self._names.get(value)
        if encoded is None:
            if len(self._names) >= self.MAX_NAMES:
                self._names = {None: "null"}
            encoded = self._names[value] = json.dumps(value)
        return encoded

    def write(
        self,
        request_id: str,
        trace_id: str | None,
        method: str,
        route: str,
        status: int,
        elapsed: float,
        tenant: str | None,
        key_id: str | None,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = int((now - second) * 1_000_000)
        trace = "null" if trace_id is None else f'"{trace_id}"'
        pending = self._pending
        pending.append(
            f'{{"event":"request","request_id":"{request_id}","trace_id":{trace},'
            f'"method":"{method}","route":{self._name(route)},"status":{status},'
            f'"duration_ms":{elapsed * 1000:.2f},"tenant":{self._name(tenant)},'
            f'"key_id":{self._name(key_id)},"logger":"tenantry.api.access","level":"info",'
            f'"timestamp":"{self._stamp}.{micros:06d}Z"}}\n'
        )
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write now
                self.flush()
        elif len(pending) >= self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        self._stream.write("".join(lines))
        self._stream.flush()
