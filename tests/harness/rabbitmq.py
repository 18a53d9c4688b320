"""A RabbitMQ node started from Debian's binaries, its own in every respect.

The machine may already run a RabbitMQ (on 5672, registered with the system's epmd): this
node shares nothing with it. It has its own node name, AMQP and distribution ports, its own
epmd (`ERL_EPMD_PORT`, started by the Erlang VM on first use), its own Erlang cookie (`HOME`),
its own data and log folders, no plugins, and ignores `/etc/rabbitmq`. Debian's wrapper in
`/usr/sbin` switches to the `rabbitmq` account; the scripts in `/usr/lib/rabbitmq/bin` run as
whoever starts them, root included, which is what the tests use.

The node can be stopped (or killed) and started again on the same ports with the same data,
as a broker restart in production keeps its durable queues.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kombu.connection import Connection
from kombu.exceptions import OperationalError

from tests.harness.servers import SERVER_START_TIMEOUT, MissingServerBinaryError, free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
# A fresh node initialises its database on first start; a busy machine takes its time.
RABBITMQ_START_TIMEOUT = max(SERVER_START_TIMEOUT, 90.0)


def rabbitmq_bindir() -> Path:
    if (RABBITMQ_BIN / "rabbitmq-server").exists():
        return RABBITMQ_BIN
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise MissingServerBinaryError(
            "rabbitmq-server is not installed: run `make servers` (installs Debian's "
            "`rabbitmq-server`) or set TENANTRY_TEST_BROKER_URL"
        )
    return Path(found).resolve().parent


def amqp_answers(url: str, timeout: float = 1.0) -> bool:
    """An AMQP connection opens (the TCP port alone opens before the node is ready)."""
    with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
        try:
            connection.ensure_connection(max_retries=0, timeout=timeout)
        except (OperationalError, OSError):
            return False
    return True


@dataclass
class RabbitMQProcess:
    """A throwaway RabbitMQ node on 127.0.0.1; `config` lines go into its rabbitmq.conf."""

    base_dir: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    config: tuple[str, ...] = ()
    node_name: str = field(default_factory=lambda: f"tenantry-test-{uuid.uuid4().hex[:8]}")
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def node(self) -> str:
        return f"{self.node_name}@localhost"

    def _env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return keep | {
            "HOME": str(self.base_dir),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.base_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base_dir / "log"),
            "RABBITMQ_PID_FILE": str(self.base_dir / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.base_dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base_dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base_dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base_dir / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "loopback_users = none",
            *self.config,
        ]
        (self.base_dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")

    def start(self) -> None:
        server = rabbitmq_bindir() / "rabbitmq-server"
        self._write_config()
        log = open(self.base_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self._process = subprocess.Popen(
            [str(server)],
            env=self._env(),
            cwd=self.base_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches the VM too
        )
        log.close()
        deadline = time.monotonic() + RABBITMQ_START_TIMEOUT
        while not amqp_answers(self.url):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = (self.base_dir / "server.log").read_text(errors="replace")[-3000:]
                self._signal(signal.SIGKILL)
                raise RuntimeError(f"RabbitMQ node {self.node} did not start:\n{tail}")
            time.sleep(0.2)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signum)
        self._process.wait(timeout=60)
        self._process = None

    def stop(self) -> None:
        """A clean shutdown: the VM takes SIGTERM as `rabbitmqctl stop`."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop without a chance to close connections, as a crash would."""
        self._signal(signal.SIGKILL)

    def remove(self) -> None:
        self.stop()
        epmd = shutil.which("epmd")
        if epmd is not None:  # the node's own epmd outlives it
            subprocess.run(
                [epmd, "-kill"],
                env=self._env(),
                capture_output=True,
                check=False,
                timeout=10,
            )
        shutil.rmtree(self.base_dir, ignore_errors=True)
