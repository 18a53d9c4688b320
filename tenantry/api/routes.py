"""The route table: every route of the app, compiled once at start-up, and the declarations a
route makes to the admission layer.

A route declares what admission needs with FastAPI dependencies that the table reads when it
is compiled (per request they do nothing):

    @router.get("/v1/usage", dependencies=[requires("usage:read")])
    async def get_usage(caller: Caller): ...        # Caller: tenantry.api.context

    @router.get("/livez", dependencies=[public])
    async def livez(): ...

`requires(...)` names the scopes a key must hold, `public` lets a route through without a key
(probes, metrics), and `tenantry.api.versioning.deprecation(...)` adds response headers.
Every other route is protected: it needs a valid key, and is limited and metered. FastAPI's
own documentation routes (`/openapi.json`, `/docs`) are public.

Matching a request finds its template once, so `/v1/jobs/123` and `/v1/jobs/456` share the
entry `GET /v1/jobs/{job_id}`: limits, metering, metrics and logs key on that, never on a raw
path. Routes match in the order they were declared, as in Starlette's router; a static path
is found with one dictionary lookup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fastapi.routing
from fastapi import params
from fastapi.dependencies.models import Dependant
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp

from tenantry.contract.policy import route_name
from tenantry.contract.scopes import checked_scope

DECLARATION = "__tenantry_route__"  # the attribute a declaring dependency carries
OWN_ROUTE = "tenantry"  # the owner of Tenantry's own routes; a plug-in's are its name


@dataclass(frozen=True, slots=True)
class RouteDeclaration:
    """What a route tells the admission layer (declarations of one route add up)."""

    scopes: frozenset[str] = frozenset()
    public: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = ()  # put on every response of the route
    reads_caller: bool = False  # the handler takes the admitted caller

    def __add__(self, other: RouteDeclaration) -> RouteDeclaration:
        return RouteDeclaration(
            self.scopes | other.scopes,
            self.public or other.public,
            self.headers + other.headers,
            self.reads_caller or other.reads_caller,
        )


def declare(declaration: RouteDeclaration, name: str) -> params.Depends:
    """A route dependency carrying `declaration` for the route table."""

    async def declared() -> None:
        """Read by the route table at start-up; the admission layer has already acted on it
        by the time a handler runs."""

    declared.__name__ = declared.__qualname__ = name
    setattr(declared, DECLARATION, declaration)
    return params.Depends(declared)


def requires(*scopes: str) -> params.Depends:
    """Declare that a route's caller must hold every one of `scopes`, each `resource:action`
    (403 otherwise). A malformed scope is refused here, where the route is declared."""
    if not scopes:
        raise ValueError("requires() needs at least one scope")
    checked = frozenset(checked_scope(scope) for scope in scopes)
    names = "_".join(sorted(scope.replace(":", "_") for scope in checked))
    return declare(RouteDeclaration(scopes=checked), f"requires_{names}")


public = declare(RouteDeclaration(public=True), "public")
"""Declare a route public: the admission layer lets it through without a key, unlimited."""


@dataclass(frozen=True, slots=True, eq=False)
class RouteEntry:
    """One method of one route, as admission and observation need it."""

    method: str
    template: str  # the path template, e.g. `/v1/jobs/{job_id}`
    name: str  # `METHOD /template`: the key of a policy's route override, the usage field
    scopes: frozenset[str]
    public: bool
    headers: tuple[tuple[bytes, bytes], ...]
    app: ASGIApp = field(repr=False)  # the route's handler, as an ASGI app
    route: BaseRoute = field(repr=False)  # FastAPI's route object (`scope["route"]`)
    endpoint: Callable[..., Any] | None = field(repr=False)
    owner: str = OWN_ROUTE  # who serves the route: Tenantry, or a plug-in by name


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Where a request goes: its entry, or none (then `allowed` lists the methods the path
    has: 405 if any, 404 if none)."""

    entry: RouteEntry | None
    path_params: dict[str, Any]
    allowed: tuple[str, ...] = ()


class RouteTableError(ValueError):
    """A route the admission layer cannot stand in front of."""


@dataclass(frozen=True, slots=True)
class _Template:
    template: str
    regex: re.Pattern[str]
    convertors: dict[str, Any]
    entries: dict[str, RouteEntry]  # by method
    static: bool

    def params_of(self, path: str) -> dict[str, Any] | None:
        found = self.regex.match(path)
        if found is None:
            return None
        return {
            name: self.convertors[name].convert(value) for name, value in found.groupdict().items()
        }


NOT_FOUND = RouteMatch(None, {})


