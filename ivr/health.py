"""What the process knows of its own health: readiness, supervised tasks, event-loop lag.

The API reads these; the call flow and the controller write them. Nothing here imports the
call flow, so ``ivr.api`` never depends on ``ivr.flow``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Readiness:
    """What the service still lacks before it can take calls, and why."""

    def __init__(self) -> None:
        self._checks: dict[str, bool] = {"ari": False}
        self._reasons: dict[str, str] = {"ari": "not connected to ARI yet"}
        self._degraded: dict[str, str] = {}
        self._fatal: str | None = None
        self._models: dict[str, dict[str, Any]] = {}

    def model(self, part: str, name: str, folder: str, device: str, test_model: bool) -> None:
        """Record the model a part loaded (shown to administrators); a random-weight test
        model is also said in /ready, since what it hears or decides means nothing."""
        self._models[part] = {"name": name, "folder": folder, "device": device,
                              "test_model": test_model}
        if test_model:
            # The folder is for administrators (GET /models); /ready is public.
            self.degrade(f"{part}_model", f"random-weight test model {name}: what it hears "
                         "or decides means nothing; use a trained model")

    def models(self) -> dict[str, dict[str, Any]]:
        """Every model loaded, by part (asr, voiceprint)."""
        return {part: dict(info) for part, info in self._models.items()}

    def degrade(self, name: str, reason: str) -> None:
        """Note a capability that is off without stopping calls (e.g. speech -> keypad only)."""
        self._degraded[name] = reason

    def undegrade(self, name: str) -> None:
        """A capability is back (e.g. the broker reconnected)."""
        self._degraded.pop(name, None)

    def degraded(self) -> dict[str, str]:
        """Capabilities that are off, and why."""
        return dict(self._degraded)

    def set(self, name: str, ok: bool, reason: str | None = None) -> None:
        """Record the state of one dependency (``reason``: why it is not available)."""
        if self._checks.get(name) != ok:
            log.log(logging.INFO if ok else logging.WARNING, "readiness changed",
                    extra={"check": name, "ok": ok, "reason": reason})
        self._checks[name] = ok
        if ok:
            self._reasons.pop(name, None)
        elif reason:
            self._reasons[name] = reason

    def checks(self) -> dict[str, bool]:
        """Every dependency and whether it is available."""
        return dict(self._checks)

    def reasons(self) -> dict[str, str]:
        """Why each missing dependency is missing (where known)."""
        return {name: self._reasons[name] for name in self.missing() if name in self._reasons}

    def missing(self) -> list[str]:
        """Dependencies that are not available."""
        return sorted(name for name, ok in self._checks.items() if not ok)

    def fail(self, reason: str) -> None:
        """The process can no longer do its job (a supervised task died): /health says so."""
        self._fatal = reason

    @property
    def fatal(self) -> str | None:
        """Why the process is broken, or None."""
        return self._fatal


class TaskGroup:
    """Every background task of a component: tracked, cancelled together, failures logged."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str,
              context: dict[str, Any] | None = None) -> asyncio.Task[Any]:
        """Start ``coro``; an exception it ends with is logged with ``what`` and ``context``."""
        task = asyncio.create_task(coro, name=f"{self.name}:{what}")
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                log.error("background task failed", exc_info=exc,
                          extra={"group": self.name, "task": what, **(context or {})})

        task.add_done_callback(done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until they are gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LoopLag:
    """How late the event loop runs a timer: the time every call's audio and DTMF wait."""

    def __init__(self, interval_s: float = 0.05, window: int = 1200) -> None:
        self.interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=window)  # the last minute at 50 ms
        self.max_s = 0.0

    async def run(self) -> None:
        """Sample until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, loop.time() - started - self.interval_s)
            self._samples.append(lag)
            self.max_s = max(self.max_s, lag)

    def p99_s(self) -> float:
        """99th percentile of the recent samples."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def recent_max_s(self) -> float:
        """The largest recent sample."""
        return max(self._samples, default=0.0)


async def probe_forever(readiness: Readiness, name: str, probe: Callable[[], Awaitable[None]],
                        every_s: float, timeout_s: float, describe: str) -> None:
    """Run ``probe`` every ``every_s``; readiness ``name`` follows whether it succeeds in time."""
    while True:
        started = time.monotonic()
        try:
            await asyncio.wait_for(probe(), timeout_s)
        except TimeoutError:
            readiness.set(name, False, f"{describe}: no answer within {timeout_s:g} s")
        except Exception as exc:  # any failure of the dependency is reported, never raised
            readiness.set(name, False, f"{describe}: {type(exc).__name__}: {exc}"[:300])
        else:
            readiness.set(name, True)
        await asyncio.sleep(max(0.0, every_s - (time.monotonic() - started)))
