"""Templates at rest: envelope encryption bound to template id and account."""

from __future__ import annotations

import base64
import dataclasses
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from voiceprint.errors import MasterKeyError, TemplateError
from voiceprint.templates import (
    MasterKey,
    SealedTemplate,
    open_audio,
    open_template,
    rewrap_template,
    seal,
    seal_audio,
)

pytestmark = pytest.mark.unit

WRONG_KEY = r"cannot decrypt template tpl-1: wrong master key or tampered data"


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.from_config(base64.b64encode(os.urandom(32)).decode())


@pytest.fixture
def embedding() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(192).astype(np.float32)


def stored_bytes(sealed: SealedTemplate) -> bytes:
    return sealed.ciphertext + sealed.nonce + sealed.wrapped_key + sealed.key_nonce


def test_round_trip_and_nothing_in_clear(key: MasterKey, embedding: np.ndarray) -> None:
    sealed = seal(embedding, "tpl-1", "acct-1", key)
    blob = stored_bytes(sealed)
    raw = embedding.astype("<f4").tobytes()
    assert raw not in blob
    assert raw[:16] not in blob and raw[-16:] not in blob
    assert sealed.key_id == key.key_id and sealed.version == 1
    opened = open_template(sealed, "tpl-1", "acct-1", key)
    assert opened.dtype == np.float32
    np.testing.assert_array_equal(opened, embedding)
    # Fresh data key and nonce each time: same input, different ciphertext.
    assert seal(embedding, "tpl-1", "acct-1", key).ciphertext != sealed.ciphertext


def test_wrong_master_key_is_refused(key: MasterKey, embedding: np.ndarray) -> None:
    sealed = seal(embedding, "tpl-1", "acct-1", key)
    other = MasterKey(os.urandom(32))
    with pytest.raises(TemplateError, match=WRONG_KEY):
        open_template(sealed, "tpl-1", "acct-1", other)
    # Even when the stored key id is forged to match the other key.
    forged = dataclasses.replace(sealed, key_id=other.key_id)
    with pytest.raises(TemplateError, match=WRONG_KEY):
        open_template(forged, "tpl-1", "acct-1", other)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrapped_key", "key_nonce"])
def test_any_flipped_bit_is_refused(key: MasterKey, embedding: np.ndarray, field: str) -> None:
    sealed = seal(embedding, "tpl-1", "acct-1", key)
    value = bytearray(getattr(sealed, field))
    value[len(value) // 2] ^= 0x01
    changes: dict[str, Any] = {field: bytes(value)}
    tampered = dataclasses.replace(sealed, **changes)
    with pytest.raises(TemplateError, match=WRONG_KEY):
        open_template(tampered, "tpl-1", "acct-1", key)
    with pytest.raises(TemplateError, match="unknown format version"):
        open_template(dataclasses.replace(sealed, version=2), "tpl-1", "acct-1", key)


def test_blob_moved_to_another_account_or_id_is_refused(
    key: MasterKey, embedding: np.ndarray
) -> None:
    sealed = seal(embedding, "tpl-1", "acct-1", key)
    with pytest.raises(TemplateError, match="wrong master key or tampered data"):
        open_template(sealed, "tpl-1", "acct-2", key)
    with pytest.raises(TemplateError, match="cannot decrypt template tpl-2"):
        open_template(sealed, "tpl-2", "acct-1", key)
    # Ids with separators cannot be shifted between the two fields.
    odd = seal(embedding, "a|b", "c", key)
    with pytest.raises(TemplateError):
        open_template(odd, "a", "b|c", key)


def test_key_rotation_rewraps_without_reencrypting(key: MasterKey, embedding: np.ndarray) -> None:
    sealed = seal(embedding, "tpl-1", "acct-1", key)
    new_key = MasterKey(os.urandom(32))
    rotated = rewrap_template(sealed, "tpl-1", "acct-1", key, new_key)
    assert rotated.ciphertext == sealed.ciphertext and rotated.key_id == new_key.key_id
    np.testing.assert_array_equal(open_template(rotated, "tpl-1", "acct-1", new_key), embedding)
    with pytest.raises(TemplateError):
        open_template(rotated, "tpl-1", "acct-1", key)


def test_master_key_config_forms_and_clear_errors() -> None:
    raw = os.urandom(32)
    assert MasterKey.from_config(raw.hex()).key == raw
    assert MasterKey.from_config(raw.hex().upper()).key == raw
    assert MasterKey.from_config(base64.b64encode(raw).decode()).key == raw
    assert MasterKey.from_config(base64.urlsafe_b64encode(raw).decode() + "\n").key == raw
    assert raw.hex() not in repr(MasterKey(raw))
    with pytest.raises(MasterKeyError, match="not configured"):
        MasterKey.from_config("  ")
    with pytest.raises(MasterKeyError, match="must decode to 32 bytes, got 16"):
        MasterKey.from_config(os.urandom(16).hex())
    with pytest.raises(MasterKeyError, match="must decode to 32 bytes, got 48"):
        MasterKey.from_config(base64.b64encode(os.urandom(48)).decode())
    with pytest.raises(MasterKeyError, match="neither 64 hex digits nor valid base64"):
        MasterKey.from_config("not a key!")
    with pytest.raises(ValueError):  # usable from a settings validator
        MasterKey.from_config("abc")


def test_embedding_must_be_a_finite_vector(key: MasterKey) -> None:
    with pytest.raises(TemplateError, match="NaN"):
        seal(np.array([1.0, np.nan]), "t", "a", key)
    with pytest.raises(TemplateError, match="1-D"):
        seal(np.zeros((2, 2)), "t", "a", key)


def test_retained_audio_is_bound_to_its_expiry(key: MasterKey) -> None:
    pcm = os.urandom(3200)
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    expires = now + timedelta(days=30)
    sealed = seal_audio(pcm, "rec-1", "acct-1", expires, key)
    assert pcm not in sealed.ciphertext
    assert open_audio(sealed, "rec-1", "acct-1", key, now) == pcm
    extended = dataclasses.replace(sealed, expires_at=expires + timedelta(days=365))
    with pytest.raises(TemplateError, match="cannot decrypt audio rec-1: wrong master key"):
        open_audio(extended, "rec-1", "acct-1", key, now)
    with pytest.raises(TemplateError):
        open_audio(sealed, "rec-1", "acct-2", key, now)
    with pytest.raises(TemplateError, match="expired"):
        open_audio(sealed, "rec-1", "acct-1", key, expires)
