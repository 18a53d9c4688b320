"""The OpenAPI document, completed from the route table: what the admission layer does for
a route is documented on it whoever wrote the route (Tenantry or a plug-in).

Every protected operation gets the key schemes, the scopes it requires, the rate-limit
headers on its successful responses, `Retry-After` on 429, and the problems admission can
answer with; a public operation is marked as needing no key. The route's own responses,
tags and examples stay as declared.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tenantry.api.auth import SECURITY_SCHEMES
from tenantry.api.problems import (
    AUTH_PROBLEMS,
    INSUFFICIENT_SCOPE,
    INTERNAL_ERROR,
    PROBLEM_CONTENT_TYPE,
    problem_responses,
)
from tenantry.api.routes import OWN_ROUTE, RouteEntry, RouteTable

RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": {
        "description": 'The policies that apply, e.g. `"tenant";q=600;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of each policy now, e.g. `"tenant";r=49;t=5`.',
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {"schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "Seconds until full.", "schema": {"type": "integer"}},
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until a retry can pass.",
        "schema": {"type": "integer"},
    }
}


def openapi_document(app: FastAPI, table: RouteTable) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for entry in table.entries:
        operation = document["paths"].get(entry.template, {}).get(entry.method.lower())
        if operation is None:
            continue
        if entry.owner != OWN_ROUTE:
            operation["x-tenantry-plugin"] = entry.owner
        if entry.public:
            operation["security"] = []
        else:
            _document_admission(operation, entry)
    return document


def _document_admission(operation: dict[str, Any], entry: RouteEntry) -> None:
    operation["security"] = [{"bearer": []}, {"apiKey": []}]
    operation["x-required-scopes"] = sorted(entry.scopes)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    kinds = (*AUTH_PROBLEMS, INSUFFICIENT_SCOPE) if entry.scopes else AUTH_PROBLEMS
    for status, documented in problem_responses(*kinds, INTERNAL_ERROR).items():
        existing = responses.setdefault(str(status), documented)
        if existing is not documented:
            content = existing.setdefault("content", {}).setdefault(PROBLEM_CONTENT_TYPE, {})
            examples = content.setdefault("examples", {})
            for slug, example in documented["content"][PROBLEM_CONTENT_TYPE]["examples"].items():
                examples.setdefault(slug, example)
    for status, response in responses.items():
        if status.startswith("2"):
            response["headers"] = {**RATE_LIMIT_HEADERS, **response.get("headers", {})}
        elif status == "429":
            response["headers"] = {**RETRY_AFTER, **response.get("headers", {})}
