"""In-process event bus for live views (call events, transcripts, agents and queues).

Every subscriber has a bounded queue; a slow subscriber loses its oldest events (counted), never
slows the calls down. The last ``history_size`` events are kept so a live client that
reconnects can ask for everything after the last sequence number it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BusEvent:
    """One published event with a process-wide sequence number."""

    seq: int
    kind: str
    call_id: str
    data: dict[str, Any]
    node: str | None = None  # the node that published it (several nodes: ivr.broker)


@dataclass
class Subscription:
    """A subscriber's queue."""

    queue: asyncio.Queue[BusEvent]
    dropped: int = 0


@dataclass
class EventBus:
    """Publish/subscribe inside one process."""

    queue_size: int = 1000
    history_size: int = 10_000
    _subscribers: list[Subscription] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _history: deque[BusEvent] = field(default_factory=deque)
    last_seq: int = 0
    # Sequence numbers restart with the process; a client's seq from another epoch is void.
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def subscribe(self) -> Subscription:
        """A new subscription receiving events published from now on."""
        sub = Subscription(asyncio.Queue(self.queue_size))
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``."""
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    # This process's node (several nodes share one stream of events; see ivr.broker).
    node_id: str | None = None

    def publish(self, kind: str, call_id: str, data: dict[str, Any]) -> BusEvent:
        """Deliver an event to every subscriber (oldest dropped when a queue is full)."""
        return self.deliver(BusEvent(next(self._seq), kind, call_id, data, self.node_id))

    def deliver(self, event: BusEvent) -> BusEvent:
        """Hand a numbered event to every subscriber and keep it for resuming clients."""
        self.last_seq = event.seq
        self._history.append(event)
        if len(self._history) > self.history_size:
            self._history.popleft()
        for sub in self._subscribers:
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(event)
        return event

    def since(self, seq: int) -> list[BusEvent] | None:
        """Events after ``seq``; None when some of them are no longer kept (resync needed)."""
        if seq > self.last_seq:
            return None
        if seq == self.last_seq:
            return []
        if not self._history or self._history[0].seq > seq + 1:
            return None
        return [e for e in self._history if e.seq > seq]
