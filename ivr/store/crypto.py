"""Personal data at rest: caller and callback numbers, transcripts and code messages are
encrypted field by field; equality lookups go through a blind index.

Envelope, as for the voiceprint templates: each value is AES-256-GCM under a *data key*; data
keys live in ``data_keys``, wrapped (AES-GCM) by the master key (``voiceprint.master_key``, one
secret to keep and back up). A sealed value is ``enc1:<data key id>:<base64 nonce+ciphertext>``
whose associated data is the column's name, so a value copied into another column does not
open. The newest ``fields`` data key seals new values; older ones stay to read old values.

The blind index (``index`` data key, one per database) is a keyed HMAC of a normalized value
(a phone number in E.164), so ``accounts`` can be found by number without storing it in clear.

Columns declare ``Sealed("table.column")``. The keys of a database are installed on its engine
(:func:`install`); an engine without keys reads and writes clear text (tests, tools) and refuses
to read a sealed value. Values stored in clear before encryption was turned on are read as they
are and sealed by :func:`seal_existing` at start-up.

Rotation without downtime (``ivr keys rotate``): configure the new master key with the old one
as a previous key, restart the processes one by one (each opens keys wrapped under either), then
re-wrap every data key and voiceprint template under the new key in one transaction, and drop
the previous key from the configuration. ``ivr keys rotate --new-data-key`` starts a new data
key for new values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, Text, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from voiceprint.templates import MasterKey

PREFIX = "enc1:"
INDEX_KEY_ID = 0  # the one blind-index key of a database; field keys count up from 1
_NONCE = 12


class FieldKeyError(Exception):
    """A sealed value that cannot be opened (no keys, unknown key, wrong master, tampering)."""


@dataclass(frozen=True)
class _DataKey:
    id: int
    purpose: str
    key: bytes


def _wrap_aad(key_id: int, purpose: str) -> bytes:
    return json.dumps(["ivr.data-key", key_id, purpose]).encode()


def wrap(master: MasterKey, key_id: int, purpose: str, key: bytes) -> tuple[bytes, bytes]:
    """``key`` wrapped by ``master``: (nonce, wrapped)."""
    nonce = os.urandom(_NONCE)
    return nonce, AESGCM(master.key).encrypt(nonce, key, _wrap_aad(key_id, purpose))


def unwrap(master: MasterKey, key_id: int, purpose: str, nonce: bytes, wrapped: bytes) -> bytes:
    """The data key, or FieldKeyError."""
    try:
        return AESGCM(master.key).decrypt(nonce, wrapped, _wrap_aad(key_id, purpose))
    except (InvalidTag, ValueError) as exc:
        raise FieldKeyError(f"data key {key_id} does not open with master key "
                            f"{master.key_id}") from exc


class FieldKeys:
    """The data keys of one database, opened with the master key (or a previous one)."""

    def __init__(self, engine: Engine, master: MasterKey,
                 previous: Sequence[MasterKey] = ()) -> None:
        self.engine = engine
        self.masters = {m.key_id: m for m in (*previous, master)}
        self.master = master
        self._keys: dict[int, _DataKey] = {}
        self._lock = threading.Lock()
        self._load()
        if not any(k.purpose == "fields" for k in self._keys.values()):
            self.new_data_key()
        if INDEX_KEY_ID not in self._keys:
            self._create(INDEX_KEY_ID, "index")
            self._load()

    # ---- keys ----------------------------------------------------------------------------------

    def _load(self) -> None:
        from ivr.store.models import DataKeyRow

        with self.engine.connect() as connection:
            rows = connection.execute(select(DataKeyRow)).all()
        keys: dict[int, _DataKey] = {}
        for row in rows:
            master = self.masters.get(row.master_id)
            if master is None:
                raise FieldKeyError(
                    f"data key {row.id} is wrapped by master key {row.master_id}, which is not "
                    f"configured (have {', '.join(self.masters)}); configure it as the master "
                    "or a previous master key")
            keys[row.id] = _DataKey(row.id, row.purpose,
                                    unwrap(master, row.id, row.purpose, row.nonce, row.wrapped))
        with self._lock:
            self._keys = keys

    def _create(self, key_id: int | None, purpose: str) -> None:
        from ivr.store.models import DataKeyRow

        key = AESGCM.generate_key(bit_length=256)
        with self.engine.begin() as connection:
            if key_id is None:
                key_id = int(connection.execute(
                    select(DataKeyRow.id).order_by(DataKeyRow.id.desc()).limit(1)).scalar()
                    or 0) + 1
            nonce, wrapped = wrap(self.master, key_id, purpose, key)
            try:
                connection.execute(insert(DataKeyRow).values(
                    id=key_id, purpose=purpose, nonce=nonce, wrapped=wrapped,
                    master_id=self.master.key_id, created_at=datetime.now(UTC)))
            except IntegrityError:  # another process made it first: use theirs
                pass

    def new_data_key(self) -> int:
        """Start a new field data key for new values (old ones stay for reading); its id."""
        self._create(None, "fields")
        self._load()
        return self._active().id

    def _active(self) -> _DataKey:
        with self._lock:
            fields = [k for k in self._keys.values() if k.purpose == "fields"]
        return max(fields, key=lambda k: k.id)

    def _key(self, key_id: int) -> _DataKey:
        with self._lock:
            found = self._keys.get(key_id)
        if found is None:  # made by another process since we loaded
            self._load()
            with self._lock:
                found = self._keys.get(key_id)
        if found is None or found.purpose != "fields":
            raise FieldKeyError(f"no field data key {key_id} in this database")
        return found

    # ---- values --------------------------------------------------------------------------------

    def seal(self, plain: str, where: str) -> str:
        """``plain`` encrypted for column ``where``."""
        key = self._active()
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(key.key).encrypt(nonce, plain.encode("utf-8"), where.encode())
        return f"{PREFIX}{key.id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, value: str, where: str) -> str:
        """The clear text of a sealed value of column ``where`` (clear values as they are)."""
        if not value.startswith(PREFIX):
            return value
        try:
            key_text, _, body = value[len(PREFIX):].partition(":")
            raw = base64.b64decode(body, validate=True)
            key = self._key(int(key_text))
            return AESGCM(key.key).decrypt(raw[:_NONCE], raw[_NONCE:], where.encode()).decode()
        except (ValueError, binascii.Error, InvalidTag) as exc:
            raise FieldKeyError(f"a sealed value of {where} does not open (tampered, or moved "
                                "from another column)") from exc

    def index(self, kind: str, value: str) -> str:
        """The blind index of ``value`` (already normalized) for lookups of ``kind``."""
        with self._lock:
            key = self._keys[INDEX_KEY_ID].key
        return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:40]


# ---- engines and columns -----------------------------------------------------------------------

_INSTALLED: weakref.WeakKeyDictionary[Dialect, FieldKeys] = weakref.WeakKeyDictionary()


def install(engine: Engine, keys: FieldKeys) -> None:
    """Seal and open the engine's ``Sealed`` columns with ``keys``."""
    _INSTALLED[engine.dialect] = keys


