"""The API service: the admission layer, Tenantry's own routes, plug-ins, probes, metrics.

What a plug-in imports, and the names that stay stable for it:

    from tenantry.api import Caller, JobResponse, Jobs, SubmittedJob, public, requires

`Caller` is the admitted caller (a handler parameter), `requires("resource:action")` and
`public` declare what a route needs, `Jobs` submits a job for the caller's tenant, and
`JobResponse` documents the job a submitting route answers with (`response_model=`). They
are loaded on first use, so the `tenantry` command starts without loading the web stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenantry.api.context import Caller
    from tenantry.api.jobs import JobResponse, Jobs, SubmittedJob
    from tenantry.api.routes import public, requires

__all__ = ["Caller", "JobResponse", "Jobs", "SubmittedJob", "public", "requires"]

_HOMES = {
    "Caller": "tenantry.api.context",
    "JobResponse": "tenantry.api.jobs",
    "Jobs": "tenantry.api.jobs",
    "SubmittedJob": "tenantry.api.jobs",
    "public": "tenantry.api.routes",
    "requires": "tenantry.api.routes",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tenantry.api' has no attribute {name!r}")
    return getattr(import_module(home), name)
