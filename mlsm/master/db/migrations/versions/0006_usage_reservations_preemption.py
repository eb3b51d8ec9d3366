"""usage facts per job attempt, GPU reservations, preemption counts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:00:00

``job_runs``: one row per attempt that ran (node, GPUs, their model, the node's labels,
queued/started/ended times), the stored facts ``mlsm usage`` is computed from;
``reservations``: GPUs of a node set aside for a user (or for maintenance) for a while;
``jobs.preemptions``: attempts a job lost to preemption, which use none of its retries.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=63), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("gpu_indices", sa.JSON(), nullable=False),
        sa.Column("gpu_model", sa.String(length=128), nullable=False),
        sa.Column("node_labels", sa.JSON(), nullable=False),
        sa.Column("queued_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "attempt"),
    )
    op.create_index("ix_job_runs_ended", "job_runs", ["ended_at"])
    op.create_index("ix_job_runs_user", "job_runs", ["user"])
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=63), nullable=False),
        sa.Column("gpu_indices", sa.JSON(), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("cancelled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reservations_end", "reservations", ["end"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("preemptions")
    op.drop_index("ix_reservations_end", table_name="reservations")
    op.drop_table("reservations")
    op.drop_index("ix_job_runs_user", table_name="job_runs")
    op.drop_index("ix_job_runs_ended", table_name="job_runs")
    op.drop_table("job_runs")