def keys_for(engine: Engine) -> FieldKeys | None:
    """The keys installed on ``engine``, if any."""
    return _INSTALLED.get(engine.dialect)


class Sealed(TypeDecorator[str]):
    """A text column stored encrypted when its engine has keys (see the module docstring)."""

    impl = Text
    cache_ok = True

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        """Seal on the way in."""
        keys = _INSTALLED.get(dialect)
        if value is None or keys is None:
            return value
        # Always sealed, even text that looks sealed: a caller id of "enc1:..." is a caller's
        # input, and kept as it came it would make every read of the table fail.
        return keys.seal(value, self.where)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        """Open on the way out."""
        if value is None or not str(value).startswith(PREFIX):
            return value  # type: ignore[no-any-return]
        keys = _INSTALLED.get(dialect)
        if keys is None:
            raise FieldKeyError(f"{self.where} is encrypted; this process has no master key")
        return keys.open(str(value), self.where)


def sealed_columns() -> list[tuple[Any, Any, Any]]:
    """(table, primary key column, sealed column) of every sealed column."""
    from ivr.store.models import Base

    out = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, Sealed):
                out.append((table, next(iter(table.primary_key.columns)), column))
    return out


def seal_existing(engine: Engine, batch: int = 500) -> int:
    """Seal values stored in clear before encryption was on (and fill missing blind indexes);
    how many values were sealed. Idempotent; rows are rewritten in small transactions."""
    from ivr import phone
    from ivr.store.models import AccountRow

    keys = keys_for(engine)
    if keys is None:
        return 0
    done = 0
    rewritten: set[str] = set()
    for table, key_column, column in sealed_columns():
        raw = column.table.c[column.name]
        while True:
            with engine.begin() as connection:
                # Read the stored text itself (not through the type: that would open it).
                rows = connection.execute(
                    select(key_column, raw.cast(Text)).where(
                        raw.is_not(None), ~raw.cast(Text).startswith(PREFIX)).limit(batch)).all()
                for row_id, value in rows:
                    connection.execute(update(table).where(key_column == row_id)
                                       .values({column.name: value}))
            done += len(rows)
            if rows:
                rewritten.add(column.table.name)
            if len(rows) < batch:
                break
    with engine.begin() as connection:
        missing = connection.execute(select(AccountRow.id, AccountRow.phone_number).where(
            AccountRow.phone_index.is_(None))).all()
        for account_id, number in missing:
            connection.execute(update(AccountRow).where(AccountRow.id == account_id).values(
                phone_index=keys.index("phone", phone.canonical(number))))
    if rewritten and engine.dialect.name == "postgresql":
        # An UPDATE leaves the old row, in clear, in the table's pages until it is vacuumed;
        # rewrite the tables now (once, at the upgrade) so the clear values leave the disk.
        # (Backups and WAL archives taken before keep them: they are the operator's to
        # expire.)
        with engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            for name in sorted(rewritten):
                autocommit.exec_driver_sql(f'VACUUM (FULL) "{name}"')
    return done


