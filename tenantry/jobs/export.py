"""`usage.export` and `noop`: built-in kinds that need nothing outside the platform."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from typing import ClassVar

from pydantic import Field, model_validator
from sqlalchemy import select

from tenantry.db.tables import UsageCounter, UsageGranularity
from tenantry.jobs.kinds import JobContext, JobKind, JobResult, PayloadModel

MAX_EXPORT_DAYS = 366


class UsageExportPayload(PayloadModel):
    start: date = Field(description="First UTC day of the period.")
    end: date = Field(description="Last UTC day of the period (inclusive).")
    granularity: UsageGranularity = UsageGranularity.DAY

    @model_validator(mode="after")
    def _period_is_sane(self) -> UsageExportPayload:
        if self.end < self.start:
            raise ValueError("end: must not be before start")
        if (self.end - self.start).days >= MAX_EXPORT_DAYS:
            raise ValueError(f"end: a period spans at most {MAX_EXPORT_DAYS} days")
        return self


class UsageExport(JobKind[UsageExportPayload]):
    """The tenant's flushed usage as CSV (`bucket_start,route,requests`; route "" = total)."""

    name: ClassVar[str] = "usage.export"
    payload_model = UsageExportPayload
    soft_time_limit_seconds: ClassVar[float] = 120.0
    time_limit_seconds: ClassVar[float] = 150.0
    max_attempts: ClassVar[int] = 3

    async def run(self, context: JobContext, payload: UsageExportPayload) -> JobResult:
        begin = datetime.combine(payload.start, time(), UTC)
        end = datetime.combine(payload.end + timedelta(days=1), time(), UTC)
        query = (
            select(UsageCounter.bucket_start, UsageCounter.route, UsageCounter.request_count)
            .where(
                UsageCounter.tenant_id == context.tenant.tenant_id,
                UsageCounter.granularity == payload.granularity,
                UsageCounter.bucket_start >= begin,
                UsageCounter.bucket_start < end,
            )
            .order_by(UsageCounter.bucket_start, UsageCounter.route)
        )
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["bucket_start", "route", "requests"])
        rows = 0
        total = 0
        async with context.sessions() as session:
            for bucket_start, route, count in await session.execute(query):
                moment = bucket_start.astimezone(UTC) if bucket_start.tzinfo else bucket_start
                writer.writerow([moment.strftime("%Y-%m-%dT%H:%M:%SZ"), route, count])
                rows += 1
                if route == "":
                    total += count
        return JobResult(
            document={"rows": rows, "total_requests": total, "content_type": "text/csv"},
            blob=out.getvalue().encode(),
            content_type="text/csv; charset=utf-8",
        )


class NoopPayload(PayloadModel):
    pass


class Noop(JobKind[NoopPayload]):
    """Does nothing: checks the path from submission to `succeeded`, and benchmarks it."""

    name: ClassVar[str] = "noop"
    payload_model = NoopPayload
    soft_time_limit_seconds: ClassVar[float] = 5.0
    time_limit_seconds: ClassVar[float] = 10.0

    async def run(self, context: JobContext, payload: NoopPayload) -> JobResult:
        return JobResult(document={"ok": True})
