"""Voiceprint templates and retained audio at rest: envelope encryption with AES-GCM.

Each blob gets a fresh random 256-bit data key that encrypts it; the master key (from
configuration, never a default) only wraps data keys. The associated data of both layers binds
the blob to its purpose, template/recording id and account id, so a blob copied to another
account or id, a wrong master key, or any changed byte makes decryption fail loudly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import string
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voiceprint.errors import MasterKeyError, TemplateError

FORMAT_VERSION: Final = 1
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
# Plaintext header: format version (uint8), embedding dimension (uint32), little-endian.
_EMBEDDING_HEADER: Final = struct.Struct("<BI")


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The key-encryption key; ``key_id`` names it in stored blobs without revealing it."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != _KEY_BYTES:
            raise MasterKeyError(
                f"voiceprint master key must be {_KEY_BYTES} bytes, got {len(self.key)}"
            )

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """A short public fingerprint of the key, stored with each blob."""
        return hashlib.sha256(b"voiceprint-master-key-id\x00" + self.key).hexdigest()[:16]

    @classmethod
    def from_config(cls, value: str) -> MasterKey:
        """Parse a 32-byte key given as 64 hex digits or base64 (standard or URL-safe)."""
        text = value.strip()
        if not text:
            raise MasterKeyError(
                "voiceprint master key is not configured: set it to 32 random bytes "
                "as 64 hex digits or base64"
            )
        raw: bytes | None = None
        # 32 bytes of base64 always end in "=", so a string of hex digits is meant as hex.
        if all(ch in string.hexdigits for ch in text) and len(text) % 2 == 0:
            raw = bytes.fromhex(text)
        if raw is None:
            try:
                raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise MasterKeyError(
                    "voiceprint master key is neither 64 hex digits nor valid base64"
                ) from None
        if len(raw) != _KEY_BYTES:
            raise MasterKeyError(
                f"voiceprint master key must decode to {_KEY_BYTES} bytes, got {len(raw)}"
            )
        return cls(raw)


@dataclass(frozen=True)
class SealedTemplate:
    """An encrypted embedding as stored; every field is needed to open it."""

    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    key_nonce: bytes
    key_id: str
    version: int


@dataclass(frozen=True)
class SealedAudio:
    """Encrypted retained audio; ``expires_at`` is stored in clear for purging, and bound."""

    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    key_nonce: bytes
    key_id: str
    version: int
    expires_at: datetime


def _associated_data(purpose: str, version: int, object_id: str, account_id: str,
                     extra: str = "") -> bytes:
    # JSON of a list is an unambiguous encoding even when ids contain separators.
    return json.dumps([purpose, version, object_id, account_id, extra]).encode()


def _seal_bytes(plaintext: bytes, aad: bytes, key: MasterKey) -> tuple[bytes, bytes, bytes, bytes]:
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    key_nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    wrapped = AESGCM(key.key).encrypt(key_nonce, data_key, b"wrap\x00" + aad)
    return ciphertext, nonce, wrapped, key_nonce


def _unwrap(wrapped: bytes, key_nonce: bytes, key_id: str, aad: bytes, key: MasterKey,
            what: str) -> bytes:
    failure = f"cannot decrypt {what}: wrong master key or tampered data"
    if key_id != key.key_id:
        raise TemplateError(f"{failure} (sealed under key id {key_id}, have {key.key_id})")
    try:
        return AESGCM(key.key).decrypt(key_nonce, wrapped, b"wrap\x00" + aad)
    except (InvalidTag, ValueError) as exc:
        raise TemplateError(failure) from exc


def _open_bytes(ciphertext: bytes, nonce: bytes, wrapped: bytes, key_nonce: bytes, key_id: str,
                aad: bytes, key: MasterKey, what: str) -> bytes:
    data_key = _unwrap(wrapped, key_nonce, key_id, aad, key, what)
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise TemplateError(f"cannot decrypt {what}: wrong master key or tampered data") from exc


def _check_version(version: int, what: str) -> None:
    if version != FORMAT_VERSION:
        raise TemplateError(f"cannot decrypt {what}: unknown format version {version}")


def seal(embedding: npt.ArrayLike, template_id: str, account_id: str,
         key: MasterKey) -> SealedTemplate:
    """Encrypt one embedding (stored as float32 little-endian) for ``account_id``."""
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise TemplateError(f"template {template_id}: embedding must be a non-empty 1-D vector")
    if not np.all(np.isfinite(vector)):
        raise TemplateError(f"template {template_id}: embedding has NaN or infinite values")
    plaintext = _EMBEDDING_HEADER.pack(FORMAT_VERSION, vector.size) + vector.astype("<f4").tobytes()
    aad = _associated_data("voiceprint.template", FORMAT_VERSION, template_id, account_id)
    ciphertext, nonce, wrapped, key_nonce = _seal_bytes(plaintext, aad, key)
    return SealedTemplate(ciphertext, nonce, wrapped, key_nonce, key.key_id, FORMAT_VERSION)


def open_template(sealed: SealedTemplate, template_id: str, account_id: str,
                  key: MasterKey) -> npt.NDArray[np.float32]:
    """Decrypt an embedding sealed for this template id and account, or raise TemplateError."""
    what = f"template {template_id}"
    _check_version(sealed.version, what)
    aad = _associated_data("voiceprint.template", sealed.version, template_id, account_id)
    plaintext = _open_bytes(sealed.ciphertext, sealed.nonce, sealed.wrapped_key,
                            sealed.key_nonce, sealed.key_id, aad, key, what)
    version, dim = _EMBEDDING_HEADER.unpack_from(plaintext)
    body = plaintext[_EMBEDDING_HEADER.size:]
    if version != sealed.version or len(body) != 4 * dim:
        raise TemplateError(f"cannot decrypt {what}: malformed embedding header")
    return np.frombuffer(body, dtype="<f4").astype(np.float32)


def rewrap_template(sealed: SealedTemplate, template_id: str, account_id: str,
                    old: MasterKey, new: MasterKey) -> SealedTemplate:
    """Re-wrap the data key under a new master key (key rotation) without touching the data."""
    what = f"template {template_id}"
    _check_version(sealed.version, what)
    aad = _associated_data("voiceprint.template", sealed.version, template_id, account_id)
    data_key = _unwrap(sealed.wrapped_key, sealed.key_nonce, sealed.key_id, aad, old, what)
    key_nonce = os.urandom(_NONCE_BYTES)
    wrapped = AESGCM(new.key).encrypt(key_nonce, data_key, b"wrap\x00" + aad)
    return SealedTemplate(sealed.ciphertext, sealed.nonce, wrapped, key_nonce, new.key_id,
                          sealed.version)


def rewrap_audio(sealed: SealedAudio, recording_id: str, account_id: str,
                 old: MasterKey, new: MasterKey) -> SealedAudio:
    """Re-wrap retained audio's data key under a new master key without touching the data."""
    what = f"audio {recording_id}"
    _check_version(sealed.version, what)
    aad = _associated_data("voiceprint.audio", sealed.version, recording_id, account_id,
                           _utc_iso(sealed.expires_at))
    data_key = _unwrap(sealed.wrapped_key, sealed.key_nonce, sealed.key_id, aad, old, what)
    key_nonce = os.urandom(_NONCE_BYTES)
    wrapped = AESGCM(new.key).encrypt(key_nonce, data_key, b"wrap\x00" + aad)
    return SealedAudio(sealed.ciphertext, sealed.nonce, wrapped, key_nonce, new.key_id,
                       sealed.version, sealed.expires_at)


