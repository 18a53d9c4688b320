"""Retiring a route: `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a successor link.

    @router.get("/v1/things", deprecated=True, dependencies=[deprecation(
        since=datetime(2026, 12, 1, tzinfo=UTC), sunset=datetime(2027, 6, 1, tzinfo=UTC),
        successor="/v2/things")])

`deprecated=True` marks the operation in the OpenAPI document; the declaration puts the
headers on every response of the route, refusals included (the admission layer adds them
before it admits), so clients see the date before it passes.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

from fastapi import params

from tenantry.api.routes import RouteDeclaration, declare


def deprecation(
    *, since: datetime, sunset: datetime, successor: str | None = None
) -> params.Depends:
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
    return declare(RouteDeclaration(headers=tuple(headers)), "deprecation")
