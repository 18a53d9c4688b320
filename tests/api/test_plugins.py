"""Plug-ins: a product's routes served behind the admission layer with no code of their own.

The plug-in under test is `tests/plugin_dist` (`tenantry-test-widgets`), installed as a real
distribution by `make pytest` into `.tools/test-plugins`, which it puts on PYTHONPATH: the API
reads its entry point from installed metadata.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from tenantry.api.app import assemble_routes
from tenantry.api.plugins import Plugin, PluginError, discover_plugins
from tenantry.testing import serve_plugins, tenant, tier
from tests.api.servers import TENANTRY, tenantry_process, wait_until_serving
from tests.harness.servers import free_port

PROBLEMS = "https://tenantry.io/problems/"
ITEMS = "GET /widgets/items/{item_id}"
MANIFESTS: Sequence[Mapping[str, Any]] = (
    tier(
        "basic",
        requests_per_minute=600,
        burst=20,
        routes=[
            {
                "method": "GET",
                "path": "/widgets/items/{item_id}",
                "requestsPerMinute": 6,
                "burst": 1,
            }
        ],
    ),
    tenant(
        "acme",
        tier="basic",
        keys={"main": None, "reader": ["widgets:read"], "jobs": ["jobs:read"]},
    ),
)


@pytest.fixture(autouse=True)
def _widgets_installed() -> None:
    if not any(plugin.name == "widgets" for plugin in discover_plugins()):
        pytest.fail(
            "the test plug-in is not installed: run `make pytest`, which installs "
            "tests/plugin_dist into .tools/test-plugins and puts it on PYTHONPATH",
            pytrace=False,
        )


def test_the_installed_plugin_is_read_from_its_distributions_metadata() -> None:
    (widgets,) = [plugin for plugin in discover_plugins() if plugin.name == "widgets"]
    assert widgets.distribution == "tenantry-test-widgets 0.1.0"


@pytest.mark.integration
async def test_a_plugin_route_is_admitted_scoped_limited_and_metered_like_tenantrys_own(
    database_url: str, redis_url: str
) -> None:
    async with serve_plugins(
        manifests=MANIFESTS, database_url=database_url, redis_url=redis_url
    ) as api:
        client = api.client
        missing = await client.get("/widgets/whoami")
        assert missing.status_code == 401
        assert missing.json()["type"] == PROBLEMS + "missing-api-key"

        lacking = await client.get("/widgets/whoami", headers=api.auth("acme", "jobs"))
        assert lacking.status_code == 403
        assert lacking.json()["missing_scopes"] == ["widgets:read"]

        reader = await client.get("/widgets/whoami", headers=api.auth("acme", "reader"))
        assert reader.status_code == 200
        assert reader.json() == {
            "tenant_id": "team-a/acme",
            "namespace": "team-a",
            "name": "acme",
            "tier": "basic",
            "key_name": "reader",
            "scopes": ["widgets:read"],
            "holds_widgets_write": False,
        }
        assert reader.headers["ratelimit-policy"] == '"tenant";q=600;w=60'
        everything = await client.get("/widgets/whoami", headers=api.auth("acme"))
        assert everything.json()["scopes"] is None  # a key without scopes holds every scope
        assert everything.json()["holds_widgets_write"] is True

        main = api.auth("acme")
        items = [(await client.get(f"/widgets/items/{n}", headers=main)) for n in (1, 2, 3)]
        assert [r.status_code for r in items] == [200, 200, 429]
        assert items[0].headers["ratelimit-policy"].endswith('"route";q=6;w=60')
        assert items[2].json()["violated-policies"] == ["route"]
        assert (await client.get("/widgets/whoami", headers=main)).status_code == 200

        usage = (await client.get("/v1/usage?fresh=true", headers=main)).json()
        assert {"route": ITEMS, "requests": 2} in usage["routes"]
        assert {"route": "GET /widgets/whoami", "requests": 3} in usage["routes"]
        scraped = (await client.get("/metrics")).text
        assert (
            'tenantry_api_requests_total{method="GET",route="/widgets/items/{item_id}",'
            'status_class="4xx"} 1.0' in scraped
        )


async def test_a_plugin_submits_a_job_its_tenant_follows_at_v1_jobs() -> None:
    async with serve_plugins(manifests=MANIFESTS) as api:
        headers = {**api.auth("acme"), "Idempotency-Key": "report-1"}
        submitted = await api.client.post("/widgets/reports", headers=headers)
        assert submitted.status_code == 202
        location = submitted.headers["location"]
        assert location == f"/v1/jobs/{submitted.json()['id']}"
        job = await api.wait_for_job(location, api.auth("acme"))
        assert (job["kind"], job["status"], job["result"]) == ("noop", "succeeded", {"ok": True})

        replay = await api.client.post("/widgets/reports", headers=headers)
        assert replay.json()["id"] == submitted.json()["id"]
        assert replay.headers["idempotent-replayed"] == "true"
        refused = await api.client.post(
            "/widgets/reports",
            headers={**api.auth("acme", "reader"), "Idempotency-Key": "report-2"},
        )
        assert refused.json()["missing_scopes"] == ["widgets:write"]


async def test_a_handler_that_raises_answers_500_problem_with_the_request_id_and_no_stack() -> None:
    async with serve_plugins(manifests=MANIFESTS) as api:
        response = await api.client.get(
            "/widgets/boom", headers={**api.auth("acme"), "X-Request-ID": "boom-1"}
        )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["type"], body["request_id"]) == (PROBLEMS + "internal-error", "boom-1")
    assert "on fire" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"] == "boom-1"


async def test_a_blocking_sync_handler_leaves_the_other_requests_served() -> None:
    """`GET /widgets/blocking` is a `def` handler stuck until `POST /widgets/release`, which
    could never be served if the blocked handler held the event loop."""
    async with serve_plugins(manifests=MANIFESTS) as api, asyncio.timeout(60):
        headers = api.auth("acme")
        blocked = asyncio.create_task(api.client.get("/widgets/blocking", headers=headers))
        other = await api.client.get("/widgets/whoami", headers=headers)
        assert other.status_code == 200
        assert not blocked.done()
        assert (await api.client.post("/widgets/release", headers=headers)).status_code == 200
        assert (await blocked).json() == {"released": True}


async def test_the_openapi_document_describes_plugin_routes_like_tenantrys_own() -> None:
    async with serve_plugins(manifests=MANIFESTS) as api:
        document = (await api.client.get("/openapi.json")).json()
    whoami = document["paths"]["/widgets/whoami"]["get"]
    assert whoami["tags"] == ["widgets"]
    assert whoami["x-tenantry-plugin"] == "widgets"
    assert whoami["security"] == [{"bearer": []}, {"apiKey": []}]
    assert whoami["x-required-scopes"] == ["widgets:read"]
    assert {"RateLimit", "RateLimit-Policy"} <= set(whoami["responses"]["200"]["headers"])
    assert "Retry-After" in whoami["responses"]["429"]["headers"]
    problems = {
        status: set(whoami["responses"][status]["content"]["application/problem+json"]["examples"])
        for status in ("401", "403", "429", "500")
    }
    assert "missing-api-key" in problems["401"]
    assert "insufficient-scope" in problems["403"]
    assert "quota-exceeded" in problems["429"]
    assert "internal-error" in problems["500"]
    assert document["paths"]["/widgets/health"]["get"]["security"] == []
    reports = document["paths"]["/widgets/reports"]["post"]["responses"]["202"]
    assert reports["content"]["application/json"]["schema"]["$ref"].endswith("/JobResponse")


def _router(*paths: tuple[str, str]) -> APIRouter:
    router = APIRouter()

    async def handler() -> None:
        return None

    for method, path in paths:
        router.add_api_route(path, handler, methods=[method])
    return router


@pytest.mark.parametrize(
    ("plugins", "named"),
    [
        pytest.param(
            [Plugin("jobs2", _router(("GET", "/v1/jobs/{job_id}/extra")), "jobs2 1.0")],
            "plug-in 'jobs2' (jobs2 1.0) declares '/v1/jobs/{job_id}/extra', under Tenantry's "
            "own '/v1/jobs'",
            id="under-tenantry-jobs",
        ),
        pytest.param(
            [Plugin("probe", _router(("GET", "/livez")), "probe 1.0")],
            "GET /livez is declared by Tenantry and plug-in 'probe' (probe 1.0)",
            id="same-path-as-a-probe",
        ),
        pytest.param(
            [Plugin("scrape", _router(("GET", "/metrics/tenants")), "scrape 1.0")],
            "under Tenantry's own '/metrics'",
            id="under-metrics",
        ),
        pytest.param(
            [
                Plugin("one", _router(("POST", "/orders/{order_id}")), "one 1.0"),
                Plugin("two", _router(("POST", "/orders/{id}")), "two 2.0"),
            ],
            "POST /orders/{id} is declared by plug-in 'one' (one 1.0) and plug-in 'two' (two 2.0)",
            id="two-plugins-one-route",
        ),
    ],
)
def test_colliding_routes_are_refused_at_start_up_naming_both_owners(
    plugins: list[Plugin], named: str
) -> None:
    with pytest.raises(PluginError) as refused:
        assemble_routes(FastAPI(), plugins)
    assert named in str(refused.value)


def test_plugins_on_their_own_paths_and_methods_mount_together() -> None:
    app = FastAPI()
    owners = assemble_routes(
        app,
        [
            Plugin("one", _router(("GET", "/orders/{order_id}")), "one 1.0"),
            Plugin("two", _router(("POST", "/orders/{order_id}"), ("GET", "/v1/flights"))),
        ],
    )
    assert sorted(set(owners.values())) == ["one", "two"]


def _python_path() -> list[str]:
    return [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]


def _install_fake_distribution(site: Path, name: str, module_source: str, entry_point: str) -> None:
    """A distribution installed into `site` as pip lays one out: the module and its
    `.dist-info` with the metadata and the entry point (`[group]` and `name = value` lines)."""
    module = name.replace("-", "_")
    (site / f"{module}.py").write_text(module_source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_point)


PLUGIN = "[tenantry.apis]\nbroken_plugin = broken_plugin:router\n"


@pytest.mark.parametrize(
    ("source", "entry_point", "expected"),
    [
        pytest.param(
            "import gpsd_client\n",
            PLUGIN,
            "plug-in 'broken_plugin' = 'broken_plugin:router' of the distribution "
            "broken-plugin 0.1 failed to import: ModuleNotFoundError: No module named "
            "'gpsd_client'",
            id="fails-to-import",
        ),
        pytest.param(
            "router = object()\n",
            PLUGIN,
            "names a object, not a FastAPI APIRouter",
            id="not-a-router",
        ),
        pytest.param(
            "from fastapi import APIRouter\nrouter = APIRouter()\n"
            "@router.get('/widgets/whoami')\nasync def mine() -> None: ...\n",
            PLUGIN,
            "GET /widgets/whoami is declared by plug-in 'broken_plugin' (broken-plugin 0.1) and "
            "plug-in 'widgets' (tenantry-test-widgets 0.1.0)",
            id="collides-with-another-plugin",
        ),
        pytest.param(
            "raise RuntimeError('no licence file')\n",
            "[tenantry.job_kinds]\nbroken.kind = broken_plugin:Kind\n",
            "job kind 'broken.kind' = 'broken_plugin:Kind' of the distribution broken-plugin 0.1 "
            "failed to import: RuntimeError: no licence file",
            id="job-kind-fails-to-import",
        ),
    ],
)
def test_tenantry_api_refuses_to_start_with_a_bad_plugin_and_says_why(
    tmp_path: Path, source: str, entry_point: str, expected: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(site, "broken-plugin", source, entry_point)
    port = free_port()
    finished = subprocess.run(
        [TENANTRY, "api", "--port", str(port), "--check-port", str(free_port())],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *_python_path()])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 1
    assert expected in " ".join(finished.stderr.split()), finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.timeout(60)
def test_a_failing_handler_is_logged_with_its_plugin_and_route_and_no_key(
    tmp_path: Path,
) -> None:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text("---\n".join(json.dumps(m) + "\n" for m in MANIFESTS))
    port = free_port()
    log = tmp_path / "dev.log"
    args = ["dev", "--manifests", str(manifests), "--port", str(port)]
    args += ["--check-port", str(free_port())]
    with tenantry_process(args, {}, tmp_path, log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url + "/livez", process)
        keys = json.loads((tmp_path / ".tenantry-dev" / "keys.json").read_text())
        key = keys["team-a/acme"]["stringData"]["main"]
        headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "boom-2"}
        assert httpx.get(url + "/widgets/boom", headers=headers).status_code == 500

        def failure() -> dict[str, Any] | None:
            for line in log.read_text().splitlines():
                if line.startswith("{") and '"api.request_failed"' in line:
                    found: dict[str, Any] = json.loads(line)
                    return found
            return None

        deadline = time.monotonic() + 30
        while (logged := failure()) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # The welcome text shows the demo key on purpose; the log lines never do.
        logged_lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert (logged["owner"], logged["route"], logged["request_id"]) == (
        "widgets",
        "/widgets/boom",
        "boom-2",
    )
    assert "the widget store is on fire" in logged["exception"]  # the stack, for the operator
    secret = key.split("_")[2]
    assert not [line for line in logged_lines if secret in line]
