"""Jobs per second on each broker, against plain Celery on the same broker.

Starts its own PostgreSQL, Redis and RabbitMQ node, then for each broker (Redis, RabbitMQ):
1. plain Celery: N no-op tasks queued, then drained by a 2-process prefork worker (first task
   run to last), with Tenantry's delivery settings (late ack, prefetch 1);
2. Tenantry: N `noop` jobs queued the way the API does, then drained by a 2-process
   `tenantry worker` (first start to last end, as PostgreSQL recorded them).
Prints a table of both rates and their ratio, the figure to compare on a noisy machine.
Run with `python -m bench.scale_jobs` (`--jobs` sets N); the functions are `bench.jobs`'.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.jobs import MANIFESTS, TENANT, WORKER_PROCESSES, drain_rate, plain_celery, prequeue
from bench.jobs import start_worker as start_tenantry_worker
from bench.load import redis_and_postgres
from tenantry.db.migrate import upgrade
from tenantry.settings import Settings, WorkerSettings
from tenantry.sources.files import FileRegistrySource
from tests.harness.rabbitmq import RabbitMQProcess
from tests.harness.servers import PostgresProcess, database_janitor


@dataclass(frozen=True)
class BrokerFigures:
    broker: str
    plain_celery: float
    tenantry: float

    @property
    def ratio(self) -> float:
        return self.tenantry / self.plain_celery


def fresh_database(postgres: PostgresProcess, name: str) -> str:
    """A migrated database of its own, so each broker's drain counts only its own jobs."""
    server = make_url(postgres.url)
    database = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    database_janitor(server, database).init()
    url = server.set(database=database).render_as_string(hide_password=False)
    upgrade(url)
    return url


def measure(
    name: str, broker_url: str, redis_url: str, database_url: str, work: Path, jobs: int
) -> BrokerFigures:
    plain, _ = plain_celery(broker_url, jobs, counter_url=redis_url, sent_to_done=False)
    manifests = work / "tenants.yaml"
    manifests.write_text(MANIFESTS)
    keys_file = work / "keys.json"
    source = FileRegistrySource(
        [manifests], platform_namespace="tenantry-system", keys_file=keys_file
    )
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        log_level="warning",
        registry={"manifests": [manifests], "keys_file": keys_file},
        worker=WorkerSettings(broker_url=broker_url),
    )
    asyncio.run(prequeue(settings, source.reconcile().registry.tenants[TENANT], jobs))
    worker = start_tenantry_worker(work, settings)
    try:
        tenantry = asyncio.run(drain_rate(settings, jobs))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return BrokerFigures(name, plain, tenantry)


def table(figures: list[BrokerFigures], jobs: int) -> str:
    lines = [
        f"draining {jobs:,} queued no-op tasks/jobs, {WORKER_PROCESSES} prefork processes",
        f"{'broker':<10} {'plain Celery tasks/s':>21} {'Tenantry jobs/s':>16} {'ratio':>7}",
    ]
    for row in figures:
        lines.append(
            f"{row.broker:<10} {row.plain_celery:>21.0f} {row.tenantry:>16.0f} {row.ratio:>7.0%}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="tasks and jobs per broker")
    args = parser.parse_args()
    figures: list[BrokerFigures] = []
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-brokers-") as folder:
        work = Path(folder)
        rabbitmq = RabbitMQProcess(work / "rabbitmq")
        rabbitmq.start()
        try:
            with redis_and_postgres(work) as (redis_server, postgres):
                for name, broker_url in (("Redis", redis_server.url), ("RabbitMQ", rabbitmq.url)):
                    database_url = fresh_database(postgres, name.lower())
                    run = work / f"jobs-on-{name.lower()}"
                    run.mkdir()
                    figures.append(
                        measure(name, broker_url, redis_server.url, database_url, run, args.jobs)
                    )
        finally:
            rabbitmq.remove()
    print(table(figures, args.jobs))


if __name__ == "__main__":
    main()
