"""`tenantry dev` prints where its gateway check listens and the Caddy command that puts a
local service behind it: run as printed (only the two ports moved to free ones), it does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.servers import tenantry_process, wait_for_text, wait_until_serving
from tests.harness.gateways import RecordingUpstream, caddy_binary, wait_for_http
from tests.harness.servers import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    running = RecordingUpstream()
    running.start()
    yield running
    running.stop()


@pytest.mark.timeout(90)
def test_the_printed_caddy_command_puts_a_local_service_behind_the_check(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    caddy_binary()  # fails naming what to install when Caddy is missing
    port, check_port = free_port(), free_port()
    args = ["dev", "--manifests", str(REPO / "examples"), "--port", str(port)]
    args += ["--check-port", str(check_port)]
    with tenantry_process(args, {}, tmp_path, tmp_path / "dev.log") as dev:
        wait_until_serving(f"http://127.0.0.1:{port}/livez", dev)
        log = tmp_path / "dev.log"
        assert f"Gateway check on http://127.0.0.1:{check_port}/authz/" in log.read_text()
        key = wait_for_text(log, r"Demo key of team-b/initech \(burst 10\):\n  (tnt_\w+)")[1]
        command = wait_for_text(log, r"\n  (TENANTRY_CHECK_ADDRESS=\S+ .*caddy run .*)\n")[1]
        gateway_port = free_port()
        command = command.replace(
            "UPSTREAM_ADDRESS=127.0.0.1:9000", f"UPSTREAM_ADDRESS={upstream.address}"
        )
        command = command.replace("GATEWAY_PORT=8090", f"GATEWAY_PORT={gateway_port}")
        home = {
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path),
        }
        with open(tmp_path / "caddy.log", "wb") as output:
            caddy = subprocess.Popen(
                ["bash", "-c", f"exec env {command}"],
                cwd=tmp_path,
                env={**os.environ, **home},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{gateway_port}"
            wait_for_http(url + "/", caddy, tmp_path / "caddy.log")
            allowed = httpx.get(url + "/flights/BA117", headers={"Authorization": f"Bearer {key}"})
            assert allowed.status_code == 200, allowed.text
            [seen] = upstream.seen("/flights/BA117")
            assert seen.header("X-Tenantry-Tenant") == "team-b/initech"
            refused = httpx.get(url + "/flights/BA117")
            assert refused.status_code == 401
            assert refused.json()["type"].endswith("/missing-api-key")
            assert len(upstream.seen("/flights/BA117")) == 1
        finally:
            caddy.terminate()
            caddy.wait(timeout=15)
