"""Throttle windows (rate_limits); agent tokens name the agent record they act for

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(length=96), nullable=False),
        sa.Column("window_start", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start"),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("agent_id", sa.String(length=64), nullable=True))
    # Agent tokens made before: the agent their name matches, if that agent exists (the newest
    # unrevoked one per agent; older ones keep no agent and so see no calls).
    op.execute("UPDATE api_tokens SET agent_id = name WHERE role = 'agent' "
               "AND name IN (SELECT id FROM agents) AND revoked_at IS NULL "
               "AND created_at = (SELECT max(t.created_at) FROM api_tokens t WHERE t.role = "
               "'agent' AND t.name = api_tokens.name AND t.revoked_at IS NULL)")
    live = sa.text("revoked_at IS NULL AND agent_id IS NOT NULL")
    op.create_index("ux_api_tokens_live_agent", "api_tokens", ["agent_id"], unique=True,
                    sqlite_where=live, postgresql_where=live)


def downgrade() -> None:
    op.drop_index("ux_api_tokens_live_agent", "api_tokens")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("agent_id")
    op.drop_table("rate_limits")
