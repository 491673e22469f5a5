"""The tamper-evident voiceprint decision log: a SHA-256 hash chain, independent of storage.

Each record's ``hash`` is ``sha256(prev_hash + canonical)`` where ``canonical`` is the record
without ``hash`` as JSON with sorted keys, no whitespace and ISO-8601 UTC times; the first
record's ``prev_hash`` is 64 zeros. Changing, deleting, inserting or reordering records breaks
the chain at the first affected record. A chain alone cannot reveal records cut off its end, or
a chain rewritten from the start by someone who knows the scheme: keep the latest ``hash``
somewhere the database writer cannot change (a ticket, a daily report) and compare.

Records are never edited: a reviewer's note is a new record of kind ``note`` whose
``refers_to_seq`` names the record it comments on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Final

from voiceprint.errors import AuditChainError

GENESIS_HASH: Final = "0" * 64
KNOWN_KINDS: Final = frozenset({"decision", "note", "lockout", "enrollment", "deletion",
                                "challenge"})
# A masked caller may show at most this many digits (e.g. the last two).
_MAX_VISIBLE_DIGITS: Final = 4

JsonMapping = Mapping[str, Any]


def mask_caller(number: str) -> str:
    """Mask a caller number for the log: every digit but the last two becomes ``*``."""
    digits = [i for i, ch in enumerate(number) if ch.isdigit()]
    keep = set(digits[-2:])
    return "".join("*" if ch.isdigit() and i not in keep else ch for i, ch in enumerate(number))


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise AuditChainError("audit record times must be timezone-aware")
    return at.astimezone(UTC)


@dataclass(frozen=True)
class AuditEntry:
    """What the caller supplies for one record; the chain adds ``seq``, ``at`` and hashes."""

    kind: str
    call_id: str | None = None
    account_id: str | None = None
    masked_caller: str | None = None
    tier_results: JsonMapping = field(default_factory=dict)
    challenge_expected: str | None = None
    challenge_heard: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    threshold: JsonMapping = field(default_factory=dict)
    raw_score: float | None = None
    norm_score: float | None = None
    decision: str | None = None
    replay: bool = False
    audio_sha256: str | None = None
    note: str | None = None
    reviewer: str | None = None
    refers_to_seq: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KNOWN_KINDS:
            raise AuditChainError(f"unknown audit record kind {self.kind!r}")
        if self.masked_caller is not None and (
            len(re.findall(r"\d", self.masked_caller)) > _MAX_VISIBLE_DIGITS
        ):
            raise AuditChainError("masked_caller shows too many digits; use mask_caller()")
        if self.kind == "note" and (self.refers_to_seq is None or not self.reviewer):
            raise AuditChainError("a note needs refers_to_seq and reviewer")


@dataclass(frozen=True)
class DecisionRecord:
    """One record of the decision log as stored; see the module docstring for the hash."""

    seq: int
    at: datetime
    kind: str
    call_id: str | None
    account_id: str | None
    masked_caller: str | None
    tier_results: JsonMapping
    challenge_expected: str | None
    challenge_heard: str | None
    model_id: str | None
    model_version: str | None
    threshold: JsonMapping
    raw_score: float | None
    norm_score: float | None
    decision: str | None
    replay: bool
    audio_sha256: str | None
    note: str | None
    reviewer: str | None
    refers_to_seq: int | None
    prev_hash: str
    hash: str

    def canonical(self) -> str:
        """The hashed form: every field but ``hash`` as compact sorted-key JSON."""
        return canonical_json(self)

    def computed_hash(self) -> str:
        """The hash this record should carry given its content and ``prev_hash``."""
        return chain_hash(self.prev_hash, self.canonical())

    def as_dict(self) -> dict[str, Any]:
        """All fields, times as ISO-8601 UTC strings (for CSV and JSON export)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["at"] = _utc(self.at).isoformat(timespec="microseconds")
        out["tier_results"] = dict(self.tier_results)
        out["threshold"] = dict(self.threshold)
        return out


def canonical_json(record: DecisionRecord) -> str:
    """Sorted keys, no whitespace, ISO times; excludes ``hash``."""
    body = record.as_dict()
    del body["hash"]
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuditChainError(f"audit record {record.seq} is not plain JSON data: {exc}") from exc


def chain_hash(prev_hash: str, canonical: str) -> str:
    """``sha256(prev_hash + canonical)`` as hex."""
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def _plain(values: JsonMapping, name: str) -> dict[str, Any]:
    # Round-trip through JSON so the in-memory record equals what storage gives back.
    try:
        plain: dict[str, Any] = json.loads(json.dumps(dict(values), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise AuditChainError(f"audit field {name} is not plain JSON data: {exc}") from exc
    return plain


def make_record(entry: AuditEntry, seq: int, at: datetime, prev_hash: str) -> DecisionRecord:
    """The record that follows ``prev_hash`` at position ``seq``, with its hash computed."""
    content = {f.name: getattr(entry, f.name) for f in fields(entry)}
    content["tier_results"] = _plain(entry.tier_results, "tier_results")
    content["threshold"] = _plain(entry.threshold, "threshold")
    draft = DecisionRecord(seq=seq, at=_utc(at), prev_hash=prev_hash, hash="", **content)
    return replace(draft, hash=draft.computed_hash())


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking a chain; ``first_broken_seq`` is the stored seq of the bad record."""

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None


def verify(records: Iterable[DecisionRecord]) -> VerifyResult:
    """Check a whole chain, in stored order, from its first record."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    for record in records:
        problem: str | None = None
        if record.seq != expected_seq:
            if record.seq < expected_seq:
                problem = f"seq {record.seq} repeats or goes back (expected {expected_seq})"
            else:
                problem = f"seq gap: expected {expected_seq}, found {record.seq}"
        elif record.prev_hash != prev_hash:
            problem = "prev_hash does not match the previous record's hash"
        elif record.computed_hash() != record.hash:
            problem = "hash does not match the record's content"
        if problem is not None:
            return VerifyResult(False, checked, record.seq, problem)
        checked += 1
        expected_seq += 1
        prev_hash = record.hash
    return VerifyResult(True, checked)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditChain:
    """An in-memory chain head: appends records after ``last`` (None for an empty log)."""

    def __init__(self, last: DecisionRecord | None = None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._last = last
        self._clock = clock

    @property
    def last(self) -> DecisionRecord | None:
        """The newest record, or None before the first append."""
        return self._last

    def append(self, entry: AuditEntry) -> DecisionRecord:
        """Create the next record for ``entry`` and make it the new head."""
        record = next_record(self._last, entry, self._clock())
        self._last = record
        return record

    @staticmethod
    def verify(records: Iterable[DecisionRecord]) -> VerifyResult:
        """See ``verify``."""
        return verify(records)


def next_record(last: DecisionRecord | None, entry: AuditEntry, at: datetime) -> DecisionRecord:
    """The record that follows ``last`` (or the genesis record when ``last`` is None)."""
    if last is None:
        return make_record(entry, 1, at, GENESIS_HASH)
    return make_record(entry, last.seq + 1, at, last.hash)
