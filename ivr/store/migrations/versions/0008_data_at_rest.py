"""Field encryption: data keys, sealed columns widened to text, accounts' blind index,
the retention job's record

Revision ID: 0008
Revises: 0007

Values already stored stay readable in clear; the service seals them at start-up
(ivr.store.crypto.seal_existing) once it has the master key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"

# Sealed values are longer than the numbers they hold: these columns become text.
WIDENED = {"calls": ("caller_number", "callback_number"), "callback_requests": ("number",),
           "accounts": ("phone_number",), "outbox": ("phone_number",)}


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("master_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "retention_purges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.Text(), existing_nullable=column in (
                    "callback_number",))
            if table == "accounts":
                batch.drop_index("ix_accounts_phone_number")
                batch.add_column(sa.Column("phone_index", sa.String(length=64), nullable=True))
                batch.create_index("ix_accounts_phone_index", ["phone_index"])


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_index("ix_accounts_phone_index")
        batch.drop_column("phone_index")
        batch.create_index("ix_accounts_phone_number", ["phone_number"])
    op.drop_table("retention_purges")
    op.drop_table("data_keys")
