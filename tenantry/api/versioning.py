"""Retiring a route: `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a successor link.

    @router.get("/v1/things", deprecated=True, dependencies=[Depends(deprecation(
        since=datetime(2026, 12, 1, tzinfo=UTC), sunset=datetime(2027, 6, 1, tzinfo=UTC),
        successor="/v2/things"))])

`deprecated=True` marks the operation in the OpenAPI document; the dependency puts the headers
on every response of the route, errors included, so clients see the date before it passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from email.utils import format_datetime

from fastapi import Request

from tenantry.api.runtime import RequestContext


def deprecation(
    *, since: datetime, sunset: datetime, successor: str | None = None
) -> Callable[[Request], Awaitable[None]]:
    if since.tzinfo is None or sunset.tzinfo is None:
        raise ValueError("deprecation: `since` and `sunset` must be timezone-aware")
    if sunset < since:
        raise ValueError("deprecation: `sunset` must not be before `since`")
    headers = [
        (b"deprecation", f"@{int(since.timestamp())}".encode()),
        (b"sunset", format_datetime(sunset, usegmt=True).encode()),
    ]
    if successor is not None:
        headers.append((b"link", f'<{successor}>; rel="successor-version"'.encode()))

    async def announce_deprecation(request: Request) -> None:
        context: RequestContext = request.scope["tenantry"]
        context.extra_headers += headers

    return announce_deprecation
