"""Cross-call micro-batching: many callers' requests, one decoding thread.

Requests from every call are queued; the worker thread takes the oldest one, waits at most
``window_s`` after that request arrived (or until ``max_batch_size`` are waiting) and hands the
whole batch to ``decode`` in one go. Results are settled on each caller's own event loop, so the
loop never runs model code and a caller only ever sees its own result.

Queue policy: at most ``max_pending`` requests may wait (not counting the batch being decoded).
A new request beyond that is rejected at once with :class:`~asr.errors.AsrOverloaded` instead of
queued: a caller whose utterance waits behind a full queue would hear the answer seconds late, and
an unbounded queue turns a slow GPU into unbounded latency and memory for every call. Rejecting
lets the call flow re-prompt or fall back to the keypad. Best-effort requests (partial transcripts)
are refused already at half the bound, so they never crowd out final transcripts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from asr.errors import AsrError, AsrOverloaded, DecodeFailed, EngineClosed

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatcherStats:
    """Counters since start; ``batch_sizes`` maps a batch size to how many batches had it."""

    requests: int
    rejected: int
    batches: int
    batch_sizes: dict[int, int]
    behind_realtime: int
    decode_s: float
    audio_s: float

    @property
    def largest_batch(self) -> int:
        """Largest batch decoded so far (0 before the first)."""
        return max(self.batch_sizes, default=0)


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float


def _settle(future: asyncio.Future[R], result: R | None, error: BaseException | None) -> None:
    """Runs on the caller's loop; a caller that gave up (cancelled) is skipped."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class Batcher(Generic[T, R]):
    """Collects requests for a short window and decodes them together in one worker thread."""

    def __init__(
        self,
        decode: Callable[[Sequence[T]], Sequence[R]],
        *,
        audio_seconds: Callable[[T], float],
        window_s: float,
        max_batch_size: int,
        max_pending: int,
        name: str = "asr-batcher",
    ) -> None:
        if max_batch_size < 1 or max_pending < 1 or window_s < 0:
            raise ValueError("max_batch_size and max_pending must be >= 1, window_s >= 0")
        self._decode = decode
        self._audio_seconds = audio_seconds
        self._window_s = window_s
        self._max_batch = max_batch_size
        self._max_pending = max_pending
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        # Held only for deque operations, never while decoding, so the loop blocks for microseconds.
        self._cond = threading.Condition()
        self._closing = False
        self._requests = 0
        self._rejected = 0
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._behind = 0
        self._decode_s = 0.0
        self._audio_s = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has started."""
        return self._closing

    @property
    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        with self._cond:
            return BatcherStats(self._requests, self._rejected, sum(self._batch_sizes.values()),
                                dict(self._batch_sizes), self._behind, self._decode_s,
                                self._audio_s)

    async def submit(self, item: T, *, best_effort: bool = False) -> R:
        """Queue ``item`` and wait for its result; raises AsrOverloaded when the queue is full."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        limit = max(1, self._max_pending // 2) if best_effort else self._max_pending
        with self._cond:
            if self._closing:
                raise EngineClosed("the ASR engine is closed")
            if len(self._queue) >= limit:
                self._rejected += 1
                raise AsrOverloaded(len(self._queue), limit)
            self._requests += 1
            self._queue.append(_Pending(item, future, loop, time.monotonic()))
            self._cond.notify()
        return await future

    async def aclose(self) -> None:
        """Stop the worker; waiting requests fail with EngineClosed, the batch in flight ends."""
        with self._cond:
            self._closing = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        error = EngineClosed("the ASR engine was closed before this request was decoded")
        for request in pending:
            self._deliver(request, None, error)
        await asyncio.to_thread(self._thread.join)

    def _take_batch(self) -> list[_Pending[T, R]] | None:
        """Block until a batch is due; None when closing."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            deadline = self._queue[0].enqueued_at + self._window_s
            while len(self._queue) < self._max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closing:
                return None
            count = min(len(self._queue), self._max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            # A caller that already gave up is not decoded (reading the flag off-loop is a hint).
            live = [request for request in batch if not request.future.cancelled()]
            if live:
                self._decode_batch(live)

    def _decode_batch(self, batch: list[_Pending[T, R]]) -> None:
        items = [request.item for request in batch]
        audio_s = sum(self._audio_seconds(item) for item in items)
        started = time.monotonic()
        try:
            results = self._decode(items)
            if len(results) != len(items):
                raise DecodeFailed(f"decoder returned {len(results)} results for {len(items)}")
        except Exception as exc:  # every caller of the batch gets the failure, the worker lives on
            error = exc if isinstance(exc, AsrError) else DecodeFailed(f"decoding failed: {exc}")
            if error is not exc:
                error.__cause__ = exc
            log.exception("asr batch failed", extra={"batch_size": len(items)})
            for request in batch:
                self._deliver(request, None, error)
            return
        elapsed = time.monotonic() - started
        behind = elapsed > audio_s
        with self._cond:
            self._batch_sizes[len(items)] += 1
            self._decode_s += elapsed
            self._audio_s += audio_s
            self._behind += int(behind)
        if behind:
            log.warning("asr decoding behind real time", extra={
                "batch_size": len(items), "decode_s": round(elapsed, 3),
                "audio_s": round(audio_s, 3)})
        for request, result in zip(batch, results, strict=True):
            self._deliver(request, result, None)

    @staticmethod
    def _deliver(request: _Pending[T, R], result: R | None, error: BaseException | None) -> None:
        try:
            request.loop.call_soon_threadsafe(_settle, request.future, result, error)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            pass
