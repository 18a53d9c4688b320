"""Errors as `application/problem+json` (RFC 9457), one catalogue for every router.

Each kind of failure a client can meet has its own problem `type` URI, documented in
`docs/api.md`, so a client branches on `type` and never parses `detail`. Routers raise
`ProblemError(KIND, "what exactly was wrong")`; the handlers installed by
`install_problem_handlers` render it with the request id, and also render FastAPI's own
validation errors and Starlette's HTTP errors in the same shape.

`ProblemError` derives from Starlette's `HTTPException` on purpose: FastAPI lets an
`HTTPException` raised while it reads a request body pass through unchanged, which is how an
oversize body becomes a 413 instead of a generic 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://tenantry.io/problems/"
# The IETF RateLimit headers draft registers this type for a request refused by a quota policy.
QUOTA_EXCEEDED_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"


@dataclass(frozen=True, slots=True)
class ProblemKind:
    """One documented kind of failure: its URI slug, HTTP status and short title."""

    slug: str
    status: int
    title: str

    @property
    def type(self) -> str:
        if self.slug == "quota-exceeded":
            return QUOTA_EXCEEDED_TYPE
        return PROBLEM_BASE + self.slug


MISSING_API_KEY = ProblemKind("missing-api-key", 401, "No API key was presented")
MALFORMED_API_KEY = ProblemKind("malformed-api-key", 401, "The API key is malformed")
UNKNOWN_API_KEY = ProblemKind("unknown-api-key", 401, "The API key is not known")
EXPIRED_API_KEY = ProblemKind("expired-api-key", 401, "The API key has expired")
REVOKED_API_KEY = ProblemKind("revoked-api-key", 401, "The API key has been revoked")
TENANT_SUSPENDED = ProblemKind("tenant-suspended", 403, "The tenant is suspended")
POLICY_UNRESOLVED = ProblemKind(
    "policy-unresolved", 403, "The tenant's rate-limit policy cannot be resolved"
)
INSUFFICIENT_SCOPE = ProblemKind("insufficient-scope", 403, "The API key lacks a required scope")
ORIGIN_NOT_ALLOWED = ProblemKind("origin-not-allowed", 403, "The origin is not allowed")
QUOTA_EXCEEDED = ProblemKind(
    "quota-exceeded", 429, "Request cannot be satisfied as assigned quota has been exceeded"
)
TOO_MANY_AUTH_FAILURES = ProblemKind(
    "too-many-authentication-failures", 429, "Too many failed authentications from this client"
)
LIMITER_UNAVAILABLE = ProblemKind(
    "limiter-unavailable", 503, "The rate limiter is unavailable and this tenant fails closed"
)
REQUEST_TOO_LARGE = ProblemKind("request-too-large", 413, "The request body is too large")
VALIDATION_FAILED = ProblemKind("validation-failed", 422, "The request is not valid")
NOT_FOUND = ProblemKind("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = ProblemKind("method-not-allowed", 405, "Method not allowed")
SERVICE_UNAVAILABLE = ProblemKind("service-unavailable", 503, "A dependency is unavailable")
INTERNAL_ERROR = ProblemKind("internal-error", 500, "The request failed on the server")
CHECK_REQUEST_INVALID = ProblemKind(
    "check-request-invalid", 400, "The gateway's check request does not name one request"
)

_BY_STATUS = {kind.status: kind for kind in (NOT_FOUND, METHOD_NOT_ALLOWED, REQUEST_TOO_LARGE)}

# What any route behind a key can answer: the admission step's refusals.
AUTH_PROBLEMS: tuple[ProblemKind, ...] = (
    MISSING_API_KEY,
    MALFORMED_API_KEY,
    UNKNOWN_API_KEY,
    EXPIRED_API_KEY,
    REVOKED_API_KEY,
    TENANT_SUSPENDED,
    POLICY_UNRESOLVED,
    QUOTA_EXCEEDED,
    TOO_MANY_AUTH_FAILURES,
    LIMITER_UNAVAILABLE,
)

# The whole catalogue, as docs/api.md documents it.
ALL_KINDS: tuple[ProblemKind, ...] = (
    *AUTH_PROBLEMS,
    INSUFFICIENT_SCOPE,
    ORIGIN_NOT_ALLOWED,
    REQUEST_TOO_LARGE,
    VALIDATION_FAILED,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    SERVICE_UNAVAILABLE,
    INTERNAL_ERROR,
    CHECK_REQUEST_INVALID,
)


class ProblemError(HTTPException):
    """Raise from a route or dependency to answer with a problem document."""

    def __init__(
        self,
        kind: ProblemKind,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(kind.status, detail, dict(headers) if headers else None)
        self.kind = kind
        self.extensions = dict(extensions or {})


def problem_body(
    kind: ProblemKind,
    detail: str,
    request_id: str | None,
    extensions: Mapping[str, Any] | None = None,
) -> bytes:
    document: dict[str, Any] = {
        "type": kind.type,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    if request_id:
        document["request_id"] = request_id
    if extensions:
        document.update(extensions)
    return json.dumps(document, separators=(",", ":")).encode()


def problem_response(
    kind: ProblemKind,
    detail: str,
    *,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response:
    return Response(
        problem_body(kind, detail, request_id, extensions),
        status_code=kind.status,
        headers=dict(headers) if headers else None,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def request_id_of(request: Request) -> str | None:
    """The id the request middleware assigned (see `tenantry.api.middleware`)."""
    context = request.scope.get("tenantry")
    return getattr(context, "request_id", None)


def refusal_response(error: ProblemError, request_id: str | None) -> Response:
    """The problem document a raised `ProblemError` stands for."""
    return problem_response(
        error.kind,
        error.detail,
        request_id=request_id,
        headers=error.headers,
        extensions=error.extensions,
    )


async def _on_problem(request: Request, error: Exception) -> Response:
    assert isinstance(error, ProblemError)
    return refusal_response(error, request_id_of(request))


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    kind = _BY_STATUS.get(error.status_code) or ProblemKind(
        f"http-{error.status_code}", error.status_code, str(error.detail)
    )
    return problem_response(
        kind, str(error.detail), request_id=request_id_of(request), headers=error.headers
    )


def _describe(errors: Sequence[Any]) -> list[dict[str, str]]:
    described = []
    for problem in errors:
        location = ".".join(str(part) for part in problem.get("loc", ()))
        described.append({"field": location, "message": str(problem.get("msg", ""))})
    return described


async def _on_validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    invalid = _describe(error.errors())
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in invalid)
    return problem_response(
        VALIDATION_FAILED,
        detail,
        request_id=request_id_of(request),
        extensions={"invalid_params": invalid},
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)


def problem_responses(*kinds: ProblemKind) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the problems a route can answer with."""
    responses: dict[int | str, dict[str, Any]] = {}
    for kind in kinds:
        entry = responses.setdefault(
            kind.status,
            {"description": "", "content": {PROBLEM_CONTENT_TYPE: {"examples": {}}}},
        )
        entry["description"] = "; ".join(filter(None, [entry["description"], kind.title]))
        entry["content"][PROBLEM_CONTENT_TYPE]["examples"][kind.slug] = {
            "summary": kind.title,
            "value": {"type": kind.type, "title": kind.title, "status": kind.status},
        }
    return responses
