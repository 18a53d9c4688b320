"""Jobs and metering: job throughput against plain Celery, start latency, usage flush rate.

Starts its own Redis and PostgreSQL, then measures in one run:
1. plain Celery: N no-op tasks sent to a 2-process prefork worker, first send to last done;
2. Tenantry: N `noop` jobs submitted through the real API app (`POST /v1/jobs`, auth, limiter,
   idempotency, audit) to a 2-process `tenantry worker`, first submit to last `succeeded`;
3. enqueue-to-start latency of Tenantry jobs submitted one at a time (an idle system);
4. the usage flush: closed per-minute buckets of many tenants from Redis into PostgreSQL,
   in admitted requests per second of flush work.
Run with `make bench-jobs` (`python -m bench.jobs`); `--jobs` sets N. `--drain-rounds R`
measures only the drain (1.), R times, plain Celery and Tenantry alternating, each round's
ratio taken from a pair measured back to back (the machine's load moves both rates), and the
CPU time each task costs the worker, PostgreSQL and Redis together, which that load moves less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from celery import Celery
from sqlalchemy import delete, func, select

from bench.jobs_celery import DONE_KEY, FIRST_KEY, LAST_KEY, QUEUE
from bench.load import redis_and_postgres
from tenantry.api.app import create_app
from tenantry.contract.registry import Registry, TenantEntry
from tenantry.contract.resources import JobPriority
from tenantry.contract.usage import TOTAL_ROUTE, usage_bucket_key, usage_index_key
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.migrate import upgrade
from tenantry.db.tables import Job, JobStatus
from tenantry.jobs.broker import CeleryPublisher, broker_queues
from tenantry.jobs.kinds import JobKinds
from tenantry.jobs.service import JobsService, JobSubmission
from tenantry.redis_client import RedisConnector
from tenantry.settings import Settings
from tenantry.sources.files import FileRegistrySource
from tenantry.worker.celery_app import create_celery
from tenantry.worker.flush import UsageFlusher
from tests.harness.servers import free_port

WORKER_PROCESSES = 2
TENANT = "bench/load"
MANIFESTS = """
apiVersion: tenantry.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: unlimited, namespace: tenantry-system}
spec:
  maxConcurrentJobs: 64
  jobPriority: default
  failureMode: open
---
apiVersion: tenantry.io/v1alpha1
kind: ApiTenant
metadata: {name: load, namespace: bench}
spec:
  displayName: Load
  policyRef: {name: unlimited}
  keys: [{name: main}]
"""


def _wait(condition: object, timeout: float, what: str, pause: float = 0.02) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(pause)


def plain_sender(broker: str) -> Celery:
    """A Celery app that sends plain Celery's no-op tasks to `broker`."""
    sender = Celery("bench-sender", broker=broker)
    sender.conf.task_default_queue = QUEUE
    return sender


