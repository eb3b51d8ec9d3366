"""jobs remember when their outputs and shipped log were removed

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:30:00

Disk hygiene: ``outputs_removed_at`` / ``outputs_removed_why`` say when a finished job's
directory on its node went (retention, the node's disk threshold, a purge) so that the
master stops naming it in sweeps and tells people why its outputs are gone;
``log_removed_at`` says when retention removed the job's log shipped to the master.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outputs_removed_at", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "outputs_removed_why", sa.String(length=128), nullable=False, server_default=""
            )
        )
        batch_op.add_column(sa.Column("log_removed_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("log_removed_at")
        batch_op.drop_column("outputs_removed_why")
        batch_op.drop_column("outputs_removed_at")
