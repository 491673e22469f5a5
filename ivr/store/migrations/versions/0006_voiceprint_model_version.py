"""Voiceprint templates record the weights they were made with (model_version); replay prints
get a key index (voiceprint_print_keys), filled for the prints already stored

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import struct

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def _keys(data: bytes) -> list[tuple[int, int]]:
    """(key, frame) pairs of a version 1 fingerprint, as voiceprint.replay.index_keys made them
    when this migration was written (kept here so later changes there cannot alter it)."""
    magic, version, count = struct.unpack_from("<3sBI", data)
    if magic != b"VFP" or version != 1:
        return []
    bits = np.frombuffer(data, dtype="<u4", count=count, offset=8).astype(np.int64)
    active = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=8 + 4 * count),
                           count=count).astype(bool)
    frames = np.nonzero(active)[0]
    values = bits[frames]
    return [*((int(v) & 0xFFFF, int(f)) for v, f in zip(values, frames, strict=True)),
            *(((int(v) >> 16) | 0x10000, int(f)) for v, f in zip(values, frames, strict=True))]


def upgrade() -> None:
    with op.batch_alter_table("voiceprint_templates") as batch:
        batch.add_column(sa.Column("model_version", sa.String(length=80), nullable=True))
    keys = op.create_table(
        "voiceprint_print_keys",
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.Integer(), nullable=False),
        sa.Column("fingerprint_id", sa.Integer(), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "key", "fingerprint_id", "frame"),
        sqlite_with_rowid=False,
    )
    connection = op.get_bind()
    prints = connection.execute(sa.text(
        "SELECT id, account_id, data FROM voiceprint_fingerprints")).all()
    for print_id, account_id, data in prints:
        rows = [{"fingerprint_id": print_id, "key": key, "frame": frame,
                 "account_id": account_id} for key, frame in _keys(bytes(data))]
        if rows:
            op.bulk_insert(keys, rows)


def downgrade() -> None:
    op.drop_table("voiceprint_print_keys")
    with op.batch_alter_table("voiceprint_templates") as batch:
        batch.drop_column("model_version")