def start_plain_worker(broker: str, counter_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "bench.jobs_celery", "worker",
            f"--concurrency={WORKER_PROCESSES}", "--pool=prefork", f"--queues={QUEUE}",
            "--without-gossip", "--without-mingle", "--loglevel=WARNING",
        ],
        env={**os.environ, "BENCH_BROKER_URL": broker, "BENCH_COUNTER_URL": counter_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def plain_celery(
    broker: str, jobs: int, counter_url: str | None = None, *, sent_to_done: bool = True
) -> tuple[float, float]:
    """Plain Celery's tasks per second: draining a full queue, and sent-to-done (0 when not
    `sent_to_done`). The tasks count themselves in the Redis of `counter_url` (the broker's
    by default)."""
    counter_url = counter_url or broker
    counter = redis.Redis.from_url(counter_url)
    counter.delete(DONE_KEY, FIRST_KEY, LAST_KEY)
    sender = plain_sender(broker)
    for _ in range(jobs):  # a full queue before the worker starts
        sender.send_task("bench.noop", queue=QUEUE)
    worker = start_plain_worker(broker, counter_url)
    try:
        _wait(lambda: int(counter.get(DONE_KEY) or 0) >= jobs, 300, "plain Celery drain")
        first, last = (float(counter.get(k) or 0) for k in (FIRST_KEY, LAST_KEY))
        drain = (jobs - 1) / (last - first)
        counter.delete(DONE_KEY, FIRST_KEY, LAST_KEY)
        if not sent_to_done:
            return drain, 0.0
        started = time.perf_counter()
        for _ in range(jobs):
            sender.send_task("bench.noop", queue=QUEUE)
        _wait(lambda: int(counter.get(DONE_KEY) or 0) >= jobs, 300, "plain Celery tasks")
        return drain, jobs / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        counter.close()


def worker_env(work: Path, settings: Settings) -> dict[str, str]:
    env = {
        **os.environ,
        "TENANTRY_DATABASE_URL": settings.database_url,
        "TENANTRY_REDIS_URL": settings.redis_url or "",
        "TENANTRY_LOG_LEVEL": "warning",
        "TENANTRY_REGISTRY__MANIFESTS": json.dumps([str(p) for p in settings.registry.manifests]),
        "TENANTRY_REGISTRY__KEYS_FILE": str(settings.registry.keys_file),
        "TENANTRY_WORKER__CONCURRENCY": str(WORKER_PROCESSES),
        "TENANTRY_WORKER__HEARTBEAT_FILE": str(work / "heartbeat"),
        "TENANTRY_WORKER__METRICS_PORT": str(free_port()),
    }
    if settings.worker.broker_url:
        env["TENANTRY_WORKER__BROKER_URL"] = settings.worker.broker_url
    return env


async def _succeeded(sessions: object, jobs: int) -> int:
    assert callable(sessions)
    async with sessions() as session:
        count: int = await session.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.SUCCEEDED)
        )
    return count


def start_worker(work: Path, settings: Settings) -> subprocess.Popen[bytes]:
    queue = broker_queues(settings).route(JobPriority.DEFAULT.queue)["queue"]
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "tenantry"), "worker", f"--queues={queue}"],
        env=worker_env(work, settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def prequeue(settings: Settings, tenant: TenantEntry, jobs: int) -> None:
    """Queue `jobs` no-op jobs the way the API does, with no worker running yet."""
    engine = create_engine(settings.database_url)
    kinds = JobKinds.discover()
    service = JobsService(
        session_factory(engine),
        kinds,
        CeleryPublisher(create_celery(settings, kinds)),
        settings.worker,
    )
    for _ in range(jobs):
        submission = JobSubmission("noop", {}, uuid.uuid4().hex, actor="bench")
        await service.submit(tenant, submission)
    await engine.dispose()


async def drain_rate(settings: Settings, jobs: int) -> float:
    """Jobs per second while the worker empties a full queue (first start to last end)."""
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    deadline = time.monotonic() + 300
    while await _succeeded(sessions, jobs) < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError("the queued jobs did not all succeed")
        await asyncio.sleep(0.05)
    async with sessions() as session:
        first, last = (
            await session.execute(select(func.min(Job.started_at), func.max(Job.finished_at)))
        ).one()
    await engine.dispose()
    assert first is not None
    assert last is not None
    return float((jobs - 1) / (last - first).total_seconds())


async def tenantry_jobs(
    settings: Settings, key: str, jobs: int, base: int
) -> tuple[float, list[float]]:
    """Jobs per second end to end, and enqueue-to-start latencies (ms) on an idle system."""
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://api") as client,
        ):
            headers = {"Authorization": f"Bearer {key}"}

            async def submit() -> str:
                response = await client.post(
                    "/v1/jobs",
                    json={"kind": "noop", "payload": {}},
                    headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                )
                response.raise_for_status()
                job_id: str = response.json()["id"]
                return job_id

            async def wait_succeeded(count: int, within: float) -> None:
                deadline = time.monotonic() + within
                while await _succeeded(sessions, count) < count:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{count} jobs did not succeed in {within:.0f}s")
                    await asyncio.sleep(0.02)

            await submit()  # warm up the API
            await wait_succeeded(base + 1, 60)

            # Throughput: submitters keep the queue fed while the worker drains it.
            started = time.perf_counter()
            pending = iter(range(jobs))

            async def submitter() -> None:
                for _ in pending:
                    await submit()

            await asyncio.gather(*(submitter() for _ in range(8)))
            submitted = time.perf_counter()
            await wait_succeeded(base + jobs + 1, 300)
            rate = jobs / (time.perf_counter() - started)
            print(f"(API submissions alone, the worker busy: {jobs / (submitted - started):.0f}/s)")

            # Latency on an idle system: one job at a time.
            latencies: list[float] = []
            for done in range(base + jobs + 2, base + jobs + 2 + 200):
                job_id = await submit()
                await wait_succeeded(done, 30)
                async with sessions() as session:
                    job = await session.get(Job, uuid.UUID(job_id))
                assert job is not None
                assert job.started_at is not None
                latencies.append((job.started_at - job.created_at).total_seconds() * 1000)
            return rate, latencies
    finally:
        await engine.dispose()


