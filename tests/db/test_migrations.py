"""Migrations apply on PostgreSQL (production) and SQLite (`tenantry dev`) and undo cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantry.db.engine import create_engine
from tenantry.db.migrate import (
    current_revision,
    downgrade,
    head_revision,
    is_at_head,
    upgrade,
    upgrade_engine,
)
from tenantry.db.tables import Base

pytestmark = pytest.mark.integration


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    await engine.dispose()
    return names - {"alembic_version"}


async def test_postgres_downgrade_to_base_and_back_to_head(database_url: str) -> None:
    assert await _tables(database_url) == set(Base.metadata.tables)
    await asyncio.to_thread(downgrade, database_url, "base")
    assert await _tables(database_url) == set()
    await asyncio.to_thread(upgrade, database_url)
    assert await _tables(database_url) == set(Base.metadata.tables)
    engine = create_engine(database_url)
    assert await current_revision(engine) == head_revision()
    await engine.dispose()


async def test_sqlite_for_dev_migrates_to_head_from_a_running_event_loop(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dev' / 'tenantry.db'}"
    engine = create_engine(url)
    await upgrade_engine(engine)
    assert await is_at_head(engine)
    await engine.dispose()
    assert await _tables(url) == set(Base.metadata.tables)


async def test_audit_log_refuses_updates_and_deletes_in_postgres(database_url: str) -> None:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO audit_log (actor, action, detail, prev_hash, hash) "
                "VALUES ('key:abc', 'job.submitted', '{}', '', 'h1')"
            )
        )
    for statement in ("UPDATE audit_log SET actor = 'someone-else'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="audit_log is append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))
    await engine.dispose()


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_create_exactly_the_tables_the_code_declares(database_url: str) -> None:
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    await engine.dispose()
    assert differences == [], "tables.py and the migrations disagree: add a migration"
