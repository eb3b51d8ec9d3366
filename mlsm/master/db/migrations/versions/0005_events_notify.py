"""the event stream, notification subscriptions and deliveries, the idle-GPU marks of jobs

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01 10:00:00

``events``: the lab's ordered event stream (ids never reused: AUTOINCREMENT on SQLite);
``notify_subscriptions`` / ``notify_deliveries``: webhooks and emails, and what was sent;
``jobs.idle_exempt`` / ``jobs.idle_warned_at``: the idle-GPU policy's marks.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("node", sa.String(length=63), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_table(
        "notify_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("lab_wide", sa.Boolean(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=2048), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notify_subscriptions_owner", "notify_subscriptions", ["owner"])
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notify_deliveries_sub_id", "notify_deliveries", ["subscription_id", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("idle_exempt", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("idle_warned_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("idle_warned_at")
        batch.drop_column("idle_exempt")
    op.drop_index("ix_notify_deliveries_sub_id", table_name="notify_deliveries")
    op.drop_table("notify_deliveries")
    op.drop_index("ix_notify_subscriptions_owner", table_name="notify_subscriptions")
    op.drop_table("notify_subscriptions")
    op.drop_index("ix_events_ts", table_name="events")
    op.drop_table("events")
