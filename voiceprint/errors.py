"""Errors raised by the ``voiceprint`` package.

Exception tree::

    VoiceprintError
    ├── EmbeddingModelError   the speaker-embedding model folder is missing, incomplete or corrupt
    ├── AudioRejected         enrollment/verification audio failed a quality check (``reason``)
    ├── TemplateError         a stored voiceprint template is unusable
    ├── AuditChainError       the decision log's hash chain does not verify
    ├── LockedOut             too many failed verifications; the caller is locked out
    │   └── AccountLockedOut      ``reason`` ("backoff"|"disabled") and ``retry_after_s``
    ├── MasterKeyError        the configured template master key is missing or malformed
    └── ConsentMissing      enrollment without the caller's recorded consent
                              (also a ValueError, for settings validators)
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

AUDIO_REJECT_REASONS: Final = frozenset({
    "too_short", "silent", "clipped", "noisy", "wrong_rate", "bad_format", "too_long"})


class VoiceprintError(Exception):
    """Base of every error this package raises on purpose."""


class EmbeddingModelError(VoiceprintError):
    """The embedding model in ``folder`` cannot be used; ``detail`` says why."""

    def __init__(self, folder: str | Path, detail: str) -> None:
        super().__init__(f"speaker embedding model {folder}: {detail}")
        self.folder = str(folder)
        self.detail = detail


class AudioRejected(VoiceprintError):
    """Audio failed a quality check; ``reason`` is one of ``AUDIO_REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in AUDIO_REJECT_REASONS:
            raise ValueError(f"unknown audio rejection reason {reason!r}")
        super().__init__(f"audio rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class TemplateError(VoiceprintError):
    """A stored voiceprint template is missing, malformed or from another model."""


class AuditChainError(VoiceprintError):
    """The voiceprint decision log's hash chain is broken."""


class LockedOut(VoiceprintError):
    """Verification is refused because the caller is locked out after failed attempts."""


class AccountLockedOut(LockedOut):
    """Locked out for ``reason`` ("backoff" or "disabled"); retry after ``retry_after_s``.

    ``retry_after_s`` is None when only a person can re-enable the account.
    """

    def __init__(self, reason: str, retry_after_s: float | None, detail: str = "") -> None:
        if reason not in ("backoff", "disabled"):
            raise ValueError(f"unknown lockout reason {reason!r}")
        wait = "" if retry_after_s is None else f", retry after {retry_after_s:g} s"
        super().__init__(f"voice verification locked out: {reason}{wait}"
                         + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.detail = detail


class MasterKeyError(VoiceprintError, ValueError):
    """The master key for templates at rest is missing or malformed in configuration."""


class ConsentMissing(VoiceprintError):
    """Enrollment was asked for without the caller's recorded consent."""


class VoiceprintUnavailable(VoiceprintError):
    """An operation needs the speaker model or the master key and this process has not got it;
    ``missing`` names what (the decision log and account state never need either)."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"voiceprint {missing}")
        self.missing = missing
