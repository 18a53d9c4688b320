"""The route table: every route of the app, compiled once at start-up, and the declarations a
route makes to the admission layer.

A route declares what admission needs with FastAPI dependencies that the table reads when it
is compiled:

    @router.get("/v1/usage", dependencies=[requires("usage:read")])
    async def get_usage(caller: Caller): ...        # Caller: tenantry.api.context

    @router.get("/livez", dependencies=[public])
    async def livez(): ...

`requires(...)` names the scopes a key must hold, `public` lets a route through without a key
(probes, metrics), and `tenantry.api.versioning.deprecation(...)` adds response headers.
Every other route is protected: it needs a valid key, and is limited and metered. FastAPI's
own documentation routes (`/openapi.json`, `/docs`) are public.

Compiling also streamlines each route for FastAPI, which walks a route's dependency tree on
every request at a cost of tens of microseconds per dependency (`docs/benchmarks.md`): the
declarations are taken out of the tree (the admission layer has acted on them before the
handler runs), and a handler or dependency taking `caller: Caller` is handed the admitted
caller directly rather than through a dependency. What the tree declared stays readable, so
an app's routes can be compiled again.

The gateway check's table (`RouteTable.upstream`) is compiled the same way from the route
table the products declare (`ApiProduct`), every entry answered by the check's allow.

Matching a request finds its template once, so `/v1/jobs/123` and `/v1/jobs/456` share the
entry `GET /v1/jobs/{job_id}`: limits, metering, metrics and logs key on that, never on a raw
path. Routes match in the order they were declared, as in Starlette's router; a static path
is found with one dictionary lookup.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fastapi.routing
from fastapi import params
from fastapi.dependencies.models import Dependant
from starlette.routing import BaseRoute, Route, WebSocketRoute, compile_path
from starlette.types import ASGIApp

from tenantry.contract.policy import route_name
from tenantry.contract.registry import ProductRoute
from tenantry.contract.scopes import checked_scope

DECLARATION = "__tenantry_route__"  # the attribute a declaring dependency carries
ONLY_DECLARES = "__tenantry_only_declares__"  # a dependency with nothing to do per request
TREE_DECLARED = "__tenantry_tree_declared__"  # on a streamlined call: what its tree declared
REQUEST = "_tenantry_request"  # the request, passed to a streamlined call that had none
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
    setattr(declared, ONLY_DECLARES, True)
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
    route: BaseRoute | None = field(repr=False)  # FastAPI's route (`scope["route"]`), if any
    endpoint: Callable[..., Any] | None = field(repr=False)
    owner: str = OWN_ROUTE  # who serves the route: Tenantry, a plug-in or a product by name


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
            dependant: Dependant | None = getattr(route, "dependant", None)
            declared = _declaration(dependant) if dependant is not None else RouteDeclaration()
            is_public = declared.public or path in public_paths
            if declared.reads_caller and is_public:
                raise RouteTableError(
                    f"{path!r} is public, so it has no caller, but its handler takes one"
                )
            if dependant is not None:
                _streamline(dependant)
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

    @classmethod
    def upstream(cls, routes: Iterable[ProductRoute], app: ASGIApp) -> RouteTable:
        """The table of the products' routes (already merged: one entry per method and
        shape), every one answered by `app`."""
        templates: list[_Template] = []
        by_pattern: dict[str, _Template] = {}
        for declared in routes:
            route = declared.route
            regex, path, convertors = compile_path(route.path)
            template = by_pattern.get(regex.pattern)
            if template is None:
                template = _Template(path, regex, convertors, {}, not convertors)
                templates.append(template)
                by_pattern[regex.pattern] = template
            method = route.method.value
            template.entries[method] = RouteEntry(
                method=method,
                template=path,
                name=route_name(method, path),
                scopes=frozenset(route.scopes),
                public=route.public,
                headers=(),
                app=app,
                route=None,
                endpoint=None,
                owner=declared.product,
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


def _declaration(dependant: Dependant) -> RouteDeclaration:
    """Everything the dependencies under `dependant` declare, all levels down (kept on its
    call once the tree is streamlined)."""
    streamlined: RouteDeclaration | None = getattr(dependant.call, TREE_DECLARED, None)
    if streamlined is not None:
        return streamlined
    found = RouteDeclaration()
    for dependency in dependant.dependencies:
        declared = getattr(dependency.call, DECLARATION, None)
        if isinstance(declared, RouteDeclaration):
            found += declared
        found += _declaration(dependency)
    return found


def _streamline(dependant: Dependant) -> None:
    """Take the dependencies that only declare out of `dependant`'s tree, and hand the
    admitted caller to each call taking one, in place of the dependency reading it. A call is
    streamlined by wrapping it (FastAPI reads the tree and calls `dependant.call` per
    request); one FastAPI treats specially (a generator, a class) is left as it is."""
    for dependency in dependant.dependencies:
        _streamline(dependency)
    call = dependant.call
    if (
        not inspect.isfunction(call)
        or inspect.isgeneratorfunction(call)
        or inspect.isasyncgenfunction(call)
        or getattr(call, TREE_DECLARED, None) is not None  # streamlined already
    ):
        return
    handed: list[str] = []  # the parameters the caller is handed as
    kept: list[Dependant] = []
    for dependency in dependant.dependencies:
        if dependency.name and _reads_caller(dependency):
            handed.append(dependency.name)
        elif not getattr(dependency.call, ONLY_DECLARES, False):
            kept.append(dependency)
    if len(kept) == len(dependant.dependencies):
        return
    declared = _declaration(dependant)
    request_name = dependant.request_param_name or REQUEST
    streamlined = _handing_the_caller(
        call,
        tuple(handed),
        request_name,
        keep_request=dependant.request_param_name is not None,
    )
    setattr(streamlined, TREE_DECLARED, declared)
    own = getattr(call, DECLARATION, None)
    if own is not None:
        setattr(streamlined, DECLARATION, own)
    dependant.dependencies[:] = kept
    dependant.request_param_name = request_name
    dependant.call = streamlined


def _reads_caller(dependency: Dependant) -> bool:
    declared = getattr(dependency.call, DECLARATION, None)
    return isinstance(declared, RouteDeclaration) and declared.reads_caller


def _handing_the_caller(
    call: Callable[..., Any], callers: tuple[str, ...], request_name: str, *, keep_request: bool
) -> Callable[..., Any]:
    """`call`, given the admitted caller under each name in `callers` (read from the
    request's context, where the admission layer put it)."""

    def arguments(values: dict[str, Any]) -> dict[str, Any]:
        request = values[request_name] if keep_request else values.pop(request_name)
        if callers:
            caller = request.scope["tenantry"].caller
            if caller is None:  # the route table refuses a public route taking the caller
                raise LookupError(f"{request.method} {request.url.path} was not admitted")
            for name in callers:
                values[name] = caller
        return values

    if inspect.iscoroutinefunction(call):

        @functools.wraps(call)
        async def streamlined_async(**values: Any) -> Any:
            return await call(**arguments(values))

        return streamlined_async

    @functools.wraps(call)
    def streamlined(**values: Any) -> Any:
        return call(**arguments(values))

    return streamlined
