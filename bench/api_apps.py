"""The servers `bench.api` compares, each the same trivial authenticated route.

Each is imported by its own uvicorn process (`uvicorn bench.api_apps:<name> --factory`);
configuration comes from the environment `bench.api` sets (`BENCH_REDIS_URL`, `TENANTRY_*`).
The peers key their limit on the presented `X-API-Key`, as an API would; their limits are
set high enough that every request is admitted, so the admitted path is what is measured.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tenantry.api import Caller, requires
from tenantry.api.app import app_from_environment, create_app
from tenantry.api.limiter.script import SCRIPT, SCRIPT_SHA, ScriptCall
from tenantry.api.plugins import Plugin
from tenantry.api.redis_pipeline import RedisReplyError, RedisUnavailableError
from tenantry.api.server import Listeners
from tenantry.logs import configure_logging
from tenantry.redis_client import create_redis
from tenantry.settings import get_settings

PING_PATH = "/v1/ping"


def bare() -> FastAPI:
    """Bare FastAPI: no authentication, no limiter."""
    app = FastAPI()

    @app.get(PING_PATH)
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def _api_key(request: Request) -> str:
    return request.headers.get("x-api-key", "anonymous")


def slowapi_app() -> FastAPI:
    """slowapi (the `limits` library) with its Redis storage, fixed window per key."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    limiter = Limiter(key_func=_api_key, storage_uri=os.environ["BENCH_REDIS_URL"])
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get(PING_PATH)
    @limiter.limit("100000000/minute")
    async def ping(request: Request) -> dict[str, bool]:
        return {"ok": True}

    return app


def fastapi_limiter_app() -> FastAPI:
    """fastapi-limiter (pyrate-limiter's RedisBucket on redis-py's asyncio client)."""
    from fastapi_limiter.depends import RateLimiter
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket
    from redis.asyncio import Redis

    state: dict[str, Any] = {}

    async def identifier(request: Request) -> str:
        return _api_key(request)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(os.environ["BENCH_REDIS_URL"])
        rates = [Rate(100_000_000, Duration.MINUTE)]
        bucket = await RedisBucket.init(rates, redis, "bench-fastapi-limiter")
        state["limiter"] = RateLimiter(Limiter(bucket), identifier=identifier)
        yield
        await redis.aclose()

    async def limited(request: Request, response: Any = None) -> None:
        from starlette.responses import Response

        await state["limiter"](request, response or Response())

    app = FastAPI(lifespan=lifespan)

    @app.get(PING_PATH, dependencies=[Depends(limited)])
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def tenantry_app() -> FastAPI:
    """Tenantry's full path on a protected route: key auth, GCRA, quota and usage metering in
    one Redis call, the middleware (request id, security headers, metrics, access log)."""
    app = app_from_environment()

    @app.get(PING_PATH)
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def tenantry_check_app() -> Listeners:
    """The gateway check alone, as `tenantry api` serves it on the check's port: the port
    this app is served on must be `TENANTRY_API__CHECK_PORT` (the benchmark sets both). The
    request names the original one Envoy's way, `/authz` + its path."""
    return Listeners(app_from_environment())


def tenantry_caller_app() -> FastAPI:
    """Tenantry's full path, the handler reading the admitted caller (`caller: Caller`)."""
    app = app_from_environment()

    @app.get(PING_PATH)
    async def ping(caller: Caller) -> dict[str, bool]:
        return {"ok": True}

    return app


def tenantry_plugin_app() -> FastAPI:
    """The same route served by a plug-in, as `tenantry api` mounts an installed one: its own
    router, a scope of its own, and the handler reading the caller."""
    router = APIRouter()

    @router.get(PING_PATH, dependencies=[requires("bench:ping")])
    async def ping(caller: Caller) -> dict[str, bool]:
        return {"ok": True}

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, plugins=[Plugin("bench", router)])


class RedisPyScriptRunner:
    """The limiter's script calls on redis-py's asyncio client (hiredis parsing, its connection
    pool), `EVALSHA` with a `SCRIPT LOAD` after `NOSCRIPT`: the alternative the auto-pipelined
    connection is measured against."""

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def run(self, call: ScriptCall) -> Sequence[int]:
        try:
            try:
                reply = await self._client.evalsha(SCRIPT_SHA, *call.arguments)
            except NoScriptError:
                await self._client.script_load(SCRIPT)
                reply = await self._client.evalsha(SCRIPT_SHA, *call.arguments)
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise RedisUnavailableError(str(error)) from error
        except ResponseError as error:
            raise RedisReplyError(str(error)) from error
        return cast(Sequence[int], reply)


def tenantry_redis_py_app() -> FastAPI:
    """`tenantry_app` with the limiter's script calls on redis-py's asyncio client."""
    settings = get_settings()
    assert settings.redis_url is not None
    configure_logging(settings.log_level, settings.log_format)
    client = create_redis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
    app = create_app(settings, scripts=RedisPyScriptRunner(client))

    @app.get(PING_PATH)
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app
