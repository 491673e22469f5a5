"""SQL storage for the voiceprint decision log (table ``voiceprint_audit``), append-only.

``AuditStore`` only appends and reads; nothing here updates or deletes a row. In PostgreSQL,
run the application as a role that has only ``SELECT, INSERT`` on ``voiceprint_audit`` (no
``UPDATE``, ``DELETE`` or ``TRUNCATE``), so that even a compromised application cannot rewrite
history quietly; ``verify()`` finds what someone with more rights changed. The table has its
own ``DeclarativeBase``; ``create_schema()`` is for tests, production uses a migration.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Boolean, DateTime, Double, Engine, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from voiceprint.audit import (
    AuditEntry,
    DecisionRecord,
    VerifyResult,
    next_record,
    verify,
)
from voiceprint.errors import AuditChainError

_APPEND_ATTEMPTS: Final = 5
_CSV_COLUMNS: Final = tuple(f.name for f in fields(DecisionRecord))
# Spreadsheets run cells that start with these as formulas (CSV injection).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


class AuditBase(DeclarativeBase):
    """Metadata of the voiceprint audit table only."""


class AuditRow(AuditBase):
    """One stored ``DecisionRecord``; maps are stored as JSON text."""

    __tablename__ = "voiceprint_audit"

    # seq is the primary key: two writers that race for the same seq cannot fork the chain.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    call_id: Mapped[str | None] = mapped_column(String(128), index=True)
    account_id: Mapped[str | None] = mapped_column(String(128), index=True)
    masked_caller: Mapped[str | None] = mapped_column(String(64))
    tier_results: Mapped[str] = mapped_column(Text)
    challenge_expected: Mapped[str | None] = mapped_column(Text)
    challenge_heard: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(80))
    threshold: Mapped[str] = mapped_column(Text)
    raw_score: Mapped[float | None] = mapped_column(Double)
    norm_score: Mapped[float | None] = mapped_column(Double)
    decision: Mapped[str | None] = mapped_column(String(32), index=True)
    replay: Mapped[bool] = mapped_column(Boolean)
    audio_sha256: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(String(128))
    refers_to_seq: Mapped[int | None] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


def _to_row(record: DecisionRecord) -> AuditRow:
    values: dict[str, Any] = {f.name: getattr(record, f.name) for f in fields(record)}
    values["tier_results"] = json.dumps(dict(record.tier_results), sort_keys=True)
    values["threshold"] = json.dumps(dict(record.threshold), sort_keys=True)
    return AuditRow(**values)


def _to_record(row: AuditRow) -> DecisionRecord:
    values: dict[str, Any] = {name: getattr(row, name) for name in _CSV_COLUMNS}
    values["tier_results"] = json.loads(row.tier_results)
    values["threshold"] = json.loads(row.threshold)
    # SQLite drops the zone; everything is written in UTC.
    at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)
    values["at"] = at.astimezone(UTC)
    values["replay"] = bool(row.replay)
    return DecisionRecord(**values)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def records_to_csv(records: Iterable[DecisionRecord]) -> str:
    """CSV with a header row; callers appear only as stored, i.e. masked."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for record in records:
        row = record.as_dict()
        writer.writerow([_csv_cell(row[name]) for name in _CSV_COLUMNS])
    return out.getvalue()


class AuditStore:
    """Append and read the decision log in a SQL database."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._clock = clock

    def create_schema(self) -> None:
        """Create the table (tests; production runs the Alembic migration)."""
        AuditBase.metadata.create_all(self._engine)

    def append(self, entry: AuditEntry) -> DecisionRecord:
        """Append ``entry`` after the newest record and return the stored record."""
        for _ in range(_APPEND_ATTEMPTS):
            try:
                with Session(self._engine) as session, session.begin():
                    last_row = session.scalars(
                        select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)
                    ).first()
                    last = _to_record(last_row) if last_row is not None else None
                    record = next_record(last, entry, self._clock())
                    session.add(_to_row(record))
            except IntegrityError:
                continue  # another writer took this seq; chain onto its record instead
            return record
        raise AuditChainError(f"could not append to the audit log in {_APPEND_ATTEMPTS} tries")

    def add_note(self, refers_to_seq: int, reviewer: str, note: str) -> DecisionRecord:
        """Append a reviewer's note about record ``refers_to_seq`` (records are never edited)."""
        with Session(self._engine) as session:
            target = session.get(AuditRow, refers_to_seq)
            if target is None:
                raise AuditChainError(f"no audit record {refers_to_seq} to add a note to")
            call_id, account_id = target.call_id, target.account_id
        return self.append(AuditEntry(
            kind="note", call_id=call_id, account_id=account_id, note=note, reviewer=reviewer,
            refers_to_seq=refers_to_seq,
        ))

    def records(
        self,
        *,
        account_id: str | None = None,
        call_id: str | None = None,
        decision: str | None = None,
        kind: str | None = None,
        replay: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DecisionRecord]:
        """Records matching every given filter, oldest first; ``until`` is exclusive."""
        query = select(AuditRow).order_by(AuditRow.seq)
        if account_id is not None:
            query = query.where(AuditRow.account_id == account_id)
        if call_id is not None:
            query = query.where(AuditRow.call_id == call_id)
        if decision is not None:
            query = query.where(AuditRow.decision == decision)
        if kind is not None:
            query = query.where(AuditRow.kind == kind)
        if replay is not None:
            query = query.where(AuditRow.replay == replay)
        if since is not None:
            query = query.where(AuditRow.at >= _aware(since).astimezone(UTC))
        if until is not None:
            query = query.where(AuditRow.at < _aware(until).astimezone(UTC))
        query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with Session(self._engine) as session:
            return [_to_record(row) for row in session.scalars(query)]

    def _all(self) -> Iterator[DecisionRecord]:
        with Session(self._engine) as session:
            query = select(AuditRow).order_by(AuditRow.seq).execution_options(yield_per=1000)
            for row in session.scalars(query):
                yield _to_record(row)

    def verify(self) -> VerifyResult:
        """Check the whole stored chain."""
        return verify(self._all())

    @staticmethod
    def to_csv(records: Sequence[DecisionRecord]) -> str:
        """See ``records_to_csv``."""
        return records_to_csv(records)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit filter times must be timezone-aware")
    return at
