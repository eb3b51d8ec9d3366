"""when a retry of an attempt lost with its node may start

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:30:00

``jobs.not_before``: a job requeued because its node missed its lease waits until that node
has surely stopped the lost attempt (the lease, a stop's grace and a margin), so the two
never run at once; kept in the row so a restarted master keeps the fence.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
