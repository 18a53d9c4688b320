"""The FastAPI application factory: `create_app(settings)`; `tenantry api` serves it.

Tenantry's own routes and every installed plug-in's (`tenantry.api.plugins`) are assembled
into one app; a plug-in that cannot be mounted stops the app from being built at all.

What lives as long as the process is built here once (clients, registry source, limiter,
metrics) and started and stopped by the lifespan; requests only read it. A request passes
the API middleware (`middleware`: request id, body limit, CORS, security headers, metrics,
access log), FastAPI's exception handling, then the admission layer (`admission`) in the
router's place, which matches it against the route table compiled at start-up, admits it
unless its route is public, and calls the route's handler. The gateway check
(`tenantry.api.check`) is served beside the app on a listener of its own
(`tenantry.api.server`), through the same middleware and the same admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import FrameType
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry.trace import Tracer

from tenantry import __version__
from tenantry.api import jobs, probes, v1
from tenantry.api.admission import AdmissionLayer
from tenantry.api.limiter.local_usage import merge_local_usage
from tenantry.api.limiter.script import PipelinedScriptRunner, ScriptRunner
from tenantry.api.middleware import ApiMiddleware
from tenantry.api.openapi import openapi_document
from tenantry.api.plugins import Plugin, PluginError, discover_plugins, mount_plugins
from tenantry.api.problems import install_problem_handlers
from tenantry.api.redis_pipeline import PipelinedRedis, RedisReplyError, RedisUnavailableError
from tenantry.api.runtime import SHARED_GAUGES_INTERVAL_SECONDS, ApiRuntime
from tenantry.api.server import STARTUP_FAILURE, Listeners
from tenantry.api.tracing import tracer_from_environment
from tenantry.db.engine import create_engine
from tenantry.jobs.kinds import JobKindError, JobKinds
from tenantry.jobs.service import JobsService
from tenantry.logs import configure_logging
from tenantry.redis_client import REDIS_DOWN, RedisConnector
from tenantry.settings import Settings, get_settings
from tenantry.sources import RegistrySource, registry_source

log = structlog.get_logger("tenantry.api")

FIRST_REGISTRY_WAIT_SECONDS = 10.0

JobsInProcess = Callable[[ApiRuntime], AbstractAsyncContextManager[JobsService]]
"""Runs jobs beside the API for as long as it serves, and gives the service submitting them
(`tenantry dev`); without it, jobs go to the Celery broker."""

DESCRIPTION = """
Tenantry's consumer API. Authenticate with `Authorization: Bearer <key>` or `X-API-Key`.
Every authenticated response carries `RateLimit-Policy` and `RateLimit` (IETF httpapi draft)
and `X-RateLimit-Limit/Remaining/Reset`; a refused request gets 429 with `Retry-After` and a
`quota-exceeded` problem naming the `violated-policies`. Errors are
`application/problem+json` (RFC 9457) and carry the request id.
"""


def create_app(
    settings: Settings | None = None,
    *,
    source: RegistrySource | None = None,
    tracer: Tracer | None = None,
    scripts: ScriptRunner | None = None,
    plugins: Sequence[Plugin] | None = None,
    jobs_in_process: JobsInProcess | None = None,
) -> FastAPI:
    """The API app. `source`, `tracer` and `scripts` (the limiter's way to Redis) replace
    what the settings would make; `plugins` replace the installed ones."""
    settings = settings or get_settings()
    redis = (
        RedisConnector(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
        if settings.redis_url
        else None
    )
    pipelined = (
        PipelinedRedis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
        if settings.redis_url and scripts is None
        else None
    )
    if pipelined is not None:
        scripts = PipelinedScriptRunner(pipelined)
    runtime = ApiRuntime(
        settings,
        engine=create_engine(settings.database_url),
        redis=redis,
        scripts=scripts,
        tracer=tracer or tracer_from_environment(),
    )
    registry_from = source or registry_source(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        routes = admission.compile(public_paths(app))
        log.info("routes_compiled", routes=len(routes.entries))
        if pipelined is not None:
            await _first_contact(pipelined)
        tasks = [asyncio.create_task(registry_from.run(runtime.holder), name="registry")]
        stop_merging = asyncio.Event()
        merging = (
            asyncio.create_task(_merge_usage_until(runtime, stop_merging), name="usage-merge")
            if redis is not None
            else None
        )
        if runtime.refusals is not None:
            tasks.append(asyncio.create_task(runtime.refusals.run(), name="refusal-audit"))
        if runtime.metrics.shared is not None:
            tasks.append(asyncio.create_task(_observe_forever(runtime), name="shared-gauges"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_REGISTRY_WAIT_SECONDS):
                await runtime.registry_ready.wait()
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # garbage collector's full passes, which otherwise stall requests for milliseconds.
        gc.collect()
        gc.freeze()
        restore_sigterm = _drain_on_sigterm(runtime)
        log.info("api_started", registry_loaded=runtime.holder.loaded)
        try:
            async with AsyncExitStack() as alongside:
                if jobs_in_process is not None:
                    app.state.jobs = await alongside.enter_async_context(jobs_in_process(runtime))
                yield
        finally:
            restore_sigterm()
            runtime.draining = True
            runtime.access_log.flush()
            gc.unfreeze()
            if runtime.refusals is not None:
                await runtime.refusals.drain(runtime.settings.api.database_timeout_seconds)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            stop_merging.set()
            if merging is not None:
                await merging
            if redis is not None and runtime.usage.held:
                await merge_local_usage(redis, runtime.usage, runtime.metrics)
            if runtime.usage.held and redis is not None:
                log.warning("usage_not_merged_at_shutdown", requests=runtime.usage.held)
            if pipelined is not None:
                pipelined.close()
            if redis is not None:
                await redis.aclose()
            if runtime.engine is not None:
                await runtime.engine.dispose()

    app = FastAPI(
        title="Tenantry API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
        # The API makes its own spans (`tenantry.api.tracing`), metrics and access log;
        # FastAPI's built-in OpenTelemetry would only add a second server span per request
        # under a global provider, and without one it still checks the providers (three
        # environment lookups) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    install_problem_handlers(app)
    owners = assemble_routes(app, discover_plugins() if plugins is None else plugins)
    app.add_middleware(ApiMiddleware, runtime=runtime)
    admission = AdmissionLayer(app.router, runtime.admission, owners=owners)
    app.router.middleware_stack = admission
    app.openapi = lambda: _openapi(app, admission)  # type: ignore[method-assign]
    return app


def assemble_routes(app: FastAPI, plugins: Sequence[Plugin]) -> dict[Callable[..., Any], str]:
    """Tenantry's own routes, then the plug-ins' (see `mount_plugins`)."""
    app.include_router(probes.router)
    app.include_router(v1.router)
    app.include_router(jobs.router)
    return mount_plugins(app, plugins)


def check_plugins() -> tuple[Plugin, ...]:
    """The installed plug-ins, once they are known to mount and every installed job kind to
    load (a `PluginError` otherwise)."""
    plugins = discover_plugins()
    assemble_routes(FastAPI(), plugins)
    try:
        JobKinds.discover()
    except JobKindError as error:
        raise PluginError(str(error)) from error
    return plugins


def public_paths(app: FastAPI) -> frozenset[str]:
    """FastAPI's own documentation routes: public, whatever else is."""
    urls = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    return frozenset(url for url in urls if url)


def _openapi(app: FastAPI, admission: AdmissionLayer) -> dict[str, Any]:
    """The OpenAPI document, built from the route table when first asked."""
    if app.openapi_schema is None:
        table = admission.table or admission.compile(public_paths(app))
        app.openapi_schema = openapi_document(app, table)
    return app.openapi_schema


def app_from_environment() -> FastAPI:
    """The API app of settings from `TENANTRY_*`, JSON logs configured in each worker
    process."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def listeners_from_environment() -> Listeners:
    """What `tenantry api` serves: the API app and the gateway check, each on its own
    listener (`tenantry.api.server`). An app that cannot be built (a setting it cannot use)
    ends the process with uvicorn's start-up failure status, which tells the supervisor of
    several processes to stop rather than start another that would fail alike."""
    try:
        return Listeners(app_from_environment())
    except Exception:
        log.exception("api_not_built")
        raise SystemExit(STARTUP_FAILURE) from None


def _drain_on_sigterm(runtime: ApiRuntime) -> Callable[[], None]:
    """Report not-ready from the moment SIGTERM arrives, then let the server's own handler
    (uvicorn's graceful shutdown) run as before. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        runtime.draining = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore


async def _first_contact(pipelined: PipelinedRedis) -> None:
    """Meet Redis before serving, so the first requests do not wait for it to be found out
    (one node or a cluster, and the cluster's slot map); a Redis that is away is met later."""
    with contextlib.suppress(RedisUnavailableError, RedisReplyError):
        await pipelined.execute(b"PING")


async def _observe_forever(runtime: ApiRuntime) -> None:
    """Keep this process's gauges in the pod's folder current for scrapes other processes
    answer."""
    while True:
        runtime.observe()
        await asyncio.sleep(SHARED_GAUGES_INTERVAL_SECONDS)


async def _merge_usage_until(runtime: ApiRuntime, stop: asyncio.Event) -> None:
    """Merge usage counted in process back into Redis once it is reachable again (a tenant
    at a time, so on a cluster each tenant's usage goes home as soon as its node is back),
    until `stop` is set. Redis is first contacted here at start-up, so that the client knows
    every node of a cluster before any of them fails.

    Ended by `stop`, never cancelled: redis-py can swallow a cancellation that lands during a
    command (the loop would then run on and shutdown wait for it for ever), and a merge cut
    short would leave the cells it took neither merged nor given back."""
    assert runtime.redis is not None
    interval = runtime.settings.api.usage_merge_interval_seconds
    while not stop.is_set():
        if runtime.redis.cluster is None:
            with contextlib.suppress(*REDIS_DOWN):
                await runtime.redis.client()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
        if runtime.usage.held and not stop.is_set():
            await merge_local_usage(runtime.redis, runtime.usage, runtime.metrics)
