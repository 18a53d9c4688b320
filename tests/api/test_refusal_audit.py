"""Refused keys reach the audit trail, sampled: one row per address and reason per window."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from tenantry.audit import verify_chain
from tenantry.contract.keys import generate_key
from tenantry.db.engine import create_engine, session_factory
from tenantry.db.tables import AuditEntry
from tests.api.conftest import Api, ServeApi, auth

pytestmark = pytest.mark.integration


async def _refusals(database_url: str, expected: int) -> list[AuditEntry]:
    """The audit rows of refused keys, once `expected` of them are written (they are written
    off the request path)."""
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    deadline = time.monotonic() + 10
    try:
        while True:
            async with sessions() as session:
                rows = list(
                    await session.scalars(
                        select(AuditEntry).where(AuditEntry.action == "key.refused")
                    )
                )
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def test_a_burst_of_refusals_leaves_one_row_per_reason_without_key_material(
    api: Api, database_url: str
) -> None:
    guessed = generate_key()
    for _ in range(5):
        assert (
            await api.client.get("/v1/limits", headers=auth(guessed.plaintext))
        ).status_code == 401
    assert (await api.client.get("/v1/limits", headers=auth("tnt_not-a-key"))).status_code == 401

    rows = await _refusals(database_url, expected=2)
    await asyncio.sleep(0.2)  # nothing more arrives for the repeated refusals
    rows = await _refusals(database_url, expected=2)

    assert sorted((row.detail["reason"], row.detail["key_id"]) for row in rows) == [
        ("malformed-api-key", None),
        ("unknown-api-key", guessed.key_id),
    ]
    assert {row.actor for row in rows} == {"address:203.0.113.7"}
    assert all(row.request_id for row in rows)
    assert all(guessed.plaintext not in str(row.detail) for row in rows)
    engine = create_engine(database_url)
    async with session_factory(engine)() as session:
        assert (await verify_chain(session)).intact
    await engine.dispose()


async def test_a_refusal_just_before_shutdown_is_written_before_the_api_stops(
    serve_api: ServeApi, database_url: str, redis_url: str
) -> None:
    async with serve_api(database_url=database_url, redis_url=redis_url) as api:
        guessed = generate_key()
        response = await api.client.get("/v1/limits", headers=auth(guessed.plaintext))
        assert response.status_code == 401
    # The app has stopped: nothing is left to write the row but the shutdown itself.
    rows = await _refusals(database_url, expected=1)
    assert [(row.detail["reason"], row.detail["key_id"]) for row in rows] == [
        ("unknown-api-key", guessed.key_id)
    ]
