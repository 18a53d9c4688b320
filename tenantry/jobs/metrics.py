"""Prometheus metrics of job submission, counted wherever jobs are submitted (the API, and
`tenantry dev`). Labels are bounded: job kinds are a fixed set."""

from __future__ import annotations

from prometheus_client import Counter

JOBS_SUBMITTED = Counter("tenantry_jobs_submitted_total", "Jobs accepted.", ["kind"])
ENQUEUE_FAILURES = Counter(
    "tenantry_job_enqueue_failures_total", "Publishes the broker refused (outbox retries)."
)
