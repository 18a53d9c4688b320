"""The tenant's `maxConcurrentJobs`, enforced across every worker.

Each running job holds a lease (a ZSET member scored by its expiry, on Redis' clock) that its
worker renews while the job runs. A worker killed mid-job stops renewing, so its slot frees
itself when the lease lapses: no crash can leak a slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from redis.commands.core import AsyncScript

from tenantry.contract.usage import job_leases_key
from tenantry.redis_client import RedisConnector

ACQUIRE_SCRIPT = (Path(__file__).parent / "semaphore_acquire.lua").read_text()


class ConcurrencyLimiter(Protocol):
    async def acquire(self, tenant_id: str, job_id: str, slots: int, lease_seconds: float) -> bool:
        """Take a slot, or renew the one `job_id` holds; False when all slots are taken."""
        ...

    async def release(self, tenant_id: str, job_id: str) -> None: ...


class RedisSemaphore:
    """The leases on one Redis or a Redis Cluster (a tenant's leases live in its slot)."""

    def __init__(self, redis: RedisConnector) -> None:
        self._redis = redis
        self._acquire: AsyncScript | None = None

    async def acquire(self, tenant_id: str, job_id: str, slots: int, lease_seconds: float) -> bool:
        client = await self._redis.client()
        if self._acquire is None:
            self._acquire = client.register_script(ACQUIRE_SCRIPT)
        taken = await self._acquire(
            keys=[job_leases_key(tenant_id)],
            args=[job_id, slots, int(lease_seconds * 1000)],
            client=client,
        )
        return bool(taken)

    async def release(self, tenant_id: str, job_id: str) -> None:
        client = await self._redis.client()
        await client.zrem(job_leases_key(tenant_id), job_id)

    async def holders(self, tenant_id: str) -> list[str]:
        client = await self._redis.client()
        members = await client.zrange(job_leases_key(tenant_id), 0, -1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


class LocalSemaphore:
    """One process's slots, for `tenantry dev` where there is a single worker and no Redis."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}

    async def acquire(self, tenant_id: str, job_id: str, slots: int, lease_seconds: float) -> bool:
        held = self._held.setdefault(tenant_id, set())
        if job_id in held or len(held) < slots:
            held.add(job_id)
            return True
        return False

    async def release(self, tenant_id: str, job_id: str) -> None:
        self._held.get(tenant_id, set()).discard(job_id)
