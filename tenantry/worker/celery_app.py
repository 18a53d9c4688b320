"""The Celery application: queues, delivery guarantees, tasks and the beat schedule.

Delivery settings, and why:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its
  task ran, and goes back to the queue if the worker process dies, so a crash loses nothing.
- `worker_prefetch_multiplier = 1`: a worker holds no more jobs than it runs, so a long job
  does not strand others behind it.
- `visibility_timeout` above the longest job time limit: Redis redelivers an unacknowledged
  message after it, which must never happen to a job that is still running (checked here).
- On RabbitMQ, the broker's `consumer_timeout` (30 minutes unless its operator changed it,
  stated to Tenantry as `worker.broker_consumer_timeout_seconds`) closes the channel of a
  worker holding a delivery unacknowledged longer than that, and every message on it goes
  back to the queue. A worker holds a delivery for a job's whole run, and a retry's delay
  before it (Celery keeps a message with a countdown unacknowledged until it is due), so the
  timeout must exceed the longest time limit plus `worker.retry_max_seconds` (checked here;
  a longer delay, which only a receiver's Retry-After asks for, waits in PostgreSQL for the
  outbox sweep instead: `tenantry.jobs.broker`).
- Dead letters: PostgreSQL holds the dead-letter state (a job failed past `max_attempts`).
  A redelivered message never runs a job twice, whatever the broker: it claims its attempt
  only if the job still waits for that attempt, and is acknowledged as stale otherwise, so a
  message that keeps killing its worker is redelivered once per attempt until the job is
  failed. What Celery cannot take at all (an unknown task, a malformed body) it rejects; on
  RabbitMQ the jobs queue dead-letters such messages to `jobs.dead`, kept for inspection.
- SIGTERM is Celery's warm shutdown: the worker stops taking messages, returns the ones it
  had reserved to the queue, lets running jobs finish and exits as soon as they have. Should
  the pod's grace period end first, the kill leaves those jobs' leases to lapse, and the outbox
  sweep re-queues them within `job_lease_seconds`. (Celery's "soft shutdown", for SIGQUIT and
  Ctrl+C, always sleeps its whole timeout, so it is not used for SIGTERM.)
Time limits are per kind: the soft one is enforced by the job's own coroutine (`execution`);
the hard one is Celery's `time_limit` on each message, which kills the process running it.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import structlog
from celery import Celery, bootsteps
from celery.signals import worker_process_init, worker_process_shutdown

from tenantry.jobs.broker import (
    MAINTENANCE_QUEUE,
    RUN_JOB,
    CeleryPublisher,
    broker_app,
    broker_queues,
    broker_url,
)
from tenantry.jobs.kinds import JobKinds
from tenantry.settings import Settings
from tenantry.worker import metrics
from tenantry.worker.broker_status import BrokerUnreachableError, broker_status
from tenantry.worker.outbox import sweep_outbox, trim_idempotency_keys
from tenantry.worker.probes import write_heartbeat
from tenantry.worker.runtime import WorkerRuntime

log = structlog.get_logger("tenantry.worker")

FLUSH_USAGE = "tenantry.flush_usage"
SWEEP_OUTBOX = "tenantry.sweep_outbox"
TRIM_IDEMPOTENCY = "tenantry.trim_idempotency"


_runtime: WorkerRuntime | None = None


def check_redelivery_timeout(settings: Settings, kinds: JobKinds) -> None:
    """Refuse a broker timeout that would deliver a running job's message a second time."""
    worker = settings.worker
    longest = kinds.longest_time_limit
    if broker_queues(settings).amqp:
        held = longest + worker.retry_max_seconds
        if held >= worker.broker_consumer_timeout_seconds:
            raise ValueError(
                f"worker.broker_consumer_timeout_seconds "
                f"({worker.broker_consumer_timeout_seconds}), RabbitMQ's consumer_timeout, "
                f"must exceed the longest job time limit ({longest:g}s) plus "
                f"worker.retry_max_seconds ({worker.retry_max_seconds:g}s): raise "
                "consumer_timeout on the broker and state it here, or the broker would close "
                "the channel of a running job and deliver it a second time"
            )
        return
    if longest >= worker.visibility_timeout_seconds:
        raise ValueError(
            f"worker.visibility_timeout_seconds ({worker.visibility_timeout_seconds}) must "
            f"exceed the longest job time limit ({longest:g}s), or a running "
            "job would be delivered a second time"
        )


