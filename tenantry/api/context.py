"""What one request carries through the API (`scope["tenantry"]`), and how a handler reads the
caller the admission layer admitted:

    async def get_limits(caller: Caller) -> ...: caller.tenant.tenant_id
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from tenantry.api.auth import AdmittedCaller
from tenantry.api.limiter.decision import Decision
from tenantry.api.routes import DECLARATION, RouteDeclaration, RouteEntry


@dataclass(slots=True)
class RequestContext:
    """Per-request facts the middleware, the admission layer and the handlers share."""

    request_id: str
    trace_id: str | None = None
    route: RouteEntry | None = None  # None until matched, and for a path no route has
    caller: AdmittedCaller | None = None
    decision: Decision | None = None
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()  # declared by the route (deprecation)
    rate_headers: Sequence[tuple[bytes, bytes]] = ()  # what the limiter decided


def request_context(request: Request) -> RequestContext:
    context: RequestContext = request.scope["tenantry"]
    return context


async def admitted_caller(request: Request) -> AdmittedCaller:
    """The admitted caller, read from the request's context (no second lookup)."""
    caller = request_context(request).caller
    if caller is None:  # the route table refuses a public route that takes the caller
        raise LookupError(f"{request.method} {request.url.path} was not admitted")
    return caller


setattr(admitted_caller, DECLARATION, RouteDeclaration(reads_caller=True))

Caller = Annotated[AdmittedCaller, Depends(admitted_caller)]
"""A handler parameter: the caller the admission layer admitted for this request."""
