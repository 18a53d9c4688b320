"""Serving the API: one uvicorn server, two listeners.

The API's port serves Tenantry's routes and the plug-ins'; the gateway check's port
(`api.check_port`) serves only the check, so a public Ingress or HTTPRoute, which routes to
the API's port, can never reach it. Both sockets belong to one server (and, with
`api.workers > 1`, to every worker process), which hands each request to the app the
socket it arrived on belongs to: one lifespan, one runtime, one graceful shutdown.

With several worker processes, uvicorn's supervisor forwards SIGTERM to each, each drains
as one process does, and `Supervisor` tells prometheus_client when one has exited (its
live gauges leave the pod's sums).
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess

from tenantry.api.middleware import ApiMiddleware
from tenantry.api.runtime import ApiRuntime
from tenantry.multiprocess_metrics import multiprocess_dir
from tenantry.settings import ApiSettings

STARTUP_FAILURE = 3  # uvicorn's own exit status when the app fails to start


class Listeners:
    """The app both sockets serve: a request that arrived on the check's port goes to the
    gateway check; everything else, the lifespan included, to the API."""

    def __init__(self, api: FastAPI) -> None:
        runtime: ApiRuntime = api.state.runtime
        self.api = api
        self.check: ASGIApp = ApiMiddleware(runtime.check, runtime=runtime, gateway_check=True)
        self.check_port = runtime.settings.api.check_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            if server is not None and server[1] == self.check_port:
                await self.check(scope, receive, send)
                return
        await self.api(scope, receive, send)


def serve(app: str | ASGIApp, api: ApiSettings, *, factory: bool = False) -> None:
    """Serve `app` (an import string when `api.workers > 1`) on the API's port and, when
    set, the check's, with uvloop and httptools."""
    config = uvicorn.Config(
        app,
        factory=factory,
        host=api.host,
        port=api.port,
        workers=api.workers,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=api.keepalive_seconds,
        timeout_graceful_shutdown=api.graceful_shutdown_seconds,
        limit_max_requests=api.limit_max_requests,
        log_config=None,
        access_log=False,  # the API writes its own JSON access log, without key material
        proxy_headers=False,  # X-Forwarded-For is read only from `api.trusted_proxies`
        server_header=False,
    )
    sockets = [config.bind_socket()]
    if api.check_port is not None:
        sockets.append(_bind(api.host, api.check_port))
    if config.workers > 1:
        supervisor = Supervisor(config, sockets=sockets)
        supervisor.run()
        if supervisor.failed_to_start:
            sys.exit(STARTUP_FAILURE)
        return
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, which also marks each exited one dead for
    prometheus_client, whether it was replaced (it hung, crashed, or reached
    `api.limit_max_requests`) or the pod is stopping; and exits with uvicorn's start-up
    failure status when a worker could not start, as one process does."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._running: set[int] = set()
        self.failed_to_start = False

    def init_processes(self) -> None:
        super().init_processes()
        self._mark_exited()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self.failed_to_start = self.failed_to_start or any(
            process.exitcode == STARTUP_FAILURE for process in self.processes
        )
        self._mark_exited()

    def handle_signals(self) -> None:
        super().handle_signals()  # SIGHUP and SIGTTOU replace or retire workers
        self._mark_exited()

    def join_all(self) -> None:
        super().join_all()
        self._mark_exited()

    def _mark_exited(self) -> None:
        alive = {
            process.pid
            for process in self.processes
            if process.pid is not None and process.exitcode is None
        }
        folder = multiprocess_dir()
        if folder is not None:
            for pid in self._running - alive:
                mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
        self._running = alive


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket with the options uvicorn gives its own (`Config.bind_socket`)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        message = f"error: the gateway check cannot listen on {host}:{port}: {error}"
        raise SystemExit(message) from error
    sock.set_inheritable(True)
    return sock
