"""The job-kind plug-in interface and its discovery through entry points.

A platform team adds a kind by shipping a distribution that declares, in the entry-point group
`tenantry.job_kinds`, a `JobKind` subclass. Both the API (payload validation at submission) and
the worker (execution) discover kinds the same way, so a kind unknown to the API is never queued.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tenantry.contract.registry import TenantEntry
from tenantry.entry_points import declared_as, load_declared
from tenantry.jobs.breaker import CircuitBreakers
from tenantry.settings import WorkerSettings

ENTRY_POINT_GROUP = "tenantry.job_kinds"


class PayloadModel(BaseModel):
    """Base of every kind's payload: unknown fields are refused, so typos fail at submission."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryableJobError(Exception):
    """The attempt failed for a reason that may pass (timeout, 5xx, 429): try again later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentJobError(Exception):
    """Retrying cannot help (a 4xx, a refused target): the job fails at once."""


class UnknownJobKindError(LookupError):
    pass


class JobKindError(ValueError):
    """A declared job kind that cannot be used; the message names its distribution."""


class InvalidPayloadError(ValueError):
    """A payload its kind refuses; `errors` are Pydantic's, for a problem+json body."""

    def __init__(self, kind: str, errors: Sequence[Mapping[str, Any]]) -> None:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in errors
        )
        super().__init__(f"invalid payload for job kind {kind}: {problems}")
        self.kind = kind
        self.errors = [dict(e) for e in errors]


@dataclass(frozen=True)
class JobContext:
    """What a kind may use while it runs one attempt of one job."""

    job_id: uuid.UUID
    attempt: int
    tenant: TenantEntry
    settings: WorkerSettings
    sessions: async_sessionmaker[AsyncSession]
    breakers: CircuitBreakers


@dataclass(frozen=True)
class JobResult:
    """A JSON document for `GET /v1/jobs/{id}`, and optionally a file for `/result`."""

    document: dict[str, Any] = field(default_factory=dict)
    blob: bytes | None = None
    content_type: str | None = None


P = TypeVar("P", bound=PayloadModel)


class JobKind(ABC, Generic[P]):
    """One kind of job. Limits are per kind because a webhook and an export differ a lot."""

    name: ClassVar[str]
    payload_model: ClassVar[type[PayloadModel]]
    soft_time_limit_seconds: ClassVar[float] = 60.0
    time_limit_seconds: ClassVar[float] = 90.0  # the worker process is killed past this
    max_attempts: ClassVar[int] = 5

    def validate(self, payload: Mapping[str, Any]) -> P:
        try:
            return self.payload_model.model_validate(payload)  # type: ignore[return-value]
        except ValidationError as error:
            raise InvalidPayloadError(
                self.name, error.errors(include_url=False, include_context=False)
            ) from error

    @abstractmethod
    async def run(self, context: JobContext, payload: P) -> JobResult: ...


class JobKinds:
    """The kinds a process knows, by name."""

    def __init__(self, kinds: Iterable[JobKind[Any]]) -> None:
        self._kinds: dict[str, JobKind[Any]] = {}
        for kind in kinds:
            if kind.name in self._kinds:
                raise ValueError(f"job kind {kind.name} is registered twice")
            if kind.time_limit_seconds <= kind.soft_time_limit_seconds:
                raise ValueError(
                    f"job kind {kind.name}: time_limit_seconds must exceed soft_time_limit_seconds"
                )
            self._kinds[kind.name] = kind

    @classmethod
    def discover(cls) -> JobKinds:
        """Every kind declared in the `tenantry.job_kinds` entry-point group; one that cannot
        be loaded is a `JobKindError` naming its distribution, its entry point and why."""
        found: list[JobKind[Any]] = []
        for point in entry_points(group=ENTRY_POINT_GROUP):
            kind_class = load_declared(point, "job kind", JobKindError)
            where = declared_as(point, "job kind")
            if not (isinstance(kind_class, type) and issubclass(kind_class, JobKind)):
                raise JobKindError(f"{where} is not a JobKind")
            if kind_class.name != point.name:
                raise JobKindError(f"{where} names a kind called {kind_class.name!r}")
            found.append(kind_class())
        return cls(found)

    def get(self, name: str) -> JobKind[Any]:
        try:
            return self._kinds[name]
        except KeyError:
            known = ", ".join(sorted(self._kinds))
            raise UnknownJobKindError(f"unknown job kind {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    @property
    def longest_time_limit(self) -> float:
        return max((k.time_limit_seconds for k in self._kinds.values()), default=0.0)
