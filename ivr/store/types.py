"""Column types shared by every table of the ``ivr`` store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def as_utc(moment: datetime) -> datetime:
    """``moment`` as aware UTC (a naive one is taken as UTC)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and always read back timezone-aware.

    SQLite keeps no offset (it returns naive values even for ``timezone=True``); PostgreSQL
    keeps ``timestamptz``. Either way callers write and read aware UTC datetimes; a naive value
    written is taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        """Aware UTC on the way in."""
        if value is None:
            return None
        return as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Aware UTC on the way out."""
        if value is None:
            return None
        return as_utc(value)