async def flush_rate(
    settings: Settings, tenants: int, minutes: int, routes: int
) -> tuple[int, float]:
    """Admitted requests flushed per second, over tenants * minutes * routes buckets."""
    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url)
    now_minute = int(time.time()) // 60 * 60
    per_route = 37
    tenant_ids = [f"flush/t{n:04d}" for n in range(tenants)]
    for tenant_id in tenant_ids:
        with client.pipeline(transaction=False) as pipe:
            for back in range(2, minutes + 2):
                minute = now_minute - 60 * back
                bucket = usage_bucket_key(tenant_id, minute)
                for route in range(routes):
                    pipe.hincrby(bucket, f"GET /v1/things/{route}", per_route)
                pipe.hincrby(bucket, TOTAL_ROUTE, per_route * routes)
                pipe.zadd(usage_index_key(tenant_id), {str(minute): minute})
            pipe.execute()
    client.close()
    admitted = tenants * minutes * routes * per_route
    engine = create_engine(settings.database_url)
    async_client = RedisConnector(settings.redis_url, timeout_seconds=30)
    flusher = UsageFlusher(async_client, session_factory(engine), grace_seconds=0)
    entries = Registry.build(
        [TenantEntry(tenant_id=t, display_name=t, tier="bench") for t in tenant_ids]
    ).tenants.values()
    started = time.perf_counter()
    report = await flusher.flush(entries)
    elapsed = time.perf_counter() - started
    assert report.requests == admitted, (report.requests, admitted)
    await async_client.aclose()
    await engine.dispose()
    return admitted, admitted / elapsed


def cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system) used so far by the processes `roots` and their descendants
    that are alive, read from /proc (Linux)."""
    processes: dict[int, tuple[int, int]] = {}  # pid: (parent pid, clock ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        processes[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    wanted = set(roots)
    grown = True
    while grown:
        found = {pid for pid, (parent, _) in processes.items() if parent in wanted}
        grown = not found <= wanted
        wanted |= found
    ticks = sum(processes[pid][1] for pid in wanted if pid in processes)
    return ticks / os.sysconf("SC_CLK_TCK")


def _metered(done: Callable[[], int], jobs: int, roots: list[int]) -> float:
    """Milliseconds of CPU per task (the worker, PostgreSQL and Redis together) between the
    first task done and the last: load from elsewhere slows a drain but does not add to it."""
    _wait(lambda: done() >= 1, 300, "the first task", pause=0.05)
    first_done, first_cpu = done(), cpu_seconds(roots)
    _wait(lambda: done() >= jobs, 300, "the drain", pause=0.05)
    last_done, last_cpu = done(), cpu_seconds(roots)
    return 1000 * (last_cpu - first_cpu) / max(1, last_done - first_done)


def drain_rounds(
    work: Path, settings: Settings, tenant: TenantEntry, jobs: int, rounds: int, servers: list[int]
) -> None:
    broker = settings.redis_url
    assert broker is not None
    counter = redis.Redis.from_url(broker)
    loop = asyncio.new_event_loop()
    engine = create_engine(settings.database_url, pool_size=1)
    sessions = session_factory(engine)
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for number in range(1, rounds + 1):
        sender = plain_sender(broker)
        for _ in range(jobs):
            sender.send_task("bench.noop", queue=QUEUE)
        worker = start_plain_worker(broker, broker)
        try:
            plain_cpu = _metered(
                lambda: int(counter.get(DONE_KEY) or 0), jobs, [worker.pid, *servers]
            )
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        first, last = (float(counter.get(k) or 0) for k in (FIRST_KEY, LAST_KEY))
        plain_drain = (jobs - 1) / (last - first)
        counter.delete(DONE_KEY, FIRST_KEY, LAST_KEY)

        asyncio.run(prequeue(settings, tenant, jobs))
        worker = start_worker(work, settings)
        try:
            cpu = _metered(
                lambda: loop.run_until_complete(_succeeded(sessions, jobs)),
                jobs,
                [worker.pid, *servers],
            )
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        drain = asyncio.run(drain_rate(settings, jobs))
        asyncio.run(forget_jobs(settings))
        ratios.append(drain / plain_drain)
        cpu_ratios.append(plain_cpu / cpu)
        print(
            f"round {number}: draining {jobs}: plain Celery {plain_drain:6.0f}/s "
            f"{plain_cpu:.2f} ms CPU/task, Tenantry {drain:6.0f}/s {cpu:.2f} ms CPU/job "
            f"= {drain / plain_drain:.0%} of the rate, {plain_cpu / cpu:.0%} by CPU",
            flush=True,
        )
    counter.close()
    loop.run_until_complete(engine.dispose())
    loop.close()
    print(
        f"over {rounds} rounds: {min(ratios):.0%} to {max(ratios):.0%} of the rate, "
        f"{min(cpu_ratios):.0%} to {max(cpu_ratios):.0%} by CPU"
    )


async def forget_jobs(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    async with session_factory(engine)() as session, session.begin():
        await session.execute(delete(Job))
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs (and plain tasks) per run")
    parser.add_argument("--flush-tenants", type=int, default=500)
    parser.add_argument("--drain-rounds", type=int, default=0, help="only the drain, R times")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-jobs-") as folder:
        work = Path(folder)
        with redis_and_postgres(work) as (redis_server, postgres):
            upgrade(postgres.url)
            manifests = work / "tenants.yaml"
            manifests.write_text(MANIFESTS)
            keys_file = work / "keys.json"
            source = FileRegistrySource(
                [manifests], platform_namespace="tenantry-system", keys_file=keys_file
            )
            key = source.reconcile().keys[TENANT].keys["main"].plaintext
            settings = Settings(
                database_url=postgres.url,
                redis_url=redis_server.url,
                log_level="warning",
                registry={"manifests": [manifests], "keys_file": keys_file},
            )
            if args.drain_rounds:
                tenant = source.reconcile().registry.tenants[TENANT]
                postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
                with redis.Redis.from_url(redis_server.url) as client:
                    servers = [postmaster, int(client.info("server")["process_id"])]
                drain_rounds(work, settings, tenant, args.jobs, args.drain_rounds, servers)
                return
            plain_drain, plain = plain_celery(redis_server.url, args.jobs)
            asyncio.run(prequeue(settings, source.reconcile().registry.tenants[TENANT], args.jobs))
            worker = start_worker(work, settings)
            try:
                drain = asyncio.run(drain_rate(settings, args.jobs))
                ours, latencies = asyncio.run(tenantry_jobs(settings, key, args.jobs, args.jobs))
            finally:
                worker.terminate()
                worker.wait(timeout=30)
            admitted, flushed = asyncio.run(flush_rate(settings, args.flush_tenants, 30, 5))
    cuts = statistics.quantiles(latencies, n=100)
    print(f"worker processes: {WORKER_PROCESSES} (prefork), same Redis broker, {args.jobs} each")
    print(
        f"draining a full queue: plain Celery {plain_drain:6.0f}/s, Tenantry {drain:6.0f}/s "
        f"= {drain / plain_drain:.0%}"
    )
    print(
        f"submitted to done:     plain Celery {plain:6.0f}/s, Tenantry via the API {ours:6.0f}/s "
        f"= {ours / plain:.0%}"
    )
    print(f"enqueue-to-start latency (idle):  p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms")
    print(f"usage flush: {admitted:,} admitted requests at {flushed:,.0f} requests/s")


if __name__ == "__main__":
    main()
