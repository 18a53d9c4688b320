"""`/v1/jobs`: submit, read, list, cancel and fetch the result of the caller's jobs; and
`Jobs`, the way any handler (a plug-in's too) submits a job for its caller.

The router is thin on purpose: `tenantry.jobs.service` holds the rules (idempotency,
tenant scoping, the atomic cancel), and this module maps them to HTTP. The tenant always comes
from the authenticated key, never from the request, so a tenant cannot name another's job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tenantry.api.auth import AdmittedCaller
from tenantry.api.context import Caller
from tenantry.api.problems import (
    AUTH_PROBLEMS,
    INSUFFICIENT_SCOPE,
    SERVICE_UNAVAILABLE,
    VALIDATION_FAILED,
    ProblemError,
    ProblemKind,
    problem_responses,
    request_id_of,
)
from tenantry.api.routes import requires
from tenantry.api.runtime import ApiRuntime
from tenantry.contract.scopes import JOBS_READ, JOBS_WRITE
from tenantry.db.engine import session_factory
from tenantry.db.tables import JobStatus
from tenantry.jobs.kinds import InvalidPayloadError, JobKinds, UnknownJobKindError
from tenantry.jobs.service import (
    MAX_PAGE_SIZE,
    IdempotencyKeyReusedError,
    InvalidCursorError,
    JobAlreadyEndedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobsService,
    JobSubmission,
    TenantCannotRunJobsError,
    job_view,
)

JOB_NOT_FOUND = ProblemKind("job-not-found", 404, "No such job")
JOB_ALREADY_ENDED = ProblemKind("job-already-ended", 409, "The job has already ended")
JOB_NOT_FINISHED = ProblemKind("job-not-finished", 409, "The job has no result yet")
IDEMPOTENCY_KEY_REUSED = ProblemKind(
    "idempotency-key-reused", 422, "The Idempotency-Key was used for a different request"
)
JOBS_UNAVAILABLE = ProblemKind("jobs-unavailable", 503, "Jobs cannot be accepted right now")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "webhook.deliver",
                    "payload": {
                        "url": "https://hooks.example.com/orders",
                        "event": "order.paid",
                        "body": {"order": 42},
                    },
                },
                {"kind": "usage.export", "payload": {"start": "2026-11-01", "end": "2026-11-30"}},
            ]
        },
    )

    kind: str = Field(min_length=1, max_length=64, description="A job kind, e.g. `usage.export`.")
    payload: dict[str, Any] = Field(description="The kind's payload; unknown fields are refused.")


class JobResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    kind: str
    status: JobStatus
    queue: str
    payload: dict[str, Any]
    result: dict[str, Any] | None
    has_output: bool = Field(description="True when `/result` serves a file (e.g. CSV).")
    last_error: str | None = Field(description="Why the last attempt failed, if it did.")
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPageResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobResponse]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class JobListQuery(BaseModel):
    """Query parameters of `GET /v1/jobs`; unknown parameters are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    kind: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=20, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(default=None, max_length=200)


def jobs_service(request: Request) -> JobsService:
    """The process's jobs service: the one `tenantry dev` installed in `app.state.jobs`, or
    one publishing to the Celery broker, built on first use."""
    service: JobsService | None = getattr(request.app.state, "jobs", None)
    if service is not None:
        return service
    runtime: ApiRuntime = request.app.state.runtime
    from tenantry.jobs.broker import CeleryPublisher, broker_app

    try:
        kinds = JobKinds.discover()
        publisher = CeleryPublisher(broker_app(runtime.settings))
    except ValueError as error:
        raise ProblemError(JOBS_UNAVAILABLE, str(error)) from error
    if runtime.engine is None:
        raise ProblemError(JOBS_UNAVAILABLE, "no database is configured")
    service = JobsService(
        session_factory(runtime.engine), kinds, publisher, runtime.settings.worker
    )
    request.app.state.jobs = service
    return service


Service = Annotated[JobsService, Depends(jobs_service)]


