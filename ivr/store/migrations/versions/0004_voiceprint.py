"""voiceprint tables: decision log, sealed templates, replay fingerprints, lockouts

Revision ID: 0004
Revises: 0003

The tables belong to the ``voiceprint`` package (``voiceprint/audit_store.py`` and
``voiceprint/store.py``); they live in the service's database but apart from identity data.
In PostgreSQL the service's role should have INSERT and SELECT only on ``voiceprint_audit``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "voiceprint_audit",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=True),
        sa.Column("account_id", sa.String(length=128), nullable=True),
        sa.Column("masked_caller", sa.String(length=64), nullable=True),
        sa.Column("tier_results", sa.Text(), nullable=False),
        sa.Column("challenge_expected", sa.Text(), nullable=True),
        sa.Column("challenge_heard", sa.Text(), nullable=True),
        sa.Column("model_id", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("threshold", sa.Text(), nullable=False),
        sa.Column("raw_score", sa.Double(), nullable=True),
        sa.Column("norm_score", sa.Double(), nullable=True),
        sa.Column("decision", sa.String(length=32), nullable=True),
        sa.Column("replay", sa.Boolean(), nullable=False),
        sa.Column("audio_sha256", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.String(length=128), nullable=True),
        sa.Column("refers_to_seq", sa.Integer(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("hash"),
    )
    for column in ("at", "call_id", "account_id", "decision"):
        op.create_index(f"ix_voiceprint_audit_{column}", "voiceprint_audit", [column])
    op.create_table(
        "voiceprint_templates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("key_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_voiceprint_templates_account_id", "voiceprint_templates",
                    ["account_id"])
    op.create_table(
        "voiceprint_fingerprints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_voiceprint_fingerprints_account_id", "voiceprint_fingerprints",
                    ["account_id"])
    op.create_table(
        "voiceprint_lockouts",
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("next_allowed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account_id"),
    )


def downgrade() -> None:
    for table in ("voiceprint_lockouts", "voiceprint_fingerprints", "voiceprint_templates",
                  "voiceprint_audit"):
        op.drop_table(table)
