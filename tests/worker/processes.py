"""Real `tenantry worker` processes for the fault tests, on the tests' own servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tenantry.contract.registry import Registry
from tenantry.sources.files import FileRegistrySource
from tests.harness.servers import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PLATFORM_NAMESPACE = "tenantry-system"
TENANT = "team-a/acme"  # tier `standard`: queue jobs.default, four concurrent jobs


def reconcile_registry(keys_file: Path) -> Registry:
    """The registry the worker will load from the examples (keys issued once, up front)."""
    source = FileRegistrySource(
        [EXAMPLES], platform_namespace=PLATFORM_NAMESPACE, keys_file=keys_file
    )
    return source.reconcile().registry


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    heartbeat_file: Path
    log_file: Path
    env: dict[str, str]

    def kill_hard(self) -> None:
        """kill -9 of the worker and its pool processes, as a node crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-6000:]


def worker_env(
    tmp_path: Path, database_url: str, redis_url: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        **os.environ,
        "TENANTRY_DATABASE_URL": database_url,
        "TENANTRY_REDIS_URL": redis_url,
        "TENANTRY_LOG_LEVEL": "info",
        "TENANTRY_REGISTRY__SOURCE": "file",
        "TENANTRY_REGISTRY__MANIFESTS": json.dumps([str(EXAMPLES)]),
        "TENANTRY_REGISTRY__KEYS_FILE": str(tmp_path / "keys.json"),
        "TENANTRY_WORKER__CONCURRENCY": "2",
        "TENANTRY_WORKER__HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "TENANTRY_WORKER__HEARTBEAT_INTERVAL_SECONDS": "0.5",
        "TENANTRY_WORKER__HEARTBEAT_MAX_AGE_SECONDS": "3",
        "TENANTRY_WORKER__METRICS_PORT": str(free_port()),
        "TENANTRY_WORKER__BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
        "TENANTRY_WORKER__JOB_LEASE_SECONDS": "1.5",
        "TENANTRY_WORKER__OUTBOX_INTERVAL_SECONDS": "0.5",
        "TENANTRY_WORKER__OUTBOX_GRACE_SECONDS": "1",
        "TENANTRY_WORKER__RETRY_BASE_SECONDS": "0.1",
        "TENANTRY_WORKER__RETRY_MAX_SECONDS": "0.5",
        "TENANTRY_WORKER__USAGE_FLUSH_INTERVAL_SECONDS": "1",
        "TENANTRY_WORKER__SOFT_SHUTDOWN_TIMEOUT_SECONDS": "10",
        "TENANTRY_WORKER__WEBHOOK_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8"]),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env | dict(extra or {})


@contextmanager
def running_worker(
    tmp_path: Path, env: dict[str, str], name: str = "worker"
) -> Iterator[WorkerProcess]:
    log_file = tmp_path / f"{name}.log"
    Path(env["TENANTRY_WORKER__HEARTBEAT_FILE"]).unlink(missing_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "tenantry"), "worker", "--beat"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill -9 reaches the pool too
        )
    worker = WorkerProcess(process, Path(env["TENANTRY_WORKER__HEARTBEAT_FILE"]), log_file, env)
    try:
        deadline = time.monotonic() + 30
        while not worker.heartbeat_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start:\n{worker.log()}")
            time.sleep(0.1)
        yield worker
    finally:
        if process.poll() is None:
            worker.kill_hard()
