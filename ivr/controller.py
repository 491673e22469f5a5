"""Placeholder hotline controller: keeps the ARI connection and answers calls with a greeting.

The full call flow (menus, routing, speech) replaces :meth:`HotlineController.handle_call`.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ivr.ari.client import AriClient
from ivr.ari.events import StasisStart
from ivr.asterisk.instance import AriCredentials
from ivr.errors import AriError

log = logging.getLogger(__name__)


class Readiness:
    """What the service still lacks before it can take calls."""

    def __init__(self) -> None:
        self._checks: dict[str, bool] = {"ari": False}

    def set(self, name: str, ok: bool) -> None:
        """Record the state of one dependency."""
        self._checks[name] = ok

    def checks(self) -> dict[str, bool]:
        """Every dependency and whether it is available."""
        return dict(self._checks)

    def missing(self) -> list[str]:
        """Dependencies that are not available."""
        return sorted(name for name, ok in self._checks.items() if not ok)


class HotlineController:
    """Connects to ARI with capped exponential backoff and greets every call."""

    def __init__(self, creds: AriCredentials, readiness: Readiness,
                 greeting: str = "sound:hello-world", max_backoff_s: float = 10.0) -> None:
        self.creds = creds
        self.readiness = readiness
        self.greeting = greeting
        self.max_backoff_s = max_backoff_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = 0.5
        while True:
            try:
                async with AriClient(self.creds) as ari:
                    stream = await ari.subscribe()
                    self.readiness.set("ari", True)
                    log.info("ari connected", extra={"app": self.creds.app})
                    backoff = 0.5
                    try:
                        async for event in stream:
                            if isinstance(event, StasisStart) and not event.args:
                                task = asyncio.create_task(self.handle_call(ari, event))
                                self._tasks.add(task)
                                task.add_done_callback(self._tasks.discard)
                    finally:
                        await stream.aclose()
            except AriError as exc:
                log.warning("ari unavailable", extra={"error": str(exc)})
            finally:
                self.readiness.set("ari", False)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff_s)

    async def handle_call(self, ari: AriClient, start: StasisStart) -> None:
        """Answer, play the greeting, hang up."""
        channel = start.channel.id
        try:
            await ari.request("POST", f"/channels/{channel}/answer")
            await ari.request("POST", f"/channels/{channel}/play",
                              params={"media": self.greeting})
            await asyncio.sleep(3.0)
            await ari.request("DELETE", f"/channels/{channel}")
        except AriError as exc:
            # The caller hung up first: nothing else to do for a placeholder.
            log.info("call ended early", extra={"channel": channel, "error": str(exc)})

    async def aclose(self) -> None:
        """Cancel call tasks."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


__all__ = ["HotlineController", "Readiness"]
