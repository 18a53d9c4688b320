"""Real `tenantry` processes for the tests that need a server on a port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tenantry.sources.files import FileRegistrySource
from tests.api.conftest import MANIFESTS

TENANTRY = str(Path(sys.executable).with_name("tenantry"))


def api_environment(
    folder: Path, redis_url: str, database_url: str, tenant: str
) -> tuple[dict[str, str], str]:
    """The environment of a real `tenantry api` serving the test manifests on these servers,
    without access log, its keys kept in `folder`; and the key `main` of `tenant`."""
    keys_file = folder / "keys.json"
    source = FileRegistrySource(
        [MANIFESTS], platform_namespace="tenantry-system", keys_file=keys_file
    )
    key = source.reconcile().keys[tenant].keys["main"].plaintext
    env = {
        "TENANTRY_REDIS_URL": redis_url,
        "TENANTRY_DATABASE_URL": database_url,
        "TENANTRY_REGISTRY__MANIFESTS": f'["{MANIFESTS}"]',
        "TENANTRY_REGISTRY__KEYS_FILE": str(keys_file),
        "TENANTRY_API__ACCESS_LOG": "false",
        "TENANTRY_LOG_LEVEL": "warning",
    }
    return env, key


def wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before serving {url}")
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextmanager
def tenantry_process(
    args: list[str], env: Mapping[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`tenantry <args>` in its own process group, ended (SIGINT, then SIGKILL) on exit."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [TENANTRY, *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_for_text(log: Path, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """The first match of `pattern` in a process's log, once it has been written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in:\n{log.read_text(errors='replace')}")
