"""audit rows carry a keyed MAC

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00

Each audit row written from now on carries ``mac``: HMAC-SHA256 of its chain hash under the
master's audit key, a file in its data dir that never enters the database. Rows written
before this revision keep ``mac`` NULL and are checked by the hash chain only.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_column("mac")
