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
    database_url: str, *, pool_size: int = 10, autocommit: bool = False, pre_ping: bool = True
) -> AsyncEngine:
    """An async engine for `database_url` (postgresql+asyncpg:// or sqlite+aiosqlite://).

    `autocommit` is for callers whose writes are each one statement (atomic by itself): with
    no BEGIN and COMMIT around it a write is one round trip instead of three. `pre_ping=False`
    saves the ping on every checkout (three more round trips outside autocommit, one inside)
    for callers that retry a statement on a lost connection themselves.
    """
    url = make_url(database_url)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return create_async_engine(url, **options)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    return create_async_engine(url, pool_size=pool_size, pool_pre_ping=pre_ping, **options)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