def rotate_master(engine: Engine, masters: Sequence[MasterKey], new: MasterKey
                  ) -> dict[str, int]:
    """Re-wrap every data key, voiceprint template and retained recording under ``new``, in
    one transaction; ``masters`` are the keys they may be wrapped under now. Values and
    templates themselves are not touched, so processes running meanwhile go on (their data
    keys are open in memory, and they accept the previous key while it is configured)."""
    from ivr.store.models import DataKeyRow
    from voiceprint.store import RecordingRow, TemplateRow
    from voiceprint.templates import SealedAudio, SealedTemplate, rewrap_audio, rewrap_template

    known = {m.key_id: m for m in (*masters, new)}

    def old_key(key_id: str, what: str) -> MasterKey:
        if key_id not in known:
            raise FieldKeyError(f"{what} is wrapped by master key {key_id}, which is not "
                                "configured: add it as a previous master key")
        return known[key_id]

    counts = {"data_keys": 0, "templates": 0, "recordings": 0}
    with engine.begin() as connection:
        for row in connection.execute(select(DataKeyRow)).all():
            if row.master_id == new.key_id:
                continue
            key = unwrap(old_key(row.master_id, f"data key {row.id}"), row.id, row.purpose,
                         row.nonce, row.wrapped)
            nonce, wrapped = wrap(new, row.id, row.purpose, key)
            connection.execute(update(DataKeyRow).where(DataKeyRow.id == row.id).values(
                nonce=nonce, wrapped=wrapped, master_id=new.key_id))
            counts["data_keys"] += 1
        for t in connection.execute(select(TemplateRow).where(
                TemplateRow.key_id != new.key_id)).all():
            sealed = rewrap_template(
                SealedTemplate(t.ciphertext, t.nonce, t.wrapped_key, t.key_nonce, t.key_id,
                               t.version), t.id, t.account_id,
                old_key(t.key_id, f"template {t.id}"), new)
            connection.execute(update(TemplateRow).where(TemplateRow.id == t.id).values(
                wrapped_key=sealed.wrapped_key, key_nonce=sealed.key_nonce,
                key_id=sealed.key_id))
            counts["templates"] += 1
        for r in connection.execute(select(RecordingRow).where(
                RecordingRow.key_id != new.key_id)).all():
            audio = rewrap_audio(
                SealedAudio(r.ciphertext, r.nonce, r.wrapped_key, r.key_nonce, r.key_id,
                            r.version, r.expires_at if r.expires_at.tzinfo
                            else r.expires_at.replace(tzinfo=UTC)), r.id, r.account_id,
                old_key(r.key_id, f"recording {r.id}"), new)
            connection.execute(update(RecordingRow).where(RecordingRow.id == r.id).values(
                wrapped_key=audio.wrapped_key, key_nonce=audio.key_nonce, key_id=audio.key_id))
            counts["recordings"] += 1
    return counts
