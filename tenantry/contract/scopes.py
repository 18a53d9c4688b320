"""Scopes: what an API key may do, named `resource:action` (`jobs:write`, `reports:read`).

Scopes are open-ended: Tenantry's own routes demand the three built in here, and a plug-in's
routes demand any others it names. A key declared without `scopes` holds every scope, those
of plug-ins installed later included.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import Field

SCOPE_PATTERN: Final = r"^[a-z][a-z0-9._-]*:[a-z][a-z0-9._-]*$"
SCOPE_MAX_LENGTH: Final = 64

JOBS_READ: Final = "jobs:read"
JOBS_WRITE: Final = "jobs:write"
USAGE_READ: Final = "usage:read"
BUILT_IN_SCOPES: Final = frozenset({JOBS_READ, JOBS_WRITE, USAGE_READ})

ScopeName = Annotated[
    str,
    Field(
        pattern=SCOPE_PATTERN,
        max_length=SCOPE_MAX_LENGTH,
        description="`resource:action` in lower case, e.g. `jobs:write` or `reports:read`.",
    ),
]

_SCOPE = re.compile(SCOPE_PATTERN)


def checked_scope(scope: str) -> str:
    """`scope` if it is well formed; a ValueError naming what is wrong otherwise."""
    if len(scope) > SCOPE_MAX_LENGTH:
        raise ValueError(f"scope {scope[:20]!r}… is longer than {SCOPE_MAX_LENGTH} characters")
    if not _SCOPE.match(scope):
        raise ValueError(
            f"scope {scope!r} is not `resource:action` in lower case (e.g. `reports:read`)"
        )
    return scope
