"""job leases and retry due times

A running job holds a lease its worker renews; a lease that lapses means the worker died, and
the outbox sweep hands the job on. A job waiting for a retry is not due before `available_at`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 08:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        jobs.add_column(sa.Column("available_at", sa.DateTime(timezone=True), nullable=True))
        jobs.create_index("ix_jobs_status_lease", ["status", "lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_index("ix_jobs_status_lease")
        jobs.drop_column("available_at")
        jobs.drop_column("lease_expires_at")
