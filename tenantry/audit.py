"""The append-only audit trail, chained by hash so that an altered or deleted row shows.

Each row's `hash` is SHA-256 over its own content and the previous row's hash. Changing a
row breaks its own hash; deleting one breaks the link of the row after it. On PostgreSQL a
trigger also refuses UPDATE and DELETE outright; the chain catches what a superuser could do
around the trigger. Appends are serialised by a transaction-scoped advisory lock, so two
writers never chain onto the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tenantry.db.tables import AuditEntry

# An arbitrary constant naming "the audit chain" among PostgreSQL advisory locks.
AUDIT_LOCK_KEY = 0x7E_4A_A7_D1
GENESIS_HASH = ""


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def entry_hash(
    *,
    prev_hash: str,
    at: datetime,
    tenant_id: str | None,
    actor: str,
    action: str,
    detail: Mapping[str, Any],
    request_id: str | None,
) -> str:
    canonical = json.dumps(
        {
            "prev": prev_hash,
            "at": _utc(at).isoformat(timespec="microseconds"),
            "tenant": tenant_id,
            "actor": actor,
            "action": action,
            "detail": detail,
            "request": request_id,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def append_audit(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    tenant_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEntry:
    """Add a row to the chain inside the caller's transaction (it commits with the change
    it records, or not at all)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    prev = await session.scalar(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1))
    fields: dict[str, Any] = {
        "at": datetime.now(UTC),
        "tenant_id": tenant_id,
        "actor": actor,
        "action": action,
        "detail": dict(detail or {}),
        "request_id": request_id,
        "prev_hash": prev or GENESIS_HASH,
    }
    entry = AuditEntry(**fields, hash=entry_hash(**fields))
    session.add(entry)
    await session.flush()
    return entry


@dataclass(frozen=True)
class ChainReport:
    rows: int
    broken_at: int | None = None  # id of the first row that does not verify
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


async def verify_chain(session: AsyncSession, *, batch: int = 1000) -> ChainReport:
    """Walk the chain from its first row; report the first row whose link or hash fails."""
    expected_prev = GENESIS_HASH
    checked = 0
    last_id = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.id > last_id)
                .order_by(AuditEntry.id)
                .limit(batch)
            )
        ).all()
        if not rows:
            return ChainReport(rows=checked)
        for row in rows:
            if row.prev_hash != expected_prev:
                return ChainReport(
                    checked, row.id, "previous row missing or altered (link does not match)"
                )
            recomputed = entry_hash(
                prev_hash=row.prev_hash,
                at=row.at,
                tenant_id=row.tenant_id,
                actor=row.actor,
                action=row.action,
                detail=row.detail,
                request_id=row.request_id,
            )
            if recomputed != row.hash:
                return ChainReport(checked, row.id, "row content altered (hash does not match)")
            expected_prev = row.hash
            checked += 1
            last_id = row.id
        session.expunge_all()
