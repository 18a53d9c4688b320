"""What goes on the queue and how a delay is chosen; shared by submission, execution and
the outbox sweep so every path enqueues a job the same way."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class JobMessage:
    """The broker carries only this; the job itself lives in PostgreSQL.

    `attempt` is the job's attempt count when the message was sent. A worker only claims the
    job while the count still matches, so a duplicate message (a redelivery, or the outbox
    re-sending one that was not lost after all) finds nothing to do.
    """

    job_id: uuid.UUID
    attempt: int
    queue: str
    # The job's tenant, so the worker's claim can take the tenant's slot in the same round
    # trip; None in messages sent before messages carried it.
    tenant_id: str | None = None
    countdown_seconds: float = 0.0
    soft_time_limit_seconds: float | None = None
    time_limit_seconds: float | None = None
    request_id: str | None = None
    trace_context: str | None = None


class PublishError(RuntimeError):
    """The broker did not take the message; the outbox sweep will send it later."""


class JobPublisher(Protocol):
    async def publish(self, message: JobMessage) -> None: ...


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter: uniform in [base/2, min(cap, base·2^(attempt-1))].
    Jitter spreads the retries of many jobs that failed together; the floor keeps a retry
    from coming back at once."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(base / 2, max(base / 2, ceiling))