class RouteTable:
    """The compiled routes of one app; `match` is all a request costs."""

    def __init__(self, templates: Sequence[_Template]) -> None:
        self._templates = tuple(templates)
        self._templated = tuple(t for t in templates if not t.static)
        # static path → where each of its methods goes, and its methods for `Allow`
        self._static: dict[str, tuple[dict[str, RouteMatch], tuple[str, ...]]] = {}
        for template in templates:
            if template.static and template.template not in self._static:
                resolved = self._resolve(template.template)
                self._static[template.template] = (resolved, tuple(sorted(resolved)))
        self.entries = tuple(entry for t in templates for entry in t.entries.values())

    @classmethod
    def compile(
        cls,
        routes: Iterable[Any],
        *,
        public_paths: Collection[str] = (),
        owners: Mapping[Callable[..., Any], str] | None = None,
    ) -> RouteTable:
        """The table of an app's routes (`app.routes`). Routes of included routers are read
        with their full path; `public_paths` are public whatever they declare (FastAPI's
        documentation routes); `owners` names the plug-in serving an endpoint."""
        owners = owners or {}
        templates: list[_Template] = []
        by_pattern: dict[str, _Template] = {}  # routes on the same path share a template
        for route in http_routes(routes):
            path: str = route.path_format
            template = by_pattern.get(route.path_regex.pattern)
            if template is None:
                convertors = dict(route.param_convertors)
                template = _Template(path, route.path_regex, convertors, {}, not convertors)
                templates.append(template)
                by_pattern[route.path_regex.pattern] = template
            declared = _declaration(getattr(route, "dependant", None))
            is_public = declared.public or path in public_paths
            if declared.reads_caller and is_public:
                raise RouteTableError(
                    f"{path!r} is public, so it has no caller, but its handler takes one"
                )
            endpoint = getattr(route, "endpoint", None)
            for method in sorted(route.methods or ()):
                if method in template.entries:
                    continue  # an earlier route with this path and method wins, as in Starlette
                template.entries[method] = RouteEntry(
                    method=method,
                    template=path,
                    name=route_name(method, path),
                    scopes=declared.scopes,
                    public=is_public,
                    headers=declared.headers,
                    app=route.app,
                    route=getattr(route, "original_route", route),
                    endpoint=endpoint,
                    owner=owners.get(endpoint, OWN_ROUTE) if endpoint else OWN_ROUTE,
                )
        return cls(templates)

    def match(self, method: str, path: str) -> RouteMatch:
        static = self._static.get(path)
        if static is not None:
            resolved, allowed_here = static
            found = resolved.get(method)
            if found is not None:
                return RouteMatch(found.entry, dict(found.path_params))
            return RouteMatch(None, {}, allowed_here)
        allowed: set[str] = set()
        for template in self._templated:
            params = template.params_of(path)
            if params is None:
                continue
            entry = template.entries.get(method)
            if entry is not None:
                return RouteMatch(entry, params)
            allowed.update(template.entries)
        return RouteMatch(None, {}, tuple(sorted(allowed))) if allowed else NOT_FOUND

    def _resolve(self, path: str) -> dict[str, RouteMatch]:
        """Where each method of a static path goes: the first template (in declaration
        order) that matches the path and has the method."""
        resolved: dict[str, RouteMatch] = {}
        for template in self._templates:
            params = template.params_of(path)
            if params is None:
                continue
            for method, entry in template.entries.items():
                resolved.setdefault(method, RouteMatch(entry, params))
        return resolved


def http_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every HTTP route with its full path, including those of included routers (which newer
    FastAPI versions keep behind route contexts rather than copying them). A route the
    admission layer cannot stand in front of is refused, naming it."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    for route in contexts(list(routes)) if contexts is not None else routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, Route) and route.methods:
            yield route
        elif isinstance(original, WebSocketRoute):
            raise RouteTableError(
                f"websocket route {original.path!r}: websockets are not served behind the "
                "admission layer"
            )
        else:
            raise RouteTableError(
                f"{type(original).__name__} {getattr(original, 'path', '?')!r}: only HTTP "
                "routes with methods can be admitted (mounts and hosts cannot)"
            )


def _declaration(dependant: Dependant | None) -> RouteDeclaration:
    """Everything a route's dependencies declare, all levels down."""
    found = RouteDeclaration()
    if dependant is None:
        return found
    for dependency in dependant.dependencies:
        declared = getattr(dependency.call, DECLARATION, None)
        if isinstance(declared, RouteDeclaration):
            found += declared
        found += _declaration(dependency)
    return found
