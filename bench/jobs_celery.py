"""The peer of the jobs benchmark: a plain Celery no-op task on the same broker, with the same
delivery settings Tenantry's worker uses (late ack, prefetch 1), so the ratio measures what
Tenantry's job machinery costs on top of Celery.

The broker is `BENCH_BROKER_URL` (Redis or RabbitMQ); the tasks count themselves in the Redis
of `BENCH_COUNTER_URL`, which defaults to the broker when that is Redis."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

DONE_KEY = "bench:plain:done"
FIRST_KEY = "bench:plain:first"  # when the first task ran
LAST_KEY = "bench:plain:last"  # when the latest task ran
QUEUE = "bench.plain"

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
)
_counter: redis.Redis | None = None


def counter_url() -> str:
    return os.environ.get("BENCH_COUNTER_URL") or os.environ["BENCH_BROKER_URL"]


def noop() -> None:
    """Records itself in Redis (Tenantry's no-op job records its start and end in
    PostgreSQL)."""
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(counter_url())
    now = time.time()
    _counter.set(FIRST_KEY, now, nx=True)
    _counter.set(LAST_KEY, now)
    _counter.incr(DONE_KEY)


app.task(name="bench.noop")(noop)