def _utc_iso(at: datetime) -> str:
    if at.tzinfo is None or at.utcoffset() is None:
        raise TemplateError("audio expiry must be a timezone-aware time")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def seal_audio(pcm: bytes, recording_id: str, account_id: str, expires_at: datetime,
               key: MasterKey) -> SealedAudio:
    """Encrypt retained raw audio; the expiry is bound so it cannot be extended unnoticed."""
    aad = _associated_data("voiceprint.audio", FORMAT_VERSION, recording_id, account_id,
                           _utc_iso(expires_at))
    ciphertext, nonce, wrapped, key_nonce = _seal_bytes(bytes(pcm), aad, key)
    return SealedAudio(ciphertext, nonce, wrapped, key_nonce, key.key_id, FORMAT_VERSION,
                       expires_at.astimezone(UTC))


def open_audio(sealed: SealedAudio, recording_id: str, account_id: str, key: MasterKey,
               now: datetime) -> bytes:
    """Decrypt retained audio that has not expired at ``now``, or raise TemplateError."""
    what = f"audio {recording_id}"
    _check_version(sealed.version, what)
    aad = _associated_data("voiceprint.audio", sealed.version, recording_id, account_id,
                           _utc_iso(sealed.expires_at))
    plaintext = _open_bytes(sealed.ciphertext, sealed.nonce, sealed.wrapped_key,
                            sealed.key_nonce, sealed.key_id, aad, key, what)
    _utc_iso(now)  # rejects a naive clock
    if now >= sealed.expires_at:
        raise TemplateError(f"audio {recording_id} expired at {_utc_iso(sealed.expires_at)}")
    return plaintext
