"""A real HTTP webhook receiver on 127.0.0.1 for the tests: records what it was sent and
answers from a script of responses."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    delay_seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Answers the n-th request with `script[n]` (the last entry repeats)."""

    def __init__(self, script: list[Reply] | None = None) -> None:
        self.script = script or [Reply()]
        self.deliveries: list[Delivery] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    index = len(receiver.deliveries)
                    receiver.deliveries.append(Delivery(self.path, dict(self.headers), body))
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                    reply = receiver.script[min(index, len(receiver.script) - 1)]
                try:
                    time.sleep(reply.delay_seconds)
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivery_ids(self) -> list[str]:
        return [d.headers["Tenantry-Delivery"] for d in self.deliveries]


@contextmanager
def running_receiver(script: list[Reply] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(script)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
