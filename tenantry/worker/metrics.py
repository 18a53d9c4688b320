"""Prometheus metrics of jobs and metering. Label values are bounded: kinds, outcomes and
queues are fixed sets, never tenant ids or job ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_FINISHED = Counter(
    "tenantry_jobs_finished_total",
    "Job attempts by outcome (succeeded, retried, failed, cancelled).",
    ["kind", "outcome"],
)
JOB_DURATION = Histogram(
    "tenantry_job_duration_seconds",
    "Run time of one job attempt.",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
JOB_START_LATENCY = Histogram(
    "tenantry_job_start_latency_seconds",
    "From submission (or retry due time) to the start of an attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("tenantry_jobs_dead_lettered_total", "Jobs failed for good.", ["kind"])
OUTBOX_REQUEUED = Counter(
    "tenantry_outbox_requeued_total", "Jobs sent again by the outbox sweep.", ["reason"]
)
CONCURRENCY_DEFERRED = Counter(
    "tenantry_jobs_deferred_total", "Job starts put off because the tenant had no free slot."
)
QUEUE_DEPTH = Gauge(
    "tenantry_queue_depth", "Messages waiting per queue.", ["queue"], multiprocess_mode="max"
)
FLUSH_BUCKETS = Histogram(
    "tenantry_usage_flush_buckets",
    "Minute buckets moved per flush.",
    buckets=(0, 1, 10, 100, 1000, 10000, 100000),
)
FLUSH_REQUESTS = Counter(
    "tenantry_usage_flushed_requests_total", "Admitted requests written to PostgreSQL."
)
FLUSH_LAG = Gauge(
    "tenantry_usage_flush_lag_seconds",
    "Age of the oldest minute written by the latest flush.",
    multiprocess_mode="max",
)
FLUSH_ERRORS = Counter("tenantry_usage_flush_errors_total", "Flushes that did not complete.")
HOUSEKEEPING_ERRORS = Counter(
    "tenantry_worker_task_errors_total",
    "Housekeeping rounds or job executions that raised (retried on the next round).",
    ["task"],
)
