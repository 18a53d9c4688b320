"""Fixtures of the gateway tests: one real `tenantry api` (file registry source, real Redis and
PostgreSQL) serving the gateway check, one recording upstream standing for the product, and
Caddy and nginx running the configurations shipped in `examples/gateways/`, each started
once for this package's tests (and stopped once they are done, so the rest of the session
does not carry them).

Each gateway has tenants of its own (`acme` and `globex` in the namespace `team-<gateway>`),
so a test run behind one gateway never spends the limits of its run behind the other; within
a gateway, each limited route is spent by one test only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from sqlalchemy.engine import URL

from tests.api.servers import tenantry_process, wait_until_serving
from tests.harness.gateways import GATEWAYS, Gateway, RecordingUpstream
from tests.harness.servers import (
    MissingServerBinaryError,
    cloned_database,
    free_port,
    wait_for_port,
)

PLATFORM = "tenantry-system"
TIER = "gateway"
PRODUCT = "flights"
API_VERSION = "tenantry.io/v1alpha1"

# The route limits the tests spend. GCRA admits `burst + 1` requests at once, then one more
# every 60 / requestsPerMinute seconds.
SEATS_BURST = 2  # GET /flights/{flight_id}/seats: 3 at once, then 429
FARES_BURST = 49  # GET /flights/{flight_id}/fares: 50 at once, the concurrency test's allowance
SLOW_RATE = 1  # requests per minute on both: no refill to speak of during a test

WAIT_SECONDS = 30.0  # for what waits on the file source (a poll every 0.2 s, then a reconcile)


def namespace_of(gateway: str) -> str:
    """The namespace of the tenants the tests behind `gateway` call as."""
    return f"team-{gateway}"


def manifests(extra_key: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The tier, the product and, for each gateway, two tenants; `extra_key` (namespace, key
    name) gives that namespace's acme one more key, holding every scope."""
    tenants = []
    for gateway in sorted(GATEWAYS):
        namespace = namespace_of(gateway)
        acme_keys: list[dict[str, Any]] = [
            {"name": "main"},
            {"name": "reader", "scopes": ["flights:read"]},
        ]
        if extra_key is not None and extra_key[0] == namespace:
            acme_keys.append({"name": extra_key[1]})
        tenants += [
            tenant_manifest("acme", namespace, acme_keys),
            tenant_manifest("globex", namespace, [{"name": "main"}]),
        ]
    slow = {"requestsPerMinute": SLOW_RATE}
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "RateLimitPolicy",
            "metadata": {"name": TIER, "namespace": PLATFORM},
            "spec": {
                "requestsPerMinute": 60000,
                "burst": 5000,
                "failureMode": "closed",
                "routes": [
                    {"method": "GET", "path": "/flights/{flight_id}/seats", **slow,
                     "burst": SEATS_BURST},
                    {"method": "GET", "path": "/flights/{flight_id}/fares", **slow,
                     "burst": FARES_BURST},
                ],
            },
        },
        {
            "apiVersion": API_VERSION,
            "kind": "ApiProduct",
            "metadata": {"name": PRODUCT, "namespace": PLATFORM},
            "spec": {
                "displayName": "Flight data",
                "routes": [
                    {"method": "GET", "path": "/flights/{flight_id}", "scopes": ["flights:read"]},
                    {"method": "GET", "path": "/flights/{flight_id}/seats",
                     "scopes": ["flights:read"]},
                    {"method": "GET", "path": "/flights/{flight_id}/fares",
                     "scopes": ["flights:read"]},
                    {"method": "POST", "path": "/flights/{flight_id}/bookings",
                     "scopes": ["bookings:write"]},
                    {"method": "GET", "path": "/status", "public": True},
                ],
            },
        },
        *tenants,
    ]  # fmt: skip


def tenant_manifest(name: str, namespace: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ApiTenant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"displayName": name.title(), "policyRef": {"name": TIER}, "keys": keys},
    }


@dataclass
class TenantryApi:
    """The running `tenantry api`: its two listeners, its manifests and its keys file."""

    url: str
    check_address: str
    manifests: Path
    keys_file: Path
    log: Path

    def issued_key(self, tenant_id: str, name: str) -> str | None:
        """A key's plaintext once the file source has issued it (as its owners read it from
        the key Secret), else None."""
        try:
            document = json.loads(self.keys_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        found = document.get(tenant_id, {}).get("stringData", {}).get(name)
        return found if isinstance(found, str) else None

    def declare(self, documents: list[dict[str, Any]]) -> None:
        """Replace the manifests the file source polls (written whole, then renamed)."""
        staged = self.manifests.with_suffix(".staged")
        staged.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        staged.replace(self.manifests)


@dataclass
class Tenants:
    """The tenants the tests behind one gateway call as."""

    api: TenantryApi
    namespace: str

    def key(self, tenant: str, name: str = "main") -> str:
        found = self.api.issued_key(f"{self.namespace}/{tenant}", name)
        if found is None:
            pytest.fail(f"{self.namespace}/{tenant} has no key {name!r} in {self.api.keys_file}")
        return found

    def issued_key(self, tenant: str, name: str) -> str | None:
        return self.api.issued_key(f"{self.namespace}/{tenant}", name)


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT_SECONDS) -> T:
    """The first truthy value `condition` returns, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="package")
def gateway_database(postgres_server: URL, migrated_template: str) -> Iterator[str]:
    """A migrated database for the package's `tenantry api` (the `database_url` fixture is
    one test's; this API serves every test here)."""
    with cloned_database(postgres_server, migrated_template, "tenantry_gateways") as url:
        yield url


