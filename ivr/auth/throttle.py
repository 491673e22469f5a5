"""Throttles kept in the database, so that they hold across processes and restarts.

A throttle counts events of a key (``auth:<source>``, ``code:<account>``...) in fixed windows
of ``window_s`` seconds: the count is one upsert that returns the new value, so two processes
counting at once never lose a hit. Keys are hashed before they are stored: a source address or
an account id is not written in clear for the sake of a counter.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from ivr.store.models import RateLimitRow

# Windows older than this are deleted now and then (no throttle here is longer than a day).
KEEP_S = 2 * 86_400


class Limited(Exception):
    """Over a throttle's limit: try again in ``retry_after_s`` seconds."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(f"too many {what}; try again in {retry_after_s} s")
        self.what = what
        self.retry_after_s = retry_after_s


class Throttle:
    """Fixed-window counters on the service's database."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql"
                        else sqlite.insert)
        self._last_purge = 0.0

    @staticmethod
    def stored_key(key: str) -> str:
        """What is kept for ``key``: its kind in clear, the rest as a digest."""
        kind, _, rest = key.partition(":")
        return f"{kind[:24]}:{hashlib.sha256(rest.encode()).hexdigest()[:40]}"

    def _window(self, window_s: int) -> tuple[int, int]:
        now = self.clock()
        start = int(now // window_s * window_s)
        return start, max(1, math.ceil(start + window_s - now))

    def hit(self, key: str, window_s: int) -> tuple[int, int]:
        """Count one event of ``key``: (the window's count so far, seconds until it ends)."""
        start, left = self._window(window_s)
        stored = self.stored_key(key)
        upsert = self._insert(RateLimitRow).values(key=stored, window_start=start, count=1)
        statement = upsert.on_conflict_do_update(
            index_elements=["key", "window_start"],
            set_={"count": RateLimitRow.count + 1}).returning(RateLimitRow.count)
        with self.engine.begin() as connection:
            count = int(connection.execute(statement).scalar_one())
            if self.clock() - self._last_purge > 3600:
                self._last_purge = self.clock()
                connection.execute(delete(RateLimitRow).where(
                    RateLimitRow.window_start < int(self.clock()) - KEEP_S))
        return count, left

    def count(self, key: str, window_s: int) -> tuple[int, int]:
        """The window's count of ``key`` without counting (and seconds until it ends)."""
        start, left = self._window(window_s)
        with self.engine.connect() as connection:
            found = connection.execute(select(RateLimitRow.count).where(
                RateLimitRow.key == self.stored_key(key),
                RateLimitRow.window_start == start)).scalar()
        return int(found or 0), left

    def take(self, key: str, limit: int, window_s: int, what: str) -> None:
        """Count one event; :class:`Limited` if that makes more than ``limit`` in the window
        (refused events count too: hammering does not reopen it early)."""
        count, left = self.hit(key, window_s)
        if count > limit:
            raise Limited(what, left)


class FailureThrottle:
    """Failed authentication per source: counted in the database, refused here.

    A source over ``limit`` failures in a window is refused (429) for the rest of the window
    without its token being looked at, so that guessing stops being answered. The "refused
    until" of each source is also kept in memory: a blocked source costs no database read, and
    a good token costs nothing extra. Another process learns of the block at the source's next
    failure there (the counter is shared), so a source gets at most one more try per process.
    """

    def __init__(self, throttle: Throttle, limit: int, window_s: int) -> None:
        self.throttle = throttle
        self.limit = limit
        self.window_s = window_s
        self._blocked: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, source: str) -> None:
        """:class:`Limited` while ``source`` is refused."""
        with self._lock:
            until = self._blocked.get(source)
            now = self.throttle.clock()
            if until is None:
                return
            if until <= now:
                del self._blocked[source]
                return
        raise Limited("failed authentications from this address", max(1, math.ceil(until - now)))

    def failed(self, source: str) -> None:
        """Count a failure of ``source``; :class:`Limited` once it is over the limit."""
        count, left = self.throttle.hit(f"auth:{source}", self.window_s)
        if count > self.limit:
            with self._lock:
                if len(self._blocked) > 100_000:  # a flood of sources: keep the newest only
                    self._blocked.clear()
                self._blocked[source] = self.throttle.clock() + left
            raise Limited("failed authentications from this address", left)