def create_celery(settings: Settings, kinds: JobKinds | None = None) -> Celery:
    kinds = kinds or JobKinds.discover()
    worker = settings.worker
    check_redelivery_timeout(settings, kinds)
    app = broker_app(settings)
    maintenance = broker_queues(settings).route(MAINTENANCE_QUEUE)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={
            FLUSH_USAGE: maintenance,
            SWEEP_OUTBOX: maintenance,
            TRIM_IDEMPOTENCY: maintenance,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_soft_shutdown_timeout=worker.soft_shutdown_timeout_seconds,
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "usage-flush": {
                "task": FLUSH_USAGE,
                "schedule": worker.usage_flush_interval_seconds,
                "options": {"expires": worker.usage_flush_interval_seconds},
            },
            "outbox-sweep": {
                "task": SWEEP_OUTBOX,
                "schedule": worker.outbox_interval_seconds,
                "options": {"expires": worker.outbox_interval_seconds},
            },
            "idempotency-trim": {
                "task": TRIM_IDEMPOTENCY,
                "schedule": worker.idempotency_trim_interval_seconds,
                "options": {"expires": worker.idempotency_trim_interval_seconds},
            },
        },
    )
    publisher = CeleryPublisher(app)

    def runtime() -> WorkerRuntime:
        global _runtime
        if _runtime is None:
            _runtime = WorkerRuntime(settings, publisher, kinds=kinds)
            _runtime.wait_for_registry()
        return _runtime

    def start_process(**_: Any) -> None:
        runtime()

    def stop_process(**_: Any) -> None:
        global _runtime
        if _runtime is not None:
            _runtime.close()
            _runtime = None

    worker_process_init.connect(start_process, weak=False)
    worker_process_shutdown.connect(stop_process, weak=False)

    def run_job(job_id: str, attempt: int, tenant_id: str | None = None) -> str:
        from tenantry.worker.execution import execute_job

        current = runtime()
        job = execute_job(current.context, uuid.UUID(job_id), attempt, tenant_id)
        return current.call(job).value

    def flush_usage() -> int:
        current = runtime()
        tenants = list(current.holder.registry.tenants.values())
        try:
            report = current.call(current.flusher.flush(tenants))
        except Exception:
            metrics.FLUSH_ERRORS.inc()
            raise
        return report.requests

    def sweep() -> int:
        current = runtime()
        return current.call(sweep_outbox(current.context))

    def trim() -> int:
        current = runtime()
        return current.call(trim_idempotency_keys(current.context))

    app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)(run_job)
    app.task(name=FLUSH_USAGE)(flush_usage)
    app.task(name=SWEEP_OUTBOX)(sweep)
    app.task(name=TRIM_IDEMPOTENCY)(trim)
    app.steps["worker"].add(_heartbeat_step(settings))
    return app


def _heartbeat_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    """The heartbeat the liveness probe reads.

    The worker's own timer refreshes it, whether or not tasks run, so it shows that the
    worker's event loop turns. While the broker is away, Celery's reconnection loop holds that
    event loop; a restart would not bring the broker back, so then the watcher thread (which
    also samples queue depths) refreshes it instead, and only readiness fails.
    """
    interval = settings.worker.heartbeat_interval_seconds
    path = settings.worker.heartbeat_file
    url = broker_url(settings)
    queues = broker_queues(url).observed

    def watch_broker(stop: threading.Event) -> None:
        # One attempt per check, so the checks do not stretch the heartbeat's gaps.
        broker = broker_status(url, timeout_seconds=1)
        broker_lost = False
        while not stop.wait(interval):
            if broker_lost:
                # Waiting for the broker is not being stuck. Written before the check, so the
                # heartbeat's age stays within one interval however long the check takes.
                write_heartbeat(path)
            try:
                depths = broker.depths(queues)
            except BrokerUnreachableError:
                if not broker_lost:
                    write_heartbeat(path)
                broker_lost = True
                continue
            broker_lost = False
            for queue, depth in zip(queues, depths, strict=True):
                metrics.QUEUE_DEPTH.labels(queue=queue).set(depth)
        broker.close()

    class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Timer"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.timer_ref: Any = None
            self.stop_watching = threading.Event()

        def start(self, parent: Any) -> None:
            write_heartbeat(path)
            self.timer_ref = parent.timer.call_repeatedly(interval, write_heartbeat, (path,))
            threading.Thread(
                target=watch_broker,
                args=(self.stop_watching,),
                name="tenantry-broker-watch",
                daemon=True,
            ).start()

        def stop(self, parent: Any) -> None:
            self.stop_watching.set()
            if self.timer_ref is not None:
                self.timer_ref.cancel()

    return Heartbeat
