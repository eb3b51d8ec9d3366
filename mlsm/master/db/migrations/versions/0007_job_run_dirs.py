"""when an earlier attempt's directory left on another node was removed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:00:00

``job_runs.dir_removed_at``: a job retried (or preempted) on another node leaves its first
attempt's directory on the first node; retention removes it there too, and this marks it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.add_column(sa.Column("dir_removed_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_column("dir_removed_at")
