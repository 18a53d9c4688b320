"""The plug-in's routes. Tenantry mounts `router` (entry point `tenantry.apis: gps`) behind its
admission layer, so every route here is authenticated, scoped, limited and metered before its
handler runs; the handlers only do the product's work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gps_reliability.batch import MAX_BATCH_FIXES, BatchScore
from gps_reliability.score import WEAK_FIX, Fix, Reliability, score_fix
from tenantry.api import Caller, JobResponse, Jobs, public, requires

GPS_SCORE = "gps:score"

router = APIRouter(prefix="/v1/gps", tags=["gps"])


class ScoreResponse(Reliability):
    tenant: str = Field(description="The calling tenant, `namespace/name`.")


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "fixes": [
                        {
                            "fix_type": "rtk-fixed",
                            "satellites_in_view": 22,
                            "satellites_used": 16,
                            "hdop": 0.6,
                            "pdop": 1.1,
                            "mean_cn0_dbhz": 44.0,
                            "fix_age_seconds": 0.2,
                        },
                        WEAK_FIX,
                    ]
                }
            ]
        },
    )

    fixes: list[Fix] = Field(min_length=1, max_length=MAX_BATCH_FIXES)


class Health(BaseModel):
    status: str


@router.post(
    "/score",
    summary="Score one GPS fix",
    description="How far to trust one fix: a score from 0 to 100, a grade from A to F, the "
    "four qualities behind it and the one that cost the most. Needs the scope `gps:score`.",
    dependencies=[requires(GPS_SCORE)],
    response_model=ScoreResponse,
)
async def score(fix: Fix, caller: Caller) -> ScoreResponse:
    reliability = score_fix(fix)
    return ScoreResponse(**reliability.model_dump(), tenant=caller.tenant_id)


@router.post(
    "/batches",
    status_code=202,
    summary="Score up to 1000 fixes in the background",
    description="Answers 202 with a job and `Location: /v1/jobs/{id}`; the job's `result` "
    "holds a summary and every fix's score, in order. A retry with the same "
    "`Idempotency-Key` and body returns the same job. Needs the scope `gps:score`.",
    dependencies=[requires(GPS_SCORE)],
    response_model=JobResponse,
)
async def submit_batch(
    body: BatchRequest,
    jobs: Jobs,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=255)],
) -> JSONResponse:
    submitted = await jobs.submit(
        BatchScore.name,
        body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )
    return submitted.response()


@router.get("/healthz", summary="Whether the plug-in is loaded", dependencies=[public])
async def healthz() -> Health:
    return Health(status="ok")
