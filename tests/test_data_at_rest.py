"""Personal data at rest: sealed columns, the blind index, key rotation without downtime, and
the retention job — on real SQLite files, read back byte for byte."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from ivr.settings import Settings
from ivr.store import crypto
from ivr.store.crypto import FieldKeyError, FieldKeys
from ivr.store.db import make_engine, migrate
from ivr.store.opening import open_store, purge_once
from ivr.store.repository import Store
from ivr.verification.codes import AccountDirectory, OutboxSender
from voiceprint.templates import MasterKey, open_template

from conftest import sql

pytestmark = pytest.mark.unit
OLD, NEW = MasterKey(b"\x01" * 32), MasterKey(b"\x02" * 32)


@pytest.fixture
def on_disk(request: pytest.FixtureRequest, database_url: str) -> Callable[[], bytes]:
    """The bytes of the test's database as stored on disk: SQLite's file and WAL, or on
    PostgreSQL the database's own folder after a CHECKPOINT (the server's WAL is shared by
    every test database, so it is not read)."""
    engine = make_engine(database_url)

    def read() -> bytes:
        if engine.dialect.name == "sqlite":
            path = Path(str(engine.url.database))
            return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        server = request.getfixturevalue("postgres")
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("CHECKPOINT"))
            oid = connection.execute(text(
                "SELECT oid FROM pg_database WHERE datname = current_database()")).scalar()
        return b"".join(p.read_bytes() for p in (server.data / "base" / str(oid)).iterdir()
                        if p.is_file())

    return read


def _sealed_store(url: str, master: MasterKey = OLD,
                  previous: tuple[MasterKey, ...] = ()) -> Store:
    engine = make_engine(url)
    migrate(engine)
    crypto.install(engine, FieldKeys(engine, master, previous))
    return Store(engine)


def _call(store: Store, number: str = "+8613800210000") -> str:
    call = store.create_call(channel_id="ch-1", caller_number=number,
                             dialed_number="4008101111", sip_call_id="sip-1", region="east")
    store.add_transcript(call.id, speaker="caller", start_s=0.1, end_s=1.2,
                         text="我的账单不对 my bill is wrong", language="zh", confidence=0.9,
                         model="tiny", intent=None, intent_confidence=None,
                         dropped_reason=None)
    store.add_callback(call.id, "+8602112345600", "east", "no_agents")
    return call.id


def test_numbers_and_transcripts_are_sealed_on_disk(database_url: str,
                                                    on_disk: Callable[[], bytes]) -> None:
    store = _sealed_store(database_url)
    call_id = _call(store)
    accounts = AccountDirectory(store.engine)
    accounts.add("acct-1", "13800210000")
    OutboxSender(store.engine).send("acct-1", "+8613800210000", "Your code is 123456.")
    # Read back in clear through the store...
    call = store.get_call(call_id)
    assert call is not None and call.caller_number == "+8613800210000"
    assert call.callback_number == "+8602112345600"
    assert store.transcript(call_id)[0].text == "我的账单不对 my bill is wrong"
    assert accounts.find_by_number("+86 138 0021 0000") == accounts.get("acct-1")
    # ...while the files hold none of it.
    stored = on_disk()
    assert b"voiceprint_audit" in stored or len(stored) > 8192  # the reader sees the data
    for clear in ("13800210000", "12345600", "账单".encode().decode(), "my bill", "123456"):
        assert clear.encode() not in stored, clear
    assert sql(database_url, "SELECT caller_number FROM calls")[0][0].startswith("enc1:")


def test_input_that_looks_sealed_is_sealed_too(database_url: str) -> None:
    store = _sealed_store(database_url)
    call_id = _call(store, "enc1:1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")  # a hostile caller id
    call = store.get_call(call_id)
    assert call is not None and call.caller_number == "enc1:1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    assert len(store.list_calls()) == 1  # the table still reads


def test_a_sealed_value_does_not_open_elsewhere_or_altered(database_url: str) -> None:
    store = _sealed_store(database_url)
    call_id = _call(store)
    with store.engine.begin() as connection:
        # The callback number's ciphertext copied into the caller number: refused by name.
        connection.execute(text("UPDATE calls SET caller_number = callback_number"))
    with pytest.raises(FieldKeyError, match="calls.caller_number"):
        store.get_call(call_id)
    with store.engine.begin() as connection:
        sealed = connection.execute(text("SELECT text FROM transcripts")).scalar_one()
        flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
        connection.execute(text("UPDATE transcripts SET text = :t"), {"t": flipped})
    with pytest.raises(FieldKeyError):
        store.transcript(call_id)
    # A process without the master key cannot read what is sealed (and says why).
    bare = Store(make_engine(database_url))
    with pytest.raises(FieldKeyError, match="no master key"):
        bare.list_calls()
    # Over the API that is a 503 naming the cause, not an internal error.
    from fastapi.testclient import TestClient

    from ivr.api.app import ApiServices, create_app
    from ivr.auth.tokens import TokenStore
    from ivr.health import Readiness

    tokens = TokenStore(bare.engine)
    token, _ = tokens.create("admin", "a")
    answer = TestClient(create_app(ApiServices(Readiness(), bare, tokens=tokens))).get(
        "/api/v1/calls", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 503 and "no master key" in answer.json()["message"]


def test_values_stored_in_clear_before_are_sealed_at_start(
        tmp_path: Path, database_url: str, on_disk: Callable[[], bytes]) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url,
                        voiceprint={"master_key": "ab" * 32})
    clear = open_store(settings, seal=False)
    call_id = _call(clear)
    AccountDirectory(clear.engine).add("acct-1", "13800210000")
    assert b"13800210000" in on_disk()
    sealed = open_store(settings)  # what `ivr serve` does at start
    if sealed.engine.dialect.name == "sqlite":
        with sealed.engine.connect() as connection:
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    call = sealed.get_call(call_id)
    assert call is not None and call.caller_number == "+8613800210000"
    assert AccountDirectory(sealed.engine).find_by_number("13800210000") is not None
    values = [v for row in sql(database_url,
                               "SELECT caller_number, callback_number FROM calls UNION ALL "
                               "SELECT phone_number, phone_index FROM accounts") for v in row]
    assert values and all(v.startswith("enc1:") or len(v) == 40 for v in values), values
    # Not only the rows: the clear values have left the database's files too.
    stored = on_disk()
    for number in (b"13800210000", b"12345600"):
        assert number not in stored, number
    assert crypto.seal_existing(sealed.engine) == 0  # nothing left to seal

def test_new_data_key_and_master_rotation_without_downtime(database_url: str) -> None:
    store = _sealed_store(database_url, OLD)
    first = _call(store, "+8613800210001")
    running = crypto.keys_for(store.engine)
    assert running is not None
    # A new data key: new values use it, old ones still open.
    new_id = running.new_data_key()
    second = _call(store, "+8613800210002")
    with store.engine.connect() as connection:
        stored = connection.execute(text("SELECT caller_number FROM calls WHERE id = :i"),
                                    {"i": second}).scalar_one()
    assert stored.startswith(f"enc1:{new_id}:")
    # A voiceprint template sealed under the old master key.
    from voiceprint.service import VoiceprintService
    from voiceprint.store import TemplateRow
    from voiceprint.templates import SealedTemplate, seal

    template = seal(np.ones(8, dtype=np.float32), "t-1", "acct-1", OLD)
    with store.engine.begin() as connection:
        connection.execute(TemplateRow.__table__.insert().values(
            id="t-1", account_id="acct-1", ciphertext=template.ciphertext,
            nonce=template.nonce, wrapped_key=template.wrapped_key,
            key_nonce=template.key_nonce, key_id=template.key_id, version=template.version,
            model_id="dvector", model_version="v", created_at=datetime.now(UTC)))
    # Step 1: processes restart with NEW as the master and OLD as the previous key.
    restarted = _sealed_store(database_url, NEW, (OLD,))
    assert restarted.get_call(first) is not None
    # Step 2: re-wrap everything under NEW while the old process keeps going.
    counts = crypto.rotate_master(restarted.engine, [OLD], NEW)
    assert counts == {"data_keys": 3, "templates": 1, "recordings": 0}
    third = _call(store, "+8613800210003")  # the process started before: still writes...
    got = store.get_call(first)
    assert got is not None and got.caller_number == "+8613800210001"  # ...and reads
    # Step 3: the previous key is dropped; NEW alone opens every value and the template.
    only_new = _sealed_store(database_url, NEW)
    assert [only_new.get_call(c).caller_number for c in (first, second, third)  # type: ignore[union-attr]
            ] == ["+8613800210001", "+8613800210002", "+8613800210003"]
    with only_new.engine.connect() as connection:
        row = connection.execute(TemplateRow.__table__.select()).one()
    opened = open_template(SealedTemplate(row.ciphertext, row.nonce, row.wrapped_key,
                                          row.key_nonce, row.key_id, row.version),
                           "t-1", "acct-1", NEW)
    assert np.allclose(opened, 1.0)
    service = VoiceprintService(only_new.engine, None, NEW)
    assert service.reenroll_reason(row) is None  # type: ignore[arg-type]
    # The old key alone no longer opens the data keys.
    with pytest.raises(FieldKeyError, match="not configured"):
        _sealed_store(database_url, OLD)


def test_rotation_through_the_cli(tmp_path: Path) -> None:
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    for path, key in ((old_file, OLD), (new_file, NEW)):
        path.write_text(key.key.hex())
        path.chmod(0o600)
    env = {"IVR_DATA_DIR": str(tmp_path / "var"), "IVR_VOICEPRINT__MASTER_KEY_FILE": str(old_file),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def ivr(*args: str, **more: str) -> str:
        done = subprocess.run([sys.executable, "-m", "ivr.cli", *args], env={**env, **more},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    ivr("account", "add", "--id", "acct-1", "--phone", "13800210000")
    assert '"wrapped_by": "' + OLD.key_id in ivr("keys", "status")
    rotated = ivr("keys", "rotate", "--new-key-file", str(new_file),
                  IVR_VOICEPRINT__MASTER_KEY_FILE=str(new_file),
                  IVR_VOICEPRINT__PREVIOUS_MASTER_KEY_FILES=f'["{old_file}"]')
    assert f'"rewrapped_under": "{NEW.key_id}"' in rotated and '"data_keys": 2' in rotated
    status = ivr("keys", "status", IVR_VOICEPRINT__MASTER_KEY_FILE=str(new_file))
    assert OLD.key_id not in status and status.count(NEW.key_id) == 2


def test_retention_purges_old_calls_and_transcripts_and_records_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, voiceprint={"master_key": "ab" * 32},
                        privacy={"retain_calls_days": 30, "retain_transcripts_days": 7})
    store = open_store(settings)
    now = datetime.now(UTC)
    old_call, recent_call, live_call = _call(store), _call(store), _call(store)
    store.update_call(old_call, ended_at=now - timedelta(days=31))
    store.update_call(recent_call, ended_at=now - timedelta(days=8))
    with store.engine.begin() as connection:  # transcripts of the recent call: 8 days old
        connection.execute(text("UPDATE transcripts SET created_at = :t WHERE call_id = :c"),
                           {"t": now - timedelta(days=8), "c": recent_call})
    done = purge_once(settings, store)
    assert done == {"calls": 1, "transcripts": 1}
    assert store.get_call(old_call) is None and store.callbacks(old_call) == []
    assert store.get_call(recent_call) is not None and store.transcript(recent_call) == []
    assert store.get_call(live_call) is not None and len(store.transcript(live_call)) == 1
    purges = store.purges()
    assert [(p.kind, p.count) for p in purges] == [("transcripts", 1), ("calls", 1)]
    assert purge_once(settings, store) == {"calls": 0, "transcripts": 0}
    # Retained voice recordings go at the expiry sealed into them, recorded the same way.
    from voiceprint.service import VoiceprintService
    from voiceprint.store import RecordingRow
    from voiceprint.templates import seal_audio

    key = MasterKey(bytes.fromhex("ab" * 32))
    for name, expires in (("old", now - timedelta(hours=1)), ("new", now + timedelta(days=1))):
        audio = seal_audio(b"\x00\x01" * 800, name, "acct-1", expires, key)
        with store.engine.begin() as connection:
            connection.execute(RecordingRow.__table__.insert().values(
                id=name, account_id="acct-1", source="attempt", ciphertext=audio.ciphertext,
                nonce=audio.nonce, wrapped_key=audio.wrapped_key, key_nonce=audio.key_nonce,
                key_id=audio.key_id, version=audio.version, expires_at=expires,
                created_at=now))
    voice = VoiceprintService(store.engine, None, key)
    assert purge_once(settings, store, voice)["recordings"] == 1
    assert store.purges()[0].kind == "recordings" and store.purges()[0].count == 1
