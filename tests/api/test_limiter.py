"""Rate limit, quota and metering through the real app and the real Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from tenantry.api.limiter.script import SCRIPT_SHA
from tenantry.contract.months import month_of
from tenantry.contract.usage import (
    TOTAL_ROUTE,
    limiter_key,
    minute_of,
    quota_key,
    usage_bucket_key,
    usage_index_key,
)
from tests.api.conftest import Api, auth, metric

pytestmark = pytest.mark.integration

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


async def test_the_burst_passes_then_429_with_retry_after_and_the_violated_policy(
    api: Api,
) -> None:
    key = api.key("alpha")  # 60/min, burst 4: five at once
    responses = [await api.client.get("/v1/limits", headers=auth(key)) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    first, refused = responses[0], responses[5]
    assert first.headers["ratelimit-policy"] == ('"tenant";q=60;w=60, "monthly";q=100000;w=2592000')
    assert first.headers["ratelimit"].startswith('"tenant";r=4;t=1, "monthly";r=99999;t=')
    assert first.headers["x-ratelimit-limit"] == "5"
    assert first.headers["x-ratelimit-remaining"] == "4"
    assert [r.headers["x-ratelimit-remaining"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    body = refused.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["violated-policies"] == ["tenant"]
    assert body["status"] == 429


async def test_a_route_override_limits_that_route_only(api: Api) -> None:
    key = api.key("alpha")  # GET /v1/usage: 60/min, burst 1
    usage = [await api.client.get("/v1/usage", headers=auth(key)) for _ in range(3)]
    assert [r.status_code for r in usage] == [200, 200, 429]
    assert usage[2].json()["violated-policies"] == ["route"]
    assert '"route";q=60;w=60' in usage[0].headers["ratelimit-policy"]
    # The tenant's own rate still has room for another route.
    assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200


async def test_an_exhausted_monthly_quota_is_refused_until_the_month_ends(api: Api) -> None:
    key = api.key("bravo")  # monthly quota 3
    responses = [await api.client.get("/v1/limits", headers=auth(key)) for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    body = responses[3].json()
    assert body["violated-policies"] == ["monthly"]
    assert "monthly quota" in body["detail"]
    now = datetime.now(UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    retry_after = int(responses[3].headers["retry-after"])
    assert abs(retry_after - (next_month - now).total_seconds()) < 5
    assert api.runtime.metrics.quota_rejections._value.get() == 2


async def test_admitted_requests_are_metered_in_the_shared_redis_layout(
    api: Api, redis_url: str
) -> None:
    key = api.key("alpha")
    for _ in range(3):
        assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
    assert (await api.client.get("/v1/usage", headers=auth(key))).status_code == 200
    refused = 0
    for _ in range(5):
        refused += (await api.client.get("/v1/limits", headers=auth(key))).status_code == 429
    assert refused > 0
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    tenant = "team-t/alpha"
    minute = minute_of(datetime.now(UTC).timestamp())
    bucket = client.hgetall(usage_bucket_key(tenant, minute))
    admitted = 5  # the burst; refusals are not metered
    if not bucket:  # the minute turned during the test
        bucket = client.hgetall(usage_bucket_key(tenant, minute - 60))
    assert int(bucket[TOTAL_ROUTE]) == admitted
    assert int(bucket["GET /v1/limits"]) == 4
    assert int(bucket["GET /v1/usage"]) == 1
    assert client.zrange(usage_index_key(tenant), 0, -1)
    assert int(client.get(quota_key(tenant, month_of(datetime.now(UTC)))) or 0) == admitted
    assert client.hget(limiter_key(tenant), "") is not None
    assert client.ttl(limiter_key(tenant)) > 0


async def test_a_refused_tenant_is_answered_from_the_cache_without_redis(
    api: Api, redis_url: str
) -> None:
    key = api.key("alpha")
    for _ in range(6):
        await api.client.get("/v1/limits", headers=auth(key))
    client = redis.Redis.from_url(redis_url)
    before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    for _ in range(20):
        response = await api.client.get("/v1/limits", headers=auth(key))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        # The cached answer still says when the burst is whole again (five emission intervals).
        assert response.headers["x-ratelimit-reset"] in ("4", "5")
        assert response.headers["x-ratelimit-remaining"] == "0"
    after = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert after == before
    decisions = await metric(
        api, "tenantry_api_limiter_decisions_total", source="cache", decision="refused"
    )
    assert decisions >= 20


async def test_the_script_is_reloaded_after_redis_forgets_it(api: Api, redis_url: str) -> None:
    key = api.key("open")
    assert (await api.client.get("/v1/limits", headers=auth(key))).status_code == 200
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    assert client.script_exists(SCRIPT_SHA) == [False]
    response = await api.client.get("/v1/limits", headers=auth(key))
    assert response.status_code == 200
    assert "ratelimit" in response.headers
    assert client.script_exists(SCRIPT_SHA) == [True]


async def test_limits_report_the_effective_policy(api: Api) -> None:
    response = await api.client.get("/v1/limits", headers=auth(api.key("alpha")))
    body = response.json()
    assert body["tenant"] == "team-t/alpha"
    assert body["tier"] == "tight"
    assert body["rate"] == {
        "requests_per_minute": 60,
        "burst": 4,
        "remaining": 4,
        "reset_seconds": 1,
    }
    assert body["quota"]["monthly_quota"] == 100000
    assert body["quota"]["used"] == 1
    assert body["routes"] == [
        {"method": "GET", "path": "/v1/usage", "requestsPerMinute": 60, "burst": 1}
    ]
    assert body["key"]["name"] == "main"
    assert response.headers["cache-control"] == "no-store"
