"""Agents shared by several nodes: the claim (which call rings or talks to the agent, and which
node gave it), shared wrap-up and idle time

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("claimed_call_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("wrap_up_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("idle_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        for column in ("idle_since", "wrap_up_until", "claimed_at", "claimed_by",
                       "claimed_call_id"):
            batch.drop_column(column)
