"""The suite talks to real servers, not stand-ins: this proves which ones."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import text

from tenantry.db.engine import create_engine
from tenantry.db.migrate import head_revision, is_at_head

pytestmark = pytest.mark.integration


async def test_database_is_real_postgresql_at_migrations_head(database_url: str) -> None:
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        version: str = (await connection.execute(text("SHOW server_version_num"))).scalar_one()
        tables: set[str] = set(
            (
                await connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalars()
        )
    assert await is_at_head(engine)
    await engine.dispose()
    assert int(version) >= 140000
    assert {"jobs", "idempotency_keys", "usage_counters", "usage_flushes", "audit_log"} <= tables
    assert head_revision() == "0002"


def test_redis_is_a_real_server(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    info = client.info("server")
    client.close()
    major = int(str(info["redis_version"]).split(".")[0])
    assert major >= 6
    assert info["tcp_port"] > 0


async def test_each_test_gets_a_clean_database(database_url: str) -> None:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        count: int = (await connection.execute(text("SELECT count(*) FROM jobs"))).scalar_one()
        await connection.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, kind, status, queue, payload, attempts, "
                "max_attempts, cancel_requested) VALUES (gen_random_uuid(), 't/a', 'noop', "
                "'queued', 'jobs.default', '{}', 0, 1, false)"
            )
        )
    await engine.dispose()
    assert count == 0
