"""Fixtures every part's tests share: real PostgreSQL, Redis, a Redis Cluster and RabbitMQ,
the helm binary."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import redis
from amqp.exceptions import NotFound
from kombu.connection import Connection
from sqlalchemy.engine import URL, make_url

from tenantry.db.migrate import upgrade
from tenantry.jobs.broker import AMQP_DEAD_LETTER_QUEUE, AMQP_JOBS_QUEUE
from tests.harness.rabbitmq import RabbitMQProcess
from tests.harness.redis_cluster import RedisCluster, sync_client
from tests.harness.servers import (
    MissingServerBinaryError,
    PostgresProcess,
    RedisProcess,
    cloned_database,
    database_janitor,
)

REPO = Path(__file__).resolve().parent.parent


def _fail_missing(error: MissingServerBinaryError) -> None:
    pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[URL]:
    """The session's PostgreSQL: `TENANTRY_TEST_DATABASE_URL`, or one started for the run."""
    given = os.environ.get("TENANTRY_TEST_DATABASE_URL")
    if given:
        yield make_url(given).set(drivername="postgresql+asyncpg")
        return
    server = PostgresProcess()
    try:
        server.initialise()
        server.start()
    except MissingServerBinaryError as error:
        _fail_missing(error)
    try:
        yield make_url(server.url)
    finally:
        server.stop()
        server.remove()


@pytest.fixture(scope="session")
def migrated_template(postgres_server: URL) -> Iterator[str]:
    """A database at the migrations' head, cloned for each test (fast: no DDL per test)."""
    name = f"tenantry_template_{uuid.uuid4().hex[:8]}"
    janitor = database_janitor(postgres_server, name)
    janitor.init()
    upgrade(postgres_server.set(database=name).render_as_string(hide_password=False))
    try:
        yield name
    finally:
        janitor.drop()


@pytest.fixture
def database_url(postgres_server: URL, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database of the test's own, dropped afterwards."""
    with cloned_database(postgres_server, migrated_template, "tenantry_test") as url:
        yield url


class _Server(Protocol):
    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def remove(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


def _started(server: ServerT) -> Iterator[ServerT]:
    """`server` started (or the test failed, naming what to install), removed afterwards."""
    try:
        server.start()
    except MissingServerBinaryError as error:
        _fail_missing(error)
    try:
        yield server
    finally:
        server.remove()


def _given_or_started(variable: str, server: Callable[[], _Server]) -> Iterator[str]:
    """The URL the environment `variable` gives, or that of a `server` started for the run."""
    given = os.environ.get(variable)
    if given:
        yield given
        return
    for started in _started(server()):
        yield started.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis: `TENANTRY_TEST_REDIS_URL`, or one started for the run."""
    yield from _given_or_started(
        "TENANTRY_TEST_REDIS_URL", lambda: RedisProcess(tmp_path_factory.mktemp("redis"))
    )


@pytest.fixture
def single_redis_url(redis_server: str) -> str:
    """The session's Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture
def redis_url(single_redis_url: str) -> str:
    """The Redis a test runs on: one node (a module that runs on both overrides this with
    `any_redis_url`)."""
    return single_redis_url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster | None]:
    """The session's Redis Cluster, three masters with a replica each, started for the run;
    None when `TENANTRY_TEST_REDIS_CLUSTER_URL` gives one (which tests can not kill nodes of)."""
    if os.environ.get("TENANTRY_TEST_REDIS_CLUSTER_URL"):
        yield None
        return
    yield from _started(RedisCluster(tmp_path_factory.mktemp("redis-cluster")))


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster | None) -> str:
    """Any node of the session's Redis Cluster, every master emptied before the test."""
    url = os.environ.get("TENANTRY_TEST_REDIS_CLUSTER_URL") or (
        redis_cluster.url if redis_cluster else ""
    )
    client = sync_client(url)
    client.flushall()
    client.close()
    return url


@pytest.fixture(params=["redis", "redis-cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis, then a Redis Cluster: for tests of what must work on both."""
    name = "single_redis_url" if request.param == "redis" else "redis_cluster_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of the test's own, which the test may stop, kill and start again."""
    yield from _started(RedisProcess(tmp_path / "redis"))


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's RabbitMQ: `TENANTRY_TEST_BROKER_URL`, or one node started for the run."""
    yield from _given_or_started(
        "TENANTRY_TEST_BROKER_URL", lambda: RabbitMQProcess(tmp_path_factory.mktemp("rabbitmq"))
    )


def purge_broker_queues(url: str) -> None:
    """Tenantry's queues emptied. Not deleted: kombu's pool of connections, shared by every
    Celery app of the process, remembers what it declared, and would not declare again."""
    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        for queue in (AMQP_JOBS_QUEUE, AMQP_DEAD_LETTER_QUEUE):
            # A queue not declared yet closes its channel: one channel per queue.
            with connection.channel() as channel, contextlib.suppress(NotFound):
                channel.queue_purge(queue=queue)


@pytest.fixture
def rabbitmq_url(rabbitmq_server: str) -> str:
    """The session's RabbitMQ, with Tenantry's queues empty."""
    purge_broker_queues(rabbitmq_server)
    return rabbitmq_server


@pytest.fixture
def own_rabbitmq(tmp_path: Path) -> Iterator[RabbitMQProcess]:
    """A RabbitMQ node of the test's own, which the test may stop, kill and start again."""
    yield from _started(RabbitMQProcess(tmp_path / "rabbitmq"))


@pytest.fixture
def own_postgres() -> Iterator[PostgresProcess]:
    """A migrated PostgreSQL of the test's own, which the test may stop and start again."""
    server = PostgresProcess()
    try:
        server.initialise()
        server.start()
    except MissingServerBinaryError as error:
        _fail_missing(error)
    upgrade(server.url)
    yield server
    with contextlib.suppress(RuntimeError):  # the test may have left it stopped
        server.stop()
    server.remove()


@pytest.fixture(scope="session")
def helm() -> str:
    """The real helm binary: on PATH, or the pinned copy `make helm` puts in .tools/bin."""
    found = shutil.which("helm") or shutil.which("helm", path=str(REPO / ".tools" / "bin"))
    if found is None:
        pytest.fail("helm is not installed: run `make helm`", pytrace=False)
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--kubeconfig`: run the operator scenarios against a real cluster instead of the
    emulator (pytest honours this hook only in the root conftest)."""
    parser.addoption(
        "--kubeconfig",
        default=None,
        help="kubeconfig of a real cluster for tests/operator (default: the kmock emulator)",
    )
