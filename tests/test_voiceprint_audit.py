"""The decision log: hash chain, tampering found in a real SQLite file, CSV export, notes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ivr.store.db import make_engine
from voiceprint.audit import (
    GENESIS_HASH,
    AuditChain,
    AuditEntry,
    DecisionRecord,
    chain_hash,
    mask_caller,
    verify,
)
from voiceprint.audit_store import AuditStore
from voiceprint.errors import AuditChainError

from conftest import sql

pytestmark = pytest.mark.unit

CALLER = "+4915112345678"
COUNT = 30


class Clock:
    """A fake clock that ticks 1.5 s per reading."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1.5)
        return self.now


def decision(i: int) -> AuditEntry:
    return AuditEntry(
        kind="decision", call_id=f"call-{i}", account_id=f"acct-{i % 3}",
        masked_caller=mask_caller(CALLER),
        tier_results={"voice": {"score": 0.1 * i, "passed": i % 2 == 0}, "pin": True},
        challenge_expected="3 8 1 9", challenge_heard="3 8 1 9" if i % 4 else "3 8 7 9",
        model_id="ecapa-tiny", model_version="1.0", threshold={"accept": 0.62, "reject": 0.4},
        raw_score=0.731 + i / 1000, norm_score=2.5 - i / 7,
        decision="accept" if i % 2 else "reject",
        replay=i == 7, audio_sha256="ab" * 32,
    )


@pytest.fixture
def db(database_url: str) -> Iterator[tuple[AuditStore, str]]:
    engine = make_engine(database_url)
    store = AuditStore(engine, clock=Clock())
    store.create_schema()
    for i in range(1, COUNT + 1):
        store.append(decision(i))
    yield store, database_url
    engine.dispose()


def raw_sql(url: str, *statements: str) -> None:
    """What someone with write access to the database does behind the service's back."""
    for statement in statements:
        sql(url, statement)


def test_appended_records_verify_and_read_back_exactly(db: tuple[AuditStore, str]) -> None:
    store, _ = db
    records = store.records()
    assert [r.seq for r in records] == list(range(1, COUNT + 1))
    assert records[0].prev_hash == GENESIS_HASH
    assert records[1].prev_hash == records[0].hash
    assert records[4].hash == chain_hash(records[4].prev_hash, records[4].canonical())
    assert records[0].at.tzinfo is not None
    assert store.verify() == verify(records)
    result = store.verify()
    assert result.ok and result.checked == COUNT and result.first_broken_seq is None


def test_canonical_form_is_sorted_compact_and_excludes_the_hash(
    db: tuple[AuditStore, str],
) -> None:
    record = db[0].records(limit=1)[0]
    text = record.canonical()
    assert " " not in text.replace("3 8 1 9", "").replace("3 8 7 9", "")
    assert '"hash"' not in text and '"prev_hash":"' + GENESIS_HASH in text
    assert '"at":"2024-05-01T09:00:01.623456+00:00"' in text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize(
    ("statements", "broken", "checked", "reason"),
    [
        (["UPDATE voiceprint_audit SET decision = 'accept' WHERE seq = 12"], 12, 11, "hash"),
        (["UPDATE voiceprint_audit SET raw_score = 0.99 WHERE seq = 3"], 3, 2, "hash"),
        (["UPDATE voiceprint_audit SET replay = false WHERE seq = 7"], 7, 6, "hash"),
        (["DELETE FROM voiceprint_audit WHERE seq = 9"], 10, 8, "seq gap"),
        (["DELETE FROM voiceprint_audit WHERE seq = 1"], 2, 0, "seq gap"),
        # Swap the content of two rows (order) by exchanging their seq numbers.
        (["UPDATE voiceprint_audit SET seq = -1 WHERE seq = 15",
          "UPDATE voiceprint_audit SET seq = 15 WHERE seq = 16",
          "UPDATE voiceprint_audit SET seq = 16 WHERE seq = -1"], 15, 14, "hash"),
        # Delete a row and renumber the rest so no gap shows: prev_hash gives it away.
        (["DELETE FROM voiceprint_audit WHERE seq = 20",
          *[f"UPDATE voiceprint_audit SET seq = {s - 1} WHERE seq = {s}"
            for s in range(21, COUNT + 1)]], 20, 19, "prev_hash"),
    ],
)
def test_tampering_in_the_database_names_the_first_broken_record(
    db: tuple[AuditStore, str], statements: list[str], broken: int, checked: int, reason: str
) -> None:
    store, path = db
    raw_sql(path, *statements)
    result = store.verify()
    assert not result.ok
    assert result.first_broken_seq == broken
    assert result.reason is not None and reason in result.reason
    assert result.checked == checked


