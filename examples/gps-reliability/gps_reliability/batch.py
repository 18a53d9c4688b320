"""`gps.batch-score`: score many fixes in the background, for `POST /v1/gps/batches`."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from pydantic import Field

from gps_reliability.score import Fix, Grade, score_fix
from tenantry.jobs.kinds import JobContext, JobKind, JobResult, PayloadModel

MAX_BATCH_FIXES = 1000


class BatchPayload(PayloadModel):
    fixes: list[Fix] = Field(min_length=1, max_length=MAX_BATCH_FIXES)


class BatchScore(JobKind[BatchPayload]):
    """Scores every fix of the batch, in order, and summarises the grades."""

    name: ClassVar[str] = "gps.batch-score"
    payload_model = BatchPayload
    soft_time_limit_seconds: ClassVar[float] = 30.0
    time_limit_seconds: ClassVar[float] = 45.0
    # The arithmetic cannot fail on a valid payload, so a failure is worth only a short retry.
    max_attempts: ClassVar[int] = 2

    async def run(self, context: JobContext, payload: BatchPayload) -> JobResult:
        scored = [score_fix(fix) for fix in payload.fixes]
        grades = Counter(result.grade for result in scored)
        return JobResult(
            document={
                "count": len(scored),
                "mean_score": round(sum(result.score for result in scored) / len(scored), 1),
                "min_score": min(result.score for result in scored),
                "grades": {grade.value: grades[grade] for grade in Grade},
                "scores": [result.model_dump(mode="json") for result in scored],
            }
        )
