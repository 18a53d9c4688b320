"""Kubernetes probes and Prometheus metrics: public routes, that need no API key.

- `/livez`: the process and its event loop answer; never a dependency, so a Redis or
  Postgres outage can not make Kubernetes restart every replica.
- `/readyz`: Postgres answers, the registry is loaded, shutdown has not begun (and Redis, if
  `api.readiness_requires_redis`); 503 with each check otherwise. Redis being down is reported
  but, by default, does not take a replica out of service: tenants' `failureMode` decides.
- `/startupz`: migrations at head and the registry loaded.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenantry.api.routes import public
from tenantry.api.runtime import ApiRuntime

router = APIRouter(tags=["operations"], dependencies=[public])

CHECKS_EXAMPLE = {
    "status": "ready",
    "checks": {
        "registry": {"ok": True, "version": "3f2a9c0d1e2b4a5c", "age_seconds": 1.2},
        "database": {"ok": True, "latency_ms": 0.8},
        "redis": {"ok": True, "latency_ms": 0.3, "held_usage": 0},
        "shutdown": {"ok": True},
    },
}


def _runtime(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


def _answer(ok: bool, good: str, checks: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        {"status": good if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/livez", summary="Liveness: the process answers")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="Readiness: database, registry, Redis (reported), not shutting down",
    responses={
        200: {"content": {"application/json": {"example": CHECKS_EXAMPLE}}},
        503: {"description": "A required check failed; `checks` says which."},
    },
)
async def readyz(request: Request) -> JSONResponse:
    ok, checks = await _runtime(request).readiness()
    return _answer(ok, "ready", checks)


@router.get(
    "/startupz",
    summary="Startup: migrations at head and registry loaded",
    responses={503: {"description": "Not started yet; `checks` says what is missing."}},
)
async def startupz(request: Request) -> JSONResponse:
    ok, checks = await _runtime(request).startup_state()
    return _answer(ok, "started", checks)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    runtime.observe()
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
