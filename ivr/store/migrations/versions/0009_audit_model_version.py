"""The decision log's model_version as wide as the templates' (``sha256:`` and 64 hex digits)

Revision ID: 0009
Revises: 0008

SQLite never enforced the old 64 characters; PostgreSQL refused every record of a tier-2
decision with them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("voiceprint_audit") as batch:
        batch.alter_column("model_version", type_=sa.String(length=80),
                           existing_type=sa.String(length=64), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("voiceprint_audit") as batch:
        batch.alter_column("model_version", type_=sa.String(length=64),
                           existing_type=sa.String(length=80), existing_nullable=True)
