"""timestamp defaults SQLite can evaluate

Revision 0001 wrote `now()` as the default of the creation timestamps. PostgreSQL has that
function; SQLite (`tenantry dev`) accepts the table but fails every insert that relies on the
default. `CURRENT_TIMESTAMP` means the same on both.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMPS = {
    "audit_log": ["at"],
    "jobs": ["created_at", "updated_at"],
    "usage_flushes": ["flushed_at"],
    "idempotency_keys": ["created_at"],
}


def _set_defaults(default: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL evaluates now() already
    for table, columns in TIMESTAMPS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(
                    column,
                    existing_type=sa.DateTime(timezone=True),
                    existing_nullable=False,
                    server_default=sa.text(default),
                )


def upgrade() -> None:
    _set_defaults("CURRENT_TIMESTAMP")


def downgrade() -> None:
    _set_defaults("now()")
