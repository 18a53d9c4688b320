"""Every Redis key of a tenant, in one place: the limiter state and usage the API writes and
the worker flushes, and the quota counters.

Every key of a tenant carries the hash tag `{<tenant id>}`, so all of them live in one slot
and one Lua script can touch them together, on a single Redis or on Redis Cluster.

Usage is counted in per-minute buckets (a hash per minute: route template → admitted
requests), the cheapest form that keeps the flush exact. The open-minutes index lets the
worker find closed buckets without scanning the keyspace; the set of tenants to visit comes
from the registry, never from a cross-slot key.
"""

from __future__ import annotations

TOTAL_ROUTE = ""  # the field of a bucket counting every admitted request of the tenant


def tenant_tag(tenant_id: str) -> str:
    return "{" + tenant_id + "}"


def limiter_key(tenant_id: str) -> str:
    """HASH: limit name ("" for the tenant's rate, "METHOD /path" for a route) → GCRA TAT."""
    return f"tn:{tenant_tag(tenant_id)}:gcra"


def quota_key(tenant_id: str, month: str) -> str:
    """Counter of admitted requests in the UTC calendar month `YYYY-MM`."""
    return f"tn:{tenant_tag(tenant_id)}:quota:{month}"


def quota_seeded_key(tenant_id: str, month: str) -> str:
    """Marker: the month's quota counter has been checked against PostgreSQL (and rebuilt if
    Redis had lost it)."""
    return quota_key(tenant_id, month) + ":seeded"


def usage_bucket_prefix(tenant_id: str) -> str:
    """What every usage bucket key of the tenant starts with; the minute follows it."""
    return f"tn:{tenant_tag(tenant_id)}:usage:"


def usage_bucket_key(tenant_id: str, minute: int) -> str:
    """HASH for the minute starting at `minute` (Unix seconds): route → admitted requests."""
    return f"{usage_bucket_prefix(tenant_id)}{minute}"


def usage_index_key(tenant_id: str) -> str:
    """ZSET of the minutes with an open bucket, scored by the minute."""
    return f"tn:{tenant_tag(tenant_id)}:usage:open"


def usage_staged_key(tenant_id: str, flush_id: str) -> str:
    """HASH `<minute>|<route>` → count, moved aside under a flush id until Postgres has it."""
    return f"tn:{tenant_tag(tenant_id)}:usage:staged:{flush_id}"


def usage_staging_index_key(tenant_id: str) -> str:
    """SET of flush ids whose staged copy still exists (a crashed flush leaves one here)."""
    return f"tn:{tenant_tag(tenant_id)}:usage:staging"


def usage_cache_key(tenant_id: str) -> str:
    """The cached `/v1/usage` answer; the worker deletes it when a flush lands."""
    return f"tn:{tenant_tag(tenant_id)}:usage:cache"


def minute_of(unix_seconds: float) -> int:
    return int(unix_seconds) // 60 * 60
