"""A circuit breaker per destination host, so a failing receiver is not hammered.

State is kept per worker process: each process learns on its own that a host is down, after
`threshold` consecutive failures, and leaves it alone for `cooldown` seconds before letting a
single trial request through (half-open). With N worker processes a dead host sees at most
N * threshold requests per cooldown, which is the point of the breaker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _HostState:
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False


class CircuitBreakers:
    def __init__(self, threshold: int, cooldown_seconds: float) -> None:
        self.threshold = threshold
        self.cooldown_seconds = cooldown_seconds
        self._hosts: dict[str, _HostState] = {}

    def blocked_for(self, host: str) -> float:
        """Seconds until `host` may be tried again; 0 when a request may go out now."""
        state = self._hosts.get(host)
        if state is None or state.failures < self.threshold:
            return 0.0
        remaining = state.open_until - time.monotonic()
        if remaining > 0:
            return remaining
        if state.trial_in_flight:
            return self.cooldown_seconds
        state.trial_in_flight = True  # half-open: one trial request decides
        return 0.0

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)

    def failed(self, host: str) -> None:
        state = self._hosts.setdefault(host, _HostState())
        state.failures += 1
        state.trial_in_flight = False
        if state.failures >= self.threshold:
            state.open_until = time.monotonic() + self.cooldown_seconds

    def is_open(self, host: str) -> bool:
        state = self._hosts.get(host)
        return state is not None and state.failures >= self.threshold
