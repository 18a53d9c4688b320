"""The API's one middleware, pure ASGI: everything every request needs, in one place.

- request id: a valid incoming `X-Request-ID` is kept, else the trace id of a valid W3C
  `traceparent`, else a new one; echoed in `X-Request-ID` and in every problem body;
- bodies: a `Content-Length` over `api.max_body_bytes` is refused with 413 before anything
  is read; a body without a length is counted as it streams and refused the same way;
- CORS: preflights are answered for origins some tenant allows (a preflight carries no key);
  actual responses allow the origin only if the calling tenant lists it;
- security headers on every response, `Cache-Control: no-store` on authenticated ones, and
  the rate-limit headers the limiter decided;
- metrics by route template (as the admission layer matched it) and one JSON access-log
  line, without key material;
- a handler that raises (Tenantry's or a plug-in's): 500 problem+json with the request id,
  never a stack trace; the stack goes to the log, naming the route and its owner.

Work that can be done once (header tuples, compiled patterns, metric children) is done once.
"""

from __future__ import annotations

import re
import time
import traceback
from random import getrandbits

import structlog
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantry.api.context import RequestContext
from tenantry.api.metrics import KNOWN_METHODS, UNMATCHED_ROUTE, Cell, status_class
from tenantry.api.problems import (
    INTERNAL_ERROR,
    ORIGIN_NOT_ALLOWED,
    PROBLEM_CONTENT_TYPE,
    REQUEST_TOO_LARGE,
    ProblemError,
    problem_body,
)
from tenantry.api.runtime import ApiRuntime
from tenantry.api.tracing import parent_context