def test_a_forged_row_is_found_even_with_a_correct_hash(db: tuple[AuditStore, str]) -> None:
    store, path = db
    genuine = store.records()
    # The forger builds a well-formed record claiming to follow record 5 and appends it.
    forged = dataclasses.replace(genuine[5], seq=COUNT + 1, prev_hash=genuine[4].hash,
                                 decision="accept", call_id="call-forged")
    forged = dataclasses.replace(forged, hash=forged.computed_hash())
    cols = ("seq", "at", "kind", "call_id", "account_id", "masked_caller", "tier_results",
            "threshold", "decision", "replay", "prev_hash", "hash")
    values = (forged.seq, "2024-05-01 10:00:00.000000", "decision", forged.call_id,
              forged.account_id, forged.masked_caller, "{}", "{}", "accept", False,
              forged.prev_hash, forged.hash)
    sql(path, f"INSERT INTO voiceprint_audit ({', '.join(cols)}) "
              f"VALUES ({', '.join(':' + c for c in cols)})",
        **dict(zip(cols, values, strict=True)))
    result = store.verify()
    assert (result.ok, result.first_broken_seq, result.checked) == (False, COUNT + 1, COUNT)
    assert "prev_hash" in (result.reason or "")


def test_verify_on_records_finds_insertion_duplicates_and_reordering() -> None:
    chain = AuditChain(clock=Clock())
    records = [chain.append(decision(i)) for i in range(1, 8)]
    assert verify(records).ok
    assert chain.last == records[-1]
    moved = [records[0], records[2], records[1], *records[3:]]
    assert (verify(moved).first_broken_seq, verify(moved).reason) == (
        3, "seq gap: expected 2, found 3")
    duplicate = [*records[:4], records[3], *records[4:]]
    result = verify(duplicate)
    assert result.first_broken_seq == 4 and "repeats" in (result.reason or "")
    fake = AuditChain(records[2], clock=Clock()).append(decision(99))  # a second seq 4
    inserted = [*records[:3], fake, *records[3:]]
    assert verify(inserted).first_broken_seq == 4
    assert verify(inserted).checked == 4 and "repeats" in (verify(inserted).reason or "")
    assert verify([]).ok


def test_csv_export_has_a_header_and_only_masked_callers(db: tuple[AuditStore, str]) -> None:
    store, _ = db
    store.add_note(3, reviewer="=cmd|' /C calc'!A0", note="-2+3 checked by phone")
    text = store.to_csv(store.records(account_id="acct-0"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [f.name for f in dataclasses.fields(DecisionRecord)]
    assert len(rows) == COUNT // 3 + 1
    assert CALLER not in text and CALLER[1:] not in text and "12345678" not in text
    # A leading "+" would start a spreadsheet formula, so the export quotes it.
    assert {r["masked_caller"] for r in rows[:-1]} == {"'+***********78"}
    assert rows[-1]["reviewer"].startswith("'=") and rows[-1]["note"].startswith("'-")
    assert rows[0]["tier_results"].startswith("{")


def test_unmasked_numbers_are_refused() -> None:
    with pytest.raises(AuditChainError, match="mask_caller"):
        AuditEntry(kind="decision", masked_caller=CALLER)
    assert mask_caller("0301234567") == "********67"


def test_notes_are_new_records_and_never_edits(db: tuple[AuditStore, str]) -> None:
    store, _ = db
    before = store.records(call_id="call-12")
    note = store.add_note(12, reviewer="analyst-2", note="false reject: caller had a cold")
    assert (note.kind, note.seq, note.refers_to_seq) == ("note", COUNT + 1, 12)
    assert note.call_id == "call-12" and note.account_id == "acct-0"
    after = store.records(call_id="call-12")
    assert after == [*before, note]
    assert store.verify().ok and store.verify().checked == COUNT + 1
    with pytest.raises(AuditChainError, match="no audit record 999"):
        store.add_note(999, reviewer="analyst-2", note="x")


def test_filters(db: tuple[AuditStore, str]) -> None:
    store, _ = db
    accepts = store.records(decision="accept")
    assert [r.seq for r in accepts] == list(range(1, COUNT + 1, 2))
    first = store.records(limit=1)[0].at
    window = store.records(since=first + timedelta(seconds=3), until=first + timedelta(seconds=9))
    assert [r.seq for r in window] == [3, 4, 5, 6]
    page = store.records(account_id="acct-1", limit=3, offset=2)
    assert [r.seq for r in page] == [7, 10, 13]
    with pytest.raises(ValueError, match="timezone-aware"):
        store.records(since=datetime(2024, 1, 1))
