"""One answer of the limiter, and what it says about each limit."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Decision:
    """Whether a request is admitted, where that was decided, and where each limit stands.

    A remaining count of -1 means the limit does not apply (or was not looked at).
    """

    allowed: bool
    source: str  # redis | cache | local | open | closed
    violated: tuple[str, ...] = ()  # the policies that refused it (see `spec`)
    retry_after_us: int = 0
    tenant_remaining: int = -1
    tenant_reset_us: int = 0
    route_remaining: int = -1
    route_reset_us: int = 0
    quota_used: int | None = None
    month_reset_s: int = 0
    unavailable: bool = False  # refused because Redis is down and the tenant fails closed

    @property
    def retry_after_s(self) -> int:
        """`Retry-After` in whole seconds, never 0."""
        return max(1, math.ceil(self.retry_after_us / 1_000_000))