log = structlog.get_logger("tenantry.api")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TRACEPARENT = re.compile(r"^00-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
CORS_ALLOW_HEADERS = (
    b"authorization, x-api-key, content-type, idempotency-key, x-request-id, traceparent"
)
CORS_ALLOW_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE"
CORS_EXPOSE_HEADERS = (
    b"ratelimit, ratelimit-policy, retry-after, x-request-id, x-ratelimit-limit, "
    b"x-ratelimit-remaining, x-ratelimit-reset, deprecation, sunset, link"
)
CORS_MAX_AGE = b"600"
NO_STORE = (b"cache-control", b"no-store")
VARY_ORIGIN = (b"vary", b"Origin")


class ApiMiddleware:
    def __init__(self, app: ASGIApp, runtime: ApiRuntime, *, gateway_check: bool = False) -> None:
        """`gateway_check`: `app` answers a gateway, not a browser. CORS preflights are left to
        the gateway (which answers them for the upstream it fronts), and a decision to allow,
        which the gateway never passes to the client, carries no security headers; a refusal,
        which it does pass on, carries them."""
        self.app = app
        self.runtime = runtime
        self.preflights = not gateway_check
        self.security_headers_on_success = () if gateway_check else SECURITY_HEADERS
        self.max_body = runtime.settings.api.max_body_bytes
        self.log_requests = runtime.settings.api.access_log
        self.access_log = runtime.access_log
        self.tracer = runtime.tracer
        self.latency = runtime.metrics.latency
        self._series: dict[tuple[str, str, str], tuple[Cell, Cell]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id: str | None = None
        trace_id: str | None = None
        traceparent: str | None = None
        content_length: int | None = None
        origin: bytes | None = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"traceparent":
                match = TRACEPARENT.match(value.decode("latin-1"))
                if match:
                    trace_id = match[1]
                    traceparent = match[0]
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = self.preflights
        if request_id is None:
            # Unique, not secret: the cheap generator, not a system call per request.
            request_id = trace_id or f"{getrandbits(128):032x}"
        context = RequestContext(request_id, trace_id)
        scope["tenantry"] = context
        status = 0  # until the response starts

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    *message.get("headers", ()),
                    *(self.security_headers_on_success if status < 300 else SECURITY_HEADERS),
                    (b"x-request-id", request_id.encode()),
                    *context.rate_headers,
                ]
                if context.extra_headers:
                    headers += context.extra_headers
                if context.caller is not None:
                    headers.append(NO_STORE)
                if origin is not None:
                    headers += self._cors(origin, context)
                message["headers"] = headers
            await send(message)

        span = (
            self.tracer.start_span(
                scope["method"], context=parent_context(traceparent), kind=SpanKind.SERVER
            )
            if self.tracer is not None
            else None
        )
        try:
            if scope["method"] == "OPTIONS" and preflight and origin is not None:
                await self._preflight(origin, context, send_with_headers)
            elif content_length is not None and content_length > self.max_body:
                await self._refuse_body(context, send_with_headers)
            elif content_length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                await self.app(scope, self._limited(receive), send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception as error:  # noqa: BLE001 (answered with 500, counted in the metrics)
            await self._fail(error, scope, context, answered=status != 0, send=send_with_headers)
        finally:
            status = status or 500
            self._observe(scope, context, status, time.perf_counter() - started)
            if span is not None:
                _finish_span(span, scope["method"], context, status)

    async def _fail(
        self, error: Exception, scope: Scope, context: RequestContext, *, answered: bool, send: Send
    ) -> None:
        """Log what failed with its stack, and answer 500 unless an answer has begun (then
        the server closes the connection)."""
        route = context.route
        log.error(
            "api.request_failed",
            request_id=context.request_id,
            method=scope["method"],
            route=route.template if route is not None else UNMATCHED_ROUTE,
            owner=route.owner if route is not None else None,
            tenant=context.caller.tenant_id if context.caller is not None else None,
            error=type(error).__name__,
            # The stack as text, never with its frames' local variables (keys live there).
            exception="".join(traceback.format_exception(error)),
        )
        if answered:
            return
        body = problem_body(
            INTERNAL_ERROR,
            f"the request failed on the server; quote request id {context.request_id}",
            context.request_id,
        )
        await _send_problem(send, INTERNAL_ERROR.status, body)

    # --- bodies ------------------------------------------------------------------------

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ProblemError(REQUEST_TOO_LARGE, f"the request body exceeds {limit} bytes")
            return message

        return receive_limited

    async def _refuse_body(self, context: RequestContext, send: Send) -> None:
        body = problem_body(
            REQUEST_TOO_LARGE,
            f"the request body exceeds {self.max_body} bytes",
            context.request_id,
        )
        await _send_problem(send, REQUEST_TOO_LARGE.status, body, close=True)

    # --- CORS --------------------------------------------------------------------------

    def _cors(self, origin: bytes, context: RequestContext) -> list[tuple[bytes, bytes]]:
        text = origin.decode("latin-1")
        allowed = (
            context.caller.tenant.allowed_origins
            if context.caller is not None
            else self.runtime.all_origins
        )
        if text not in allowed:
            return [VARY_ORIGIN]
        return [
            VARY_ORIGIN,
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", CORS_EXPOSE_HEADERS),
        ]

    async def _preflight(self, origin: bytes, context: RequestContext, send: Send) -> None:
        if origin.decode("latin-1") not in self.runtime.all_origins:
            body = problem_body(
                ORIGIN_NOT_ALLOWED,
                f"no tenant allows the origin {origin.decode('latin-1')!r}",
                context.request_id,
            )
            await _send_problem(send, ORIGIN_NOT_ALLOWED.status, body)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-methods", CORS_ALLOW_METHODS),
                    (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
                    (b"access-control-max-age", CORS_MAX_AGE),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    # --- observation -------------------------------------------------------------------

    def _observe(self, scope: Scope, context: RequestContext, status: int, elapsed: float) -> None:
        route = context.route
        template = route.template if route is not None else UNMATCHED_ROUTE
        method: str = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        series_key = (method, template, status_class(status))
        series = self._series.get(series_key)
        if series is None:
            metrics = self.runtime.metrics
            series = self._series[series_key] = (
                metrics.requests.cell(*series_key),
                metrics.latency.cell(method, template),
            )
        series[0][0] += 1
        self.latency.observe(series[1], elapsed)
        if self.log_requests:
            caller = context.caller
            self.access_log.write(
                context.request_id,
                context.trace_id,
                method,
                template,
                status,
                elapsed,
                caller.tenant.tenant_id if caller is not None else None,
                caller.key.key_id if caller is not None else None,
            )


def _finish_span(span: Span, method: str, context: RequestContext, status: int) -> None:
    template = context.route.template if context.route is not None else UNMATCHED_ROUTE
    span.update_name(f"{method} {template}")
    span.set_attribute("http.request.method", method)
    span.set_attribute("http.route", template)
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("tenantry.request_id", context.request_id)
    if context.caller is not None:
        span.set_attribute("tenantry.tenant", context.caller.tenant.tenant_id)
    if status >= 500:
        span.set_status(StatusCode.ERROR)
    span.end()


async def _send_problem(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
