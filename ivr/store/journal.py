"""Call writes that survive a locked or unreachable database.

Every write of the call flow goes through :class:`CallJournal`. While the database takes
writes, each is done at once (in a worker thread) and the caller gets the stored result. When a
write fails because the database is locked or gone, the journal keeps it, and every later write,
in memory, in order, and retries them every ``retry_every_s`` until the database takes them
again; callers go on with their own view of the record (``None`` comes back) and the call flow
never stops for the database. Each kept write carries the time it happened, so the stored
history is the same as if the database had never been away.

Bound and drop policy: at most ``max_pending`` writes are kept (about an hour of a busy
hotline); beyond that the oldest is dropped with an error log naming it. Readiness check
``database`` is false while writes are kept, with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ivr.health import Readiness

log = logging.getLogger(__name__)

T = TypeVar("T")
# A database that cannot take writes now (locked, disk full, connection lost), as opposed to a
# write that is wrong (those raise to the caller as before).
UNAVAILABLE: tuple[type[BaseException], ...] = (OperationalError, PoolTimeout)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE) or (isinstance(exc, DBAPIError)
                                            and exc.connection_invalidated)


class CallJournal:
    """Ordered, retried writes of the call flow (see the module docstring)."""

    def __init__(self, readiness: Readiness | None = None, retry_every_s: float = 1.0,
                 max_pending: int = 100_000) -> None:
        self.readiness = readiness
        self.retry_every_s = retry_every_s
        self._pending: deque[tuple[str, Callable[[], Any]]] = deque(maxlen=max_pending)
        self._flusher: asyncio.Task[None] | None = None
        self.kept_total = 0
        self.dropped_total = 0

    @property
    def pending(self) -> int:
        """Writes waiting for the database."""
        return len(self._pending)

    async def write(self, what: str, write: Callable[[], T]) -> T | None:
        """Do ``write`` now, or keep it for later (then None) if the database is unavailable."""
        if not self._pending:
            try:
                return await asyncio.to_thread(write)
            except Exception as exc:
                if not _unavailable(exc):
                    raise
                self._degrade(exc)
        self._keep(what, write)
        return None

    def _keep(self, what: str, write: Callable[[], Any]) -> None:
        if len(self._pending) == self._pending.maxlen:
            dropped, _ = self._pending[0]
            self.dropped_total += 1
            log.error("call journal full; oldest write dropped", extra={"write": dropped})
        self._pending.append((what, write))
        self.kept_total += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="call-journal-flush")

    def _degrade(self, exc: BaseException) -> None:
        reason = f"database cannot be written: {str(exc.__cause__ or exc)[:200]}"
        log.warning("database unavailable; keeping call writes", extra={"error": reason})
        if self.readiness is not None:
            self.readiness.set("database", False, reason)

    async def _flush(self) -> None:
        while self._pending:
            what, write = self._pending[0]
            try:
                await asyncio.to_thread(write)
            except Exception as exc:
                if _unavailable(exc):
                    await asyncio.sleep(self.retry_every_s)
                    continue
                # A kept write the database refuses for good (e.g. its call is gone): logged
                # and skipped, so one bad write never holds the others back.
                log.error("kept call write refused", exc_info=exc, extra={"write": what})
            self._pending.popleft()
        log.info("database back; kept call writes stored", extra={"kept": self.kept_total})
        if self.readiness is not None:
            self.readiness.set("database", True)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Give the kept writes a last chance, then stop (what is left is logged)."""
        if self._flusher is not None and not self._flusher.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout_s)
            except TimeoutError:
                self._flusher.cancel()
                log.error("call writes lost at shutdown; database unavailable",
                          extra={"pending": len(self._pending)})
