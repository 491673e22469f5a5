"""Voiceprint templates record the weights they were made with (model_version)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("voiceprint_templates") as batch:
        batch.add_column(sa.Column("model_version", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("voiceprint_templates") as batch:
        batch.drop_column("model_version")