@pytest.fixture(scope="package")
def tenantry_api(
    tmp_path_factory: pytest.TempPathFactory, gateway_database: str, redis_server: str
) -> Iterator[TenantryApi]:
    """`tenantry api` on two free ports of 127.0.0.1, trusting the gateways' X-Forwarded-For
    (they connect from 127.0.0.1), reading the manifests every 0.2 s."""
    folder = tmp_path_factory.mktemp("gateway-api")
    manifests_file = folder / "manifests" / "gateways.yaml"
    manifests_file.parent.mkdir()
    manifests_file.write_text(yaml.safe_dump_all(manifests(), sort_keys=False))
    port, check_port = free_port(), free_port()
    env = {
        "TENANTRY_DATABASE_URL": gateway_database,
        "TENANTRY_REDIS_URL": redis_server,
        "TENANTRY_PLATFORM_NAMESPACE": PLATFORM,
        "TENANTRY_API__HOST": "127.0.0.1",
        "TENANTRY_API__PORT": str(port),
        "TENANTRY_API__CHECK_PORT": str(check_port),
        "TENANTRY_API__TRUSTED_PROXIES": '["127.0.0.1/32"]',
        # Every test client is 127.0.0.1: the refusals the tests provoke must not add up to
        # the per-address block on failed authentications.
        "TENANTRY_API__AUTH_FAILURES_PER_MINUTE": "1000000",
        "TENANTRY_API__AUTH_FAILURES_BURST": "1000000",
        "TENANTRY_API__ACCESS_LOG": "false",
        "TENANTRY_REGISTRY__SOURCE": "file",
        "TENANTRY_REGISTRY__MANIFESTS": json.dumps([str(manifests_file.parent)]),
        "TENANTRY_REGISTRY__KEYS_FILE": str(folder / "keys.json"),
        "TENANTRY_REGISTRY__POLL_INTERVAL_SECONDS": "0.2",
    }
    log = folder / "api.log"
    with tenantry_process(["api"], env, folder, log) as process:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(url + "/readyz", process, timeout=60)
            wait_for_port(check_port)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{log.read_text()}", pytrace=False)
        yield TenantryApi(
            url=url,
            check_address=f"127.0.0.1:{check_port}",
            manifests=manifests_file,
            keys_file=folder / "keys.json",
            log=log,
        )


@pytest.fixture(scope="package")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    server.start()
    yield server
    server.stop()


def start_gateway(name: str, check: str, upstream_address: str) -> Gateway:
    """A gateway of kind `name` ("caddy" or "nginx"), started; a missing binary fails the
    test with what to install."""
    gateway = GATEWAYS[name](check=check, upstream=upstream_address)
    try:
        gateway.start()
    except MissingServerBinaryError as error:
        gateway.remove()
        pytest.fail(str(error), pytrace=False)
    except (RuntimeError, TimeoutError) as error:
        gateway.remove()
        pytest.fail(f"{name} did not start: {error}", pytrace=False)
    except BaseException:
        gateway.remove()
        raise
    return gateway


@pytest.fixture(scope="package")
def caddy(tenantry_api: TenantryApi, upstream: RecordingUpstream) -> Iterator[Gateway]:
    gateway = start_gateway("caddy", tenantry_api.check_address, upstream.address)
    yield gateway
    gateway.remove()


@pytest.fixture(scope="package")
def nginx(tenantry_api: TenantryApi, upstream: RecordingUpstream) -> Iterator[Gateway]:
    gateway = start_gateway("nginx", tenantry_api.check_address, upstream.address)
    yield gateway
    gateway.remove()


@pytest.fixture(params=sorted(GATEWAYS))
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """Each test runs once behind each gateway."""
    running: Gateway = request.getfixturevalue(request.param)
    return running


@pytest.fixture
def tenants(gateway: Gateway, tenantry_api: TenantryApi) -> Tenants:
    return Tenants(tenantry_api, namespace_of(gateway.name))


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    """A client of the gateway, as the product's callers reach it."""
    with httpx.Client(base_url=gateway.url, timeout=30.0) as gateway_client:
        yield gateway_client
