"""Tables of tier 2, apart from identity data: sealed templates, replay fingerprints, lockouts.

They share the metadata of the decision log (``AuditBase``); the application's migrations
create them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from voiceprint.audit_store import AuditBase


class TemplateRow(AuditBase):
    """One sealed embedding (AES-GCM, data key wrapped by the master key)."""

    __tablename__ = "voiceprint_templates"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(128))
    # sha256 of the weights; None for templates made before it was recorded (re-enroll).
    model_version: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FingerprintRow(AuditBase):
    """The replay fingerprint of an enrollment sample or a verification attempt (no audio)."""

    __tablename__ = "voiceprint_fingerprints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(16))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PrintKeyRow(AuditBase):
    """One lookup key of a replay fingerprint (``voiceprint.replay.index_keys``): a verify
    compares in full only the earlier prints that share many keys at one offset. The primary
    key starts with (account, key), so a lookup reads the index alone (no table rows; SQLite
    stores the table as that index)."""

    __tablename__ = "voiceprint_print_keys"
    __table_args__ = {"sqlite_with_rowid": False}

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame: Mapped[int] = mapped_column(Integer, primary_key=True)


class LockoutRow(AuditBase):
    """The lockout state of one account's voice verification."""

    __tablename__ = "voiceprint_lockouts"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    next_allowed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RecordingRow(AuditBase):
    """Raw audio kept only when retention is configured: sealed, and purged at ``expires_at``."""

    __tablename__ = "voiceprint_recordings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(16))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
