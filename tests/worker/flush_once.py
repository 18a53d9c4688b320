"""Run one usage flush in a process of its own (the fault tests kill it mid-way).

Usage: python -m tests.worker.flush_once <database url> <redis url> <tenant id>...
"""

from __future__ import annotations

import asyncio
import sys

from tenantry.db.engine import create_engine, session_factory
from tenantry.redis_client import RedisConnector
from tenantry.worker.flush import UsageFlusher
from tests.worker.conftest import tenant


async def main(database_url: str, redis_url: str, tenant_ids: list[str]) -> None:
    engine = create_engine(database_url)
    client = RedisConnector(redis_url, timeout_seconds=60)
    flusher = UsageFlusher(client, session_factory(engine), grace_seconds=0)
    await flusher.flush([tenant(t) for t in tenant_ids])
    await client.aclose()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
