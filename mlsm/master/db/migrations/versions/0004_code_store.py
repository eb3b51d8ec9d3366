"""code snapshots, their proofs of possession, projects

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-10 10:00:00

``code_snapshots``: which user may run jobs in which snapshot of the code store;
``code_proofs``: which blobs a user has sent; ``projects``: users' named trees on nodes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "code_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest", "user"),
    )
    op.create_index("ix_code_snapshots_digest", "code_snapshots", ["digest"])
    op.create_table(
        "code_proofs",
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("user", "sha256"),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user", "name", "node_id"),
    )
    op.create_index("ix_projects_node_id", "projects", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_projects_node_id", table_name="projects")
    op.drop_table("projects")
    op.drop_table("code_proofs")
    op.drop_index("ix_code_snapshots_digest", table_name="code_snapshots")
    op.drop_table("code_snapshots")
