"""The gateway check: a gateway in front of any upstream asks Tenantry, for each request,
whether to let it through, over the HTTP external-authorization conventions gateways speak.

It is served under `/authz` on a listener of its own (`api.check_port`) that no public route
reaches. The original request is read from what each gateway sends:
- Envoy ext_authz (Envoy Gateway, Istio): the check request keeps the original method, and
  the original path follows the configured prefix (`/authz/flights/42`);
- Traefik `ForwardAuth` and Caddy `forward_auth`: `X-Forwarded-Method`, `X-Forwarded-Uri`;
- nginx `auth_request`: `X-Original-Method`, `X-Original-URI`.

The path is matched against the route table the products declare (`ApiProduct`), compiled
on every registry swap. A listed path takes only its listed methods (a GET route takes HEAD
too); any other method is refused with 405 and `Allow`, so a method the product did not
declare cannot slip past the scopes of one it did. A path no product lists is admitted on the
tenant's own limit under one route name, `<unlisted>`, so raw paths never become labels or
usage rows.
Admission is the same as for every other route (`Admission.admit`: key, scopes, one Redis
call for rate, route override, quota and usage). Then:
- allow: 200 with no body, and for the upstream `X-Tenantry-Tenant`, `-Tier`, `-Key` (the
  key's name), `-Scopes` (`*` for a key holding every scope), all empty on a public route,
  plus the request id and the rate-limit headers the API middleware adds to every response;
- deny: the problem document (401, 403, 405, 429 or 503) with `Retry-After` and the
  rate-limit headers, as Tenantry's own routes answer. nginx's `auth_request` discards that body and
  turns any status but 401 and 403 into 500, so when the request came from nginx the problem
  also travels in `X-Tenantry-Problem`, from which the shipped nginx configuration answers the
  client (`examples/gateways/`).
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry.api.admission import Admission
from tenantry.api.auth import AdmittedCaller
from tenantry.api.context import RequestContext
from tenantry.api.metrics import KNOWN_METHODS
from tenantry.api.problems import (
    CHECK_REQUEST_INVALID,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    ProblemError,
    problem_body,
    refusal_response,
)
from tenantry.api.routes import RouteEntry, RouteTable
from tenantry.contract.policy import route_name
from tenantry.contract.registry import Registry

CHECK_PREFIX = "/authz"
UNLISTED_ROUTE = "<unlisted>"  # the template of every request no product route matches
UNLISTED_OWNER = "<unlisted>"
OTHER_METHOD = "OTHER"  # an unlisted request's method when it is none of the known ones

FORWARDED_METHOD = b"x-forwarded-method"
FORWARDED_URI = b"x-forwarded-uri"
ORIGINAL_METHOD = b"x-original-method"
ORIGINAL_URI = b"x-original-uri"
PROBLEM_HEADER = b"x-tenantry-problem"

CALLER_HEADERS = (b"x-tenantry-tenant", b"x-tenantry-tier", b"x-tenantry-key", b"x-tenantry-scopes")
ALLOWED_HEADERS = ((b"content-length", b"0"),)
# On a public route nobody is admitted: the caller's headers go to the upstream empty, so a
# gateway that copies them (Envoy's `headersToBackend`) overwrites whatever a client sent.
NO_CALLER_HEADERS = tuple((name, b"") for name in CALLER_HEADERS)
ALLOWED_BODY = {"type": "http.response.body", "body": b""}


class GatewayCheck:
    """The check's ASGI app (the API middleware wraps it, as it wraps the API)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._table = RouteTable([])
        self._unlisted = {
            method: _unlisted_entry(method, self._allow)
            for method in (*KNOWN_METHODS, OTHER_METHOD)
        }
        self._caller_headers: dict[tuple[str, str], list[tuple[bytes, bytes]]] = {}

    def use(self, registry: Registry) -> None:
        """Serve the route table of a new registry snapshot."""
        self._table = RouteTable.upstream(registry.product_routes.routes, self._allow)
        self._caller_headers = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context: RequestContext = scope["tenantry"]
        path: str = scope["path"]
        method: str = scope["method"]
        target: str | None = None
        uris = methods = 0
        from_nginx = False
        for name, value in scope["headers"]:
            if name in (FORWARDED_URI, ORIGINAL_URI):
                target = value.decode("latin-1")
                from_nginx = name == ORIGINAL_URI
                uris += 1
            elif name in (FORWARDED_METHOD, ORIGINAL_METHOD):
                method = value.decode("latin-1").upper()
                methods += 1
        try:
            if path != CHECK_PREFIX and not path.startswith(CHECK_PREFIX + "/"):
                raise ProblemError(NOT_FOUND, f"this listener answers only under {CHECK_PREFIX}/")
            if uris > 1 or methods > 1:
                # A gateway sets one of each; a second came from the client, who could name
                # any request, so nothing is admitted until the gateway drops what clients send.
                raise ProblemError(
                    CHECK_REQUEST_INVALID,
                    "the original request is named more than once (X-Forwarded-Uri, "
                    "X-Original-URI, X-Forwarded-Method, X-Original-Method): the gateway must "
                    "set one of each and remove any the client sent",
                )
            if target is None:  # Envoy: the original path follows the prefix
                target = path[len(CHECK_PREFIX) :] or "/"
            entry = self._route(method, target)
            context.route = entry
            scope["method"] = entry.method  # what the metrics and the access log record
            if not entry.public:
                await self._admission.admit(scope, entry, context)
        except ProblemError as refusal:
            response = refusal_response(refusal, context.request_id)
            if from_nginx:  # nginx drops the body: the problem travels in a header too
                document = problem_body(
                    refusal.kind, refusal.detail, context.request_id, refusal.extensions
                )
                response.headers.append(PROBLEM_HEADER.decode(), document.decode())
            await response(scope, receive, send)
            return
        await entry.app(scope, receive, send)

    def _route(self, method: str, target: str) -> RouteEntry:
        """The entry a request for `target` is admitted under, or the `ProblemError` that
        refuses it."""
        original = original_path(target)
        if original is None:
            raise ProblemError(
                CHECK_REQUEST_INVALID,
                f"the original request's path {target[:200]!r} is not an absolute path",
            )
        found = self._table.match(method, original)
        if found.entry is None and method == "HEAD":  # a GET route answers HEAD too
            found = self._table.match("GET", original)
        if found.entry is not None:
            return found.entry
        if found.allowed:  # a listed path: only its listed methods get through
            allow = ", ".join(found.allowed)
            raise ProblemError(
                METHOD_NOT_ALLOWED,
                f"{original} answers {allow}, not {method}",
                headers={"Allow": allow},
            )
        return self._unlisted.get(method) or self._unlisted[OTHER_METHOD]

    async def _allow(self, scope: Scope, receive: Receive, send: Send) -> None:
        context: RequestContext = scope["tenantry"]
        caller = context.caller
        headers = [*ALLOWED_HEADERS, *(self._headers_of(caller) if caller else NO_CALLER_HEADERS)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(ALLOWED_BODY)

    def _headers_of(self, caller: AdmittedCaller) -> list[tuple[bytes, bytes]]:
        cell = (caller.tenant.tenant_id, caller.key.key_id)
        headers = self._caller_headers.get(cell)
        if headers is None:
            scopes = caller.key.scopes
            values = (
                caller.tenant.tenant_id,
                caller.tenant.tier,
                caller.key.name,
                " ".join(sorted(scopes)) if scopes is not None else "*",
            )
            headers = self._caller_headers[cell] = [
                (name, value.encode()) for name, value in zip(CALLER_HEADERS, values, strict=True)
            ]
        return headers


def original_path(target: str) -> str | None:
    """The path of the original request as routes match it: without the query, decoded,
    and with `.` and `..` segments resolved, so `/public/../admin` is matched (and limited,
    and scoped) as the `/admin` an upstream would serve. None when it is not a path."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return None
    if "%" in path:
        path = unquote(path)
    if "/." in path or "//" in path:
        trailing = path.endswith("/") and path != "/"
        path = posixpath.normpath(path)
        if path.startswith("//"):  # POSIX keeps a leading double slash
            path = path[1:]
        if trailing and path != "/":
            path += "/"
    return path


def _unlisted_entry(method: str, allow: ASGIApp) -> RouteEntry:
    return RouteEntry(
        method=method,
        template=UNLISTED_ROUTE,
        name=route_name(method, UNLISTED_ROUTE),
        scopes=frozenset(),
        public=False,
        headers=(),
        app=allow,
        route=None,
        endpoint=None,
        owner=UNLISTED_OWNER,
    )
