"""PostgreSQL and Redis server processes started from local binaries.

PostgreSQL's `initdb` and server refuse to run as root, so when the tests run as root the
server runs as the unprivileged `postgres` account (through `runuser`), in a data directory
that account owns. Each process can be stopped and started again on the same port, which the
fault tests use to take a server away mid-test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import URL

SERVER_START_TIMEOUT = 30.0


class MissingServerBinaryError(RuntimeError):
    """A server binary the tests need is not installed; the message says what to install."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = SERVER_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def postgres_bindir() -> Path:
    """Where `initdb` and `pg_ctl` live: Debian's versioned folder, or PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise MissingServerBinaryError(
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed: run `make servers` "
        "(installs Debian's `postgresql`) or set TENANTRY_TEST_DATABASE_URL"
    )


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if found is None:
        raise MissingServerBinaryError(
            "redis-server is not installed: run `make servers` (installs Debian's "
            "`redis-server`) or set TENANTRY_TEST_REDIS_URL"
        )
    return Path(found)


def _as_unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _postgres_base_dir() -> Path:
    """A fresh folder the server's account can reach: pytest's own temporary folders are
    private to root, so the cluster lives in a folder of its own under the system's tmp."""
    return Path(tempfile.mkdtemp(prefix="tenantry-postgres-"))


@dataclass
class PostgresProcess:
    """A throwaway PostgreSQL cluster: trust auth on 127.0.0.1, no fsync (tests only)."""

    base_dir: Path = field(default_factory=_postgres_base_dir)
    port: int = field(default_factory=free_port)
    user: str = "postgres"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            _as_unprivileged(list(command)), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")

    def initialise(self) -> None:
        bindir = postgres_bindir()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.base_dir, account.pw_uid, account.pw_gid)
        self._run(
            str(bindir / "initdb"),
            "--pgdata", str(self.data_dir),
            "--username", self.user,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            str(postgres_bindir() / "pg_ctl"),
            "--pgdata", str(self.data_dir),
            "--options", options,
            "--log", str(self.base_dir / "server.log"),
            "--wait",
            "start",
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        self._run(
            str(postgres_bindir() / "pg_ctl"),
            "--pgdata", str(self.data_dir),
            "--mode", "fast",
            "--wait",
            "stop",
        )  # fmt: skip

    def remove(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)


@dataclass
class RedisProcess:
    """A throwaway Redis: no persistence, so a restart loses everything (as tests want)."""

    base_dir: Path
    port: int = field(default_factory=free_port)
    options: tuple[str, ...] = ()  # more `redis-server` options, e.g. a cluster node's
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.base_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self._process = subprocess.Popen(
            [
                str(redis_binary()),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.base_dir),
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        wait_for_port(self.port)

    @property
    def running(self) -> bool:
        return self._process is not None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> None:
        """Stop without a chance to answer in-flight commands, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    @contextmanager
    def hung(self) -> Iterator[None]:
        """Paused (SIGSTOP): connections stay open and commands wait, as on a hung server."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self._process.pid, signal.SIGCONT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def database_janitor(server: URL, dbname: str, template: str | None = None) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=server.username or "postgres",
        password=server.password,
        host=server.host or "127.0.0.1",
        port=server.port or 5432,
        dbname=dbname,
        template_dbname=template,
        maintenance_dbname=server.database or "postgres",
    )


@contextmanager
def cloned_database(server: URL, template: str, prefix: str) -> Iterator[str]:
    """The URL of a fresh database cloned from `template`, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    janitor = database_janitor(server, name, template=template)
    janitor.init()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        janitor.drop()
