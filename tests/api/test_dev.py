"""`tenantry dev` (what `make run` runs): a newcomer gets a URL, a working key, a curl line
showing the rate-limit headers, and a 429 after the burst, with no servers at all; and curl
lines against the example plug-in (`examples/gps-reliability`, installed by `make`) that
answer 200, then 429 once the route's own burst is spent."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.api.servers import tenantry_process, wait_for_text, wait_until_serving
from tests.harness.servers import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_dev_serves_the_examples_with_a_demo_key_that_hits_429_after_the_burst(
    tmp_path: Path,
) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    args = ["dev", "--manifests", str(REPO / "examples"), "--check-port", str(free_port())]
    args += ["--port", str(port)]
    with tenantry_process(args, {}, tmp_path, log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url + "/livez", process)
        text = log.read_text()
        assert f"the API on {url}" in text
        key = wait_for_text(log, r"Demo key of team-b/initech \(burst 10\):\n  (tnt_\w+)")[1]
        assert f'curl -i -H "Authorization: Bearer {key}" {url}/v1/limits' in text
        headers = {"Authorization": f"Bearer {key}"}
        started = time.monotonic()
        first = httpx.get(url + "/v1/limits", headers=headers)
        assert first.status_code == 200
        assert first.headers["ratelimit-policy"].startswith('"tenant";q=60;w=60')
        assert first.headers["x-ratelimit-remaining"] == "10"
        statuses = [httpx.get(url + "/v1/limits", headers=headers).status_code for _ in range(11)]
        while statuses[-1] == 200 and len(statuses) < 60:
            statuses.append(httpx.get(url + "/v1/limits", headers=headers).status_code)
        # The burst of 10, then 429; on a slow machine the rate (one a second) adds a few.
        refilled = int(time.monotonic() - started)
        admitted = statuses.index(429)
        assert 10 <= admitted <= 10 + refilled, (statuses, refilled)
        assert statuses[: admitted + 1] == [200] * admitted + [429]
        usage = httpx.get(url + "/v1/usage", headers=headers)
        assert usage.status_code == 429  # the rate is spent; the quota counted 11 of 10000
        assert (tmp_path / ".tenantry-dev" / "tenantry.db").exists()
        assert (tmp_path / ".tenantry-dev" / "keys.json").exists()
    # A restart keeps the key: the key Secret state lives in .tenantry-dev/keys.json.
    port = free_port()
    args[-1] = str(port)
    log = tmp_path / "dev-2.log"
    with tenantry_process(args, {}, tmp_path, log) as process:
        wait_until_serving(f"http://127.0.0.1:{port}/livez", process)
        again = httpx.get(f"http://127.0.0.1:{port}/v1/limits", headers=headers)
        assert again.status_code == 200
        # The printed lines against the plug-in, run as a newcomer pastes them.
        assert "Plug-in gps: POST /v1/gps/score" in log.read_text()
        call = wait_for_text(log, r"Call the plug-in's POST /v1/gps/score .*:\n  (curl .*)\n")[1]
        loop = wait_for_text(log, r"Spend its burst; request 4 answers 429 .*:\n  (for i .*)\n")[1]
        answered = subprocess.run(["bash", "-c", call], capture_output=True, text=True, check=True)
        assert '"grade"' in answered.stdout
        looped = subprocess.run(["bash", "-c", loop], capture_output=True, text=True, check=True)
        codes = looped.stdout.split()
        assert codes[0] == "200"  # the burst of 2 still holds one after the call above
        assert codes[-1] == "429"
