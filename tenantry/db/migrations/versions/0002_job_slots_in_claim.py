"""a job's claim takes its tenant's maxConcurrentJobs slot: running jobs by tenant, and the
claim function

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Claims of one tenant's jobs take turns on an advisory lock, held until the claim commits.
# The count of live leases is its own statement, so it reads a snapshot taken after the lock
# was granted (a VOLATILE function's statements each take a fresh one) and sees every claim
# committed before it: two workers can never both take the last slot. (In one statement the
# snapshot would predate the lock.) A NULL `claim_slots` claims without counting.
CLAIM_FUNCTION = """
CREATE FUNCTION jobs_claim(
    claim_job_id uuid,
    claim_attempt integer,
    claim_tenant_id varchar,
    claim_slots integer,
    claim_now timestamptz,
    claim_lease_expires_at timestamptz
) RETURNS SETOF jobs LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF claim_slots IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('tenantry.jobs_claim'), hashtext(claim_tenant_id));
        IF (
            SELECT count(*) FROM jobs
            WHERE tenant_id = claim_tenant_id
                AND status = 'running'
                AND lease_expires_at > claim_now
        ) >= claim_slots THEN
            -- Every slot is held: the job comes back still queued, if it is due at all.
            RETURN QUERY SELECT * FROM jobs
                WHERE id = claim_job_id AND status = 'queued' AND attempts = claim_attempt;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY UPDATE jobs SET
            status = 'running',
            attempts = attempts + 1,
            started_at = claim_now,
            lease_expires_at = claim_lease_expires_at,
            updated_at = CURRENT_TIMESTAMP
        WHERE id = claim_job_id
            AND status = 'queued'
            AND attempts = claim_attempt
            AND tenant_id = claim_tenant_id
        RETURNING *;
END
$$
"""


def upgrade() -> None:
    # Only running jobs: the count of a tenant's live leases reads a handful of entries however
    # many jobs the tenant ever ran.
    op.create_index(
        "ix_jobs_running_tenant",
        "jobs",
        ["tenant_id", "lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS "
            "jobs_claim(uuid, integer, varchar, integer, timestamptz, timestamptz)"
        )
    op.drop_index("ix_jobs_running_tenant", table_name="jobs")
