"""Several controller nodes on one database: each call's owner, and the nodes' leases

Revision ID: 0010
Revises: 0009

Calls stored before have no owner; the first node to start adopts those still active.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("node_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_calls_node_id", ["node_id"])
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("api_url", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_s", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lost_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lost_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_nodes_heartbeat_at", "nodes", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_nodes_heartbeat_at", "nodes")
    op.drop_table("nodes")
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_node_id")
        batch.drop_column("node_id")
