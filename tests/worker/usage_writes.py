"""Usage written into Redis exactly as the API's request path records it (contract key names)."""

from __future__ import annotations

from datetime import UTC, datetime

from tenantry.contract.months import month_of
from tenantry.contract.usage import (
    TOTAL_ROUTE,
    quota_key,
    usage_bucket_key,
    usage_index_key,
)
from tests.harness.redis_cluster import SyncRedis


def record_requests(client: SyncRedis, tenant_id: str, minute: int, route: str, count: int) -> None:
    """`count` admitted requests on `route` in the minute starting at `minute`."""
    bucket = usage_bucket_key(tenant_id, minute)
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(bucket, route, count)
        pipe.hincrby(bucket, TOTAL_ROUTE, count)
        pipe.zadd(usage_index_key(tenant_id), {str(minute): minute})
        pipe.incrby(quota_key(tenant_id, month_of(datetime.fromtimestamp(minute, UTC))), count)
        pipe.execute()


def minutes_ago(n: int) -> int:
    now = int(datetime.now(UTC).timestamp())
    return now // 60 * 60 - 60 * n
