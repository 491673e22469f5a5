"""In-process event bus for live views (transcripts, call events); the API exposes it later.

Every subscriber has a bounded queue; a slow subscriber loses its oldest events (counted), never
slows the calls down.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BusEvent:
    """One published event with a process-wide sequence number."""

    seq: int
    kind: str
    call_id: str
    data: dict[str, Any]


@dataclass
class Subscription:
    """A subscriber's queue."""

    queue: asyncio.Queue[BusEvent]
    dropped: int = 0


@dataclass
class EventBus:
    """Publish/subscribe inside one process."""

    queue_size: int = 1000
    _subscribers: list[Subscription] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def subscribe(self) -> Subscription:
        """A new subscription receiving events published from now on."""
        sub = Subscription(asyncio.Queue(self.queue_size))
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``."""
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def publish(self, kind: str, call_id: str, data: dict[str, Any]) -> BusEvent:
        """Deliver an event to every subscriber (oldest dropped when a queue is full)."""
        event = BusEvent(next(self._seq), kind, call_id, data)
        for sub in self._subscribers:
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(event)
        return event