@dataclass(frozen=True)
class SubmittedJob:
    """A job a handler submitted: `created` is False for a replay of an earlier submission
    with the same idempotency key (the same job comes back)."""

    id: uuid.UUID
    created: bool
    status_code: int
    body: dict[str, Any]

    @property
    def location(self) -> str:
        return f"/v1/jobs/{self.id}"

    def response(self) -> JSONResponse:
        """The answer `POST /v1/jobs` gives: 202 with the job, `Location` where the tenant
        follows it, and `Idempotent-Replayed: true` on a replay."""
        headers = {"Location": self.location}
        if not self.created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(self.body, status_code=self.status_code, headers=headers)


class CallerJobs:
    """Jobs submitted on behalf of the admitted caller's tenant, with the idempotency, tier
    priority, `maxConcurrentJobs`, retries, cancellation and results of `/v1/jobs`."""

    def __init__(self, service: JobsService, caller: AdmittedCaller, request: Request) -> None:
        self._service = service
        self._caller = caller
        self._request = request

    async def submit(
        self, kind: str, payload: Mapping[str, Any], *, idempotency_key: str
    ) -> SubmittedJob:
        """Store the job, then queue it on the tenant's priority queue. A kind this process
        does not know, or a payload its kind refuses, is a 422 problem; a tenant whose tier
        cannot be resolved (or no jobs backend) is a 503 problem."""
        request = self._request
        try:
            outcome = await self._service.submit(
                self._caller.tenant,
                JobSubmission(
                    kind=kind,
                    payload=payload,
                    idempotency_key=idempotency_key,
                    actor=_actor(self._caller),
                    request_id=request_id_of(request),
                    trace_context=request.headers.get("traceparent"),
                ),
            )
        except UnknownJobKindError as error:
            raise _invalid("kind", str(error)) from error
        except InvalidPayloadError as error:
            invalid = [
                {
                    "field": ".".join(["body", "payload", *(str(p) for p in e["loc"])]),
                    "message": str(e["msg"]),
                }
                for e in error.errors
            ]
            raise ProblemError(
                VALIDATION_FAILED, str(error), extensions={"invalid_params": invalid}
            ) from error
        except IdempotencyKeyReusedError as error:
            raise ProblemError(IDEMPOTENCY_KEY_REUSED, str(error)) from error
        except TenantCannotRunJobsError as error:
            raise ProblemError(JOBS_UNAVAILABLE, str(error)) from error
        return SubmittedJob(
            outcome.job_id, outcome.created, outcome.response_status, outcome.response_body
        )


async def caller_jobs(request: Request, caller: Caller, service: Service) -> CallerJobs:
    """`async` so FastAPI calls it on the event loop, not through its thread pool."""
    return CallerJobs(service, caller, request)


Jobs = Annotated[CallerJobs, Depends(caller_jobs)]
"""A handler parameter: `await jobs.submit(kind, payload, idempotency_key=...)`."""
JobId = Annotated[uuid.UUID, Path(description="The job's id.")]
READ_PROBLEMS = (*AUTH_PROBLEMS, INSUFFICIENT_SCOPE, JOB_NOT_FOUND)


def _response(body: dict[str, Any]) -> JobResponse:
    return JobResponse.model_validate(body)


def _actor(caller: AdmittedCaller) -> str:
    return f"key:{caller.key.key_id}"


@router.post(
    "",
    status_code=202,
    summary="Submit a job",
    dependencies=[requires(JOBS_WRITE)],
    response_model=JobResponse,
    responses=problem_responses(
        *AUTH_PROBLEMS,
        INSUFFICIENT_SCOPE,
        VALIDATION_FAILED,
        IDEMPOTENCY_KEY_REUSED,
        JOBS_UNAVAILABLE,
        SERVICE_UNAVAILABLE,
    ),
)
async def submit_job(
    body: JobRequest,
    jobs: Jobs,
    idempotency_key: Annotated[
        str,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Required. A retry with the same key and body returns the first "
            "response; the same key with another body is refused.",
        ),
    ],
) -> JSONResponse:
    """Store the job, then queue it on the tenant's priority queue. Answers 202 with the
    job; poll `GET /v1/jobs/{id}` until its status is `succeeded`, `failed` or `cancelled`."""
    submitted = await jobs.submit(body.kind, body.payload, idempotency_key=idempotency_key)
    return submitted.response()


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        VALIDATION_FAILED,
        message,
        extensions={"invalid_params": [{"field": f"body.{field}", "message": message}]},
    )


