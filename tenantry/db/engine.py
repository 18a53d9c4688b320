"""Engines and sessions. One engine per process; every service creates it at start-up (the
worker adds an autocommit one for its single-statement job writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def create_engine(
    database_url: str, *, pool_size: int = 10, autocommit: bool = False
) -> AsyncEngine:
    """An async engine for `database_url` (postgresql+asyncpg:// or sqlite+aiosqlite://).

    `autocommit` is for callers whose writes are each one statement (atomic by itself): with
    no BEGIN and COMMIT around it, and a pre-ping of one round trip instead of three (a ping
    outside autocommit opens and rolls back a transaction), a write costs two round trips
    instead of six.
    """
    url = make_url(database_url)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return create_async_engine(url, **options)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    return create_async_engine(url, pool_size=pool_size, pool_pre_ping=True, **options)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
