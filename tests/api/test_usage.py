"""`/v1/usage`: flushed usage from Postgres plus what is still in Redis, cached briefly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import insert

from tenantry.contract.usage import usage_cache_key
from tenantry.db.engine import create_engine
from tenantry.db.tables import UsageCounter, UsageFlush, UsageGranularity
from tests.api.conftest import Api, auth

pytestmark = pytest.mark.integration


async def _flushed(database_url: str, tenant: str, day: datetime, count: int) -> None:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(
            insert(UsageFlush).values(flush_id="f-1", bucket_count=1, request_count=count)
        )
        await connection.execute(
            insert(UsageCounter).values(
                tenant_id=tenant,
                granularity=UsageGranularity.DAY,
                bucket_start=day,
                route="",
                request_count=count,
                last_flush_id="f-1",
            )
        )
        # Another tenant's usage must never show.
        await connection.execute(
            insert(UsageCounter).values(
                tenant_id="team-t/bravo",
                granularity=UsageGranularity.DAY,
                bucket_start=day,
                route="",
                request_count=999,
                last_flush_id="f-1",
            )
        )
    await engine.dispose()


async def test_usage_adds_flushed_days_and_unflushed_buckets(
    api: Api, database_url: str, redis_url: str
) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    await _flushed(database_url, "team-t/open", today, 40)
    key = api.key("open")
    for _ in range(2):
        await api.client.get("/v1/limits", headers=auth(key))
    response = await api.client.get("/v1/usage", headers=auth(key))
    assert response.status_code == 200
    body = response.json()
    assert body["tenant"] == "team-t/open"
    assert body["month"] == today.strftime("%Y-%m")
    # 40 flushed, 2 earlier calls and this one still in Redis.
    assert body["unflushed"] == 3
    assert body["requests"] == 43
    assert body["days"] == [{"date": today.date().isoformat(), "requests": 43}]
    assert body["monthly_quota"] is None


async def test_usage_is_served_from_the_cache_until_a_flush_drops_it(
    api: Api, redis_url: str
) -> None:
    key = api.key("open")
    first = (await api.client.get("/v1/usage", headers=auth(key))).json()
    second = (await api.client.get("/v1/usage", headers=auth(key))).json()
    assert second == first  # cached: the second call itself is not counted yet
    metrics = api.runtime.metrics.usage_cache
    assert metrics.labels("hit")._value.get() == 1
    assert metrics.labels("miss")._value.get() == 1
    redis.Redis.from_url(redis_url).delete(usage_cache_key("team-t/open"))  # a flush landed
    third = (await api.client.get("/v1/usage", headers=auth(key))).json()
    assert third["requests"] == 3
    fresh = (await api.client.get("/v1/usage", params={"fresh": "true"}, headers=auth(key))).json()
    assert fresh["requests"] == 4


async def test_usage_with_a_quota_reports_what_remains(api: Api) -> None:
    key = api.key("bravo")  # monthly quota 3
    body = (await api.client.get("/v1/usage", headers=auth(key))).json()
    assert body["monthly_quota"] == 3
    assert body["requests"] == 1
    assert body["remaining"] == 2
