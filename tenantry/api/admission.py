"""The admission layer: every request is matched against the route table and, unless its route
is public, admitted before its handler runs. One component, one place, for every protected
route: Tenantry's own, plug-ins' and the gateway check alike.

For a request the layer
1. finds the route's entry in the table compiled at start-up (a path no route has is answered
   404, a method the route does not allow 405 with `Allow`: no key is read, nothing metered);
2. for a protected route runs `Admission.admit`: the client address's failed-authentication
   limit, the key (hash lookup, constant-time compare), the route's scopes, then one Redis
   call for the tenant's rate, any route override, the monthly quota and the usage bucket,
   and the rate-limit headers. A refusal is answered here as a problem document;
3. calls the route's handler directly (FastAPI's router is not walked again), with the
   admitted caller in the request's context, where the handler's `Caller` parameter reads it.

The layer sits where FastAPI's router sits, inside FastAPI's exception handling, so a handler's
errors are rendered as before; the API middleware around it adds the headers every response
carries. Requests that are not HTTP (the lifespan) go on to the router.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from starlette.routing import Router
from starlette.types import Receive, Scope, Send

from tenantry.api.auth import (
    AdmittedCaller,
    Authenticator,
    AuthFailureLimiter,
    TrustedNetwork,
    check_scopes,
    client_address,
    presented_key,
)
from tenantry.api.context import RequestContext
from tenantry.api.limiter.headers import rate_limit_headers
from tenantry.api.limiter.request_limiter import RequestLimiter
from tenantry.api.limiter.spec import LimitSpec, compile_spec
from tenantry.api.metrics import ApiMetrics
from tenantry.api.problems import (
    LIMITER_UNAVAILABLE,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    QUOTA_EXCEEDED,
    TOO_MANY_AUTH_FAILURES,
    ProblemError,
    problem_response,
    refusal_response,
)
from tenantry.api.refusals import RefusalAudit
from tenantry.api.routes import RouteEntry, RouteMatch, RouteTable
from tenantry.contract.registry import Registry

_POLICY_NAMES = {
    "tenant": "the tenant's rate",
    "route": "this route's rate",
    "monthly": "the monthly quota",
}


class Admission:
    """The admission steps of one protected request, and the state they keep across requests
    (the keys being served, the limit specs compiled per tenant and route)."""

    def __init__(
        self,
        *,
        limiter: RequestLimiter,
        metrics: ApiMetrics,
        auth_failures: AuthFailureLimiter,
        trusted_proxies: tuple[TrustedNetwork, ...],
        refusals: RefusalAudit | None,
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._auth_failures = auth_failures
        self._trusted = trusted_proxies
        self._refusals = refusals
        self._authenticator = Authenticator()
        self._specs: dict[tuple[str, RouteEntry], LimitSpec] = {}

    def use(self, registry: Registry) -> None:
        """Admit against a new registry snapshot (keys, tenants and limits may all change)."""
        self._authenticator.use(registry)
        self._specs = {}
        self._limiter.forget()

    async def admit(
        self, scope: MutableMapping[str, Any], entry: RouteEntry, context: RequestContext
    ) -> AdmittedCaller:
        """Authenticate, check the route's scopes, then limit, meter and set the rate-limit
        headers. The caller, or a `ProblemError` saying why not."""
        failures = self._auth_failures
        address = None
        if failures.recorded:  # until an address fails, none can be blocked
            address = client_address(scope, self._trusted)
            wait = failures.blocked_for(address)
            if wait:
                self._metrics.auth_failures.labels(TOO_MANY_AUTH_FAILURES.slug).inc()
                raise ProblemError(
                    TOO_MANY_AUTH_FAILURES,
                    "too many failed authentications from this address; retry later",
                    headers={"Retry-After": str(max(1, round(wait + 0.5)))},
                )
        presented = presented_key(scope["headers"])
        try:
            caller = self._authenticator.authenticate(presented)
        except ProblemError as error:
            address = address or client_address(scope, self._trusted)
            if error.status_code == 401:
                failures.record_failure(address)
            self._metrics.auth_failures.labels(error.kind.slug).inc()
            if self._refusals is not None:
                self._refusals.offer(address, error.kind.slug, presented, context.request_id)
            raise
        context.caller = caller
        tenant = caller.tenant
        held = caller.key.scopes
        if held is not None and not entry.scopes <= held:
            check_scopes(caller.key, entry.scopes)
        if self._metrics.tenant_label:
            self._metrics.tenant_requests.labels(tenant.tenant_id).inc()
        cell = (tenant.tenant_id, entry)
        spec = self._specs.get(cell)
        if spec is None:
            spec = self._specs[cell] = compile_spec(
                tenant, caller.limits, entry.method, entry.template
            )
        decision = context.decision = await self._limiter.decide(spec)
        context.rate_headers = rate_limit_headers(spec, decision)
        if decision.allowed:
            return caller
        headers = {"Retry-After": str(decision.retry_after_s)}
        if decision.unavailable:
            raise ProblemError(
                LIMITER_UNAVAILABLE,
                "the rate limiter cannot be reached and this tenant's policy fails closed",
                headers=headers,
            )
        limits = " and ".join(_POLICY_NAMES.get(name, name) for name in decision.violated)
        raise ProblemError(
            QUOTA_EXCEEDED,
            f"{limits} is exhausted; retry in {decision.retry_after_s}s",
            headers=headers,
            extensions={"violated-policies": list(decision.violated)},
        )


class AdmissionLayer:
    """The ASGI component in the router's place (see the module's docstring). The table is
    compiled at start-up (`compile`), once every route is declared."""

    def __init__(
        self,
        router: Router,
        admission: Admission,
        *,
        owners: Mapping[Callable[..., Any], str] | None = None,
    ) -> None:
        self._router = router
        self._next = router.middleware_stack
        self._owners = owners
        self.admission = admission
        self.table: RouteTable | None = None

    def compile(self, public_paths: frozenset[str]) -> RouteTable:
        self.table = RouteTable.compile(
            self._router.routes, public_paths=public_paths, owners=self._owners
        )
        return self.table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._next(scope, receive, send)
            return
        table = self.table
        if table is None:
            raise RuntimeError("the route table is compiled at start-up: run the app's lifespan")
        context: RequestContext = scope["tenantry"]
        found = table.match(scope["method"], _route_path(scope))
        entry = found.entry
        if entry is None:
            await _no_route(found, scope, receive, send, context)
            return
        context.route = entry
        if entry.headers:
            context.extra_headers += entry.headers
        scope["router"] = self._router
        scope["route"] = entry.route
        scope["endpoint"] = entry.endpoint
        scope["path_params"] = found.path_params
        if not entry.public:
            try:
                await self.admission.admit(scope, entry, context)
            except ProblemError as refusal:
                await refusal_response(refusal, context.request_id)(scope, receive, send)
                return
        await entry.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the `root_path` the app is served under."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path) and path != root_path:
        rest = path[len(root_path) :]
        if rest.startswith("/"):
            return rest
    return path


async def _no_route(
    found: RouteMatch, scope: Scope, receive: Receive, send: Send, context: RequestContext
) -> None:
    if found.allowed:
        allow = ", ".join(found.allowed)
        response = problem_response(
            METHOD_NOT_ALLOWED,
            f"{scope['path']} answers {allow}, not {scope['method']}",
            request_id=context.request_id,
            headers={"Allow": allow},
        )
    else:
        response = problem_response(
            NOT_FOUND, f"nothing is served at {scope['path']}", request_id=context.request_id
        )
    await response(scope, receive, send)
