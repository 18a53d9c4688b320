"""One Redis over TLS (`rediss://`, the server's certificate checked against the CA the URL
names) with an ACL user, as the Redis Cluster of the other tests runs: the limiter, the
usage and the probes all reach it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import ServeApi, auth
from tests.harness.servers import RedisProcess, free_port
from tests.harness.tls import make_tls_files, redis_tls_options

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    files = make_tls_files(tmp_path / "tls")
    port = free_port()
    acl = ("--user", "tenant-api", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off")
    server = RedisProcess(
        tmp_path / "redis", port=port, options=(*redis_tls_options(port, files), *acl)
    )
    server.start()
    yield f"rediss://tenant-api:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={files.ca}"
    server.remove()


async def test_the_api_reaches_redis_over_tls_as_an_acl_user(
    serve_api: ServeApi, database_url: str, tls_redis_url: str
) -> None:
    async with serve_api(database_url=database_url, redis_url=tls_redis_url) as api:
        key = api.key("open")
        for _ in range(3):
            assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
        usage = await api.client.get("/v1/usage", headers=auth(api.key("bravo")))
        assert usage.status_code == 200
        assert usage.json()["unflushed"] == 1  # metered in Redis, read back from it
        ready = (await api.client.get("/readyz")).json()
        assert ready["checks"]["redis"]["ok"] is True
        assert api.runtime.usage.held == 0  # nothing fell back to the process