@router.get(
    "",
    summary="List the caller's jobs, newest first",
    dependencies=[requires(JOBS_READ)],
    response_model=JobPageResponse,
    responses=problem_responses(*AUTH_PROBLEMS, INSUFFICIENT_SCOPE, VALIDATION_FAILED),
)
async def list_jobs(
    caller: Caller,
    service: Service,
    query: Annotated[JobListQuery, Query()],
) -> JobPageResponse:
    try:
        page = await service.list(
            caller.tenant.tenant_id,
            status=query.status,
            kind=query.kind,
            limit=query.limit,
            cursor=query.cursor,
        )
    except InvalidCursorError as error:
        raise ProblemError(
            VALIDATION_FAILED,
            str(error),
            extensions={"invalid_params": [{"field": "query.cursor", "message": str(error)}]},
        ) from error
    return JobPageResponse(
        jobs=[_response(job_view(job)) for job in page.jobs],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/{job_id}",
    summary="Read a job",
    dependencies=[requires(JOBS_READ)],
    response_model=JobResponse,
    responses=problem_responses(*READ_PROBLEMS),
)
async def get_job(
    job_id: JobId,
    caller: Caller,
    service: Service,
) -> JobResponse:
    try:
        job = await service.get(caller.tenant.tenant_id, job_id)
    except JobNotFoundError as error:
        raise ProblemError(JOB_NOT_FOUND, str(error)) from error
    return _response(job_view(job))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    summary="Cancel a job",
    dependencies=[requires(JOBS_WRITE)],
    response_model=JobResponse,
    responses=problem_responses(*READ_PROBLEMS, JOB_ALREADY_ENDED),
)
async def cancel_job(
    request: Request,
    job_id: JobId,
    caller: Caller,
    service: Service,
) -> JobResponse:
    """A queued job is cancelled at once (`status: cancelled`); a running one is flagged
    (`cancel_requested: true`) and stopped by its worker within seconds; an ended job
    answers 409."""
    try:
        job = await service.cancel(
            caller.tenant.tenant_id, job_id, actor=_actor(caller), request_id=request_id_of(request)
        )
    except JobNotFoundError as error:
        raise ProblemError(JOB_NOT_FOUND, str(error)) from error
    except JobAlreadyEndedError as error:
        raise ProblemError(
            JOB_ALREADY_ENDED, str(error), extensions={"status": error.status.value}
        ) from error
    return _response(job_view(job))


@router.get(
    "/{job_id}/result",
    summary="Fetch a succeeded job's result (a file such as CSV, or JSON)",
    dependencies=[requires(JOBS_READ)],
    responses={
        200: {
            "content": {
                "text/csv": {"example": "bucket_start,route,requests\n"},
                "application/json": {"example": {"status_code": 200}},
            }
        },
        **problem_responses(*READ_PROBLEMS, JOB_NOT_FINISHED),
    },
)
async def get_job_result(
    job_id: JobId,
    caller: Caller,
    service: Service,
) -> Response:
    try:
        output = await service.output(caller.tenant.tenant_id, job_id)
    except JobNotFoundError as error:
        raise ProblemError(JOB_NOT_FOUND, str(error)) from error
    except JobNotFinishedError as error:
        raise ProblemError(
            JOB_NOT_FINISHED, str(error), extensions={"status": error.status.value}
        ) from error
    headers = {}
    if output.content_type.startswith("text/csv"):
        headers["Content-Disposition"] = f'attachment; filename="job-{job_id}.csv"'
    return Response(output.body, media_type=output.content_type, headers=headers)
