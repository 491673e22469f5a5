"""Live events across nodes through Redis Streams: every node's supervisors see every call.

With several nodes (``IVR_BROKER_URL=redis://HOST:6379/0``) the bus's events go through one
Redis stream instead of staying in the process:

- ``publish`` queues the event; a writer task appends it with a Lua script that takes the next
  number of one shared counter and adds the entry in the same atomic step, so the stream's
  order is the numbers' order and they have no gaps: the same sequence numbers on every node.
- A reader task follows the stream (``XREAD BLOCK``) and delivers each entry, with its number
  and the node that published it, to this process's subscribers (the live WebSocket, metrics).
- At start the last ``history_size`` entries are loaded, so a supervisor who reconnects to
  *another* node resumes from the last number they saw, as on one node. The epoch is a key in
  Redis, made once: a flushed Redis means a new epoch, and clients start over from a snapshot.
- Redis unreachable: events are delivered locally only, numbered after the last shared one, and
  /ready says ``broker`` is degraded; the writer keeps retrying, and once Redis is back the
  bus starts a new epoch (clients take a snapshot) and follows the stream again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from ivr.bus import BusEvent, EventBus
from ivr.health import Readiness

log = logging.getLogger(__name__)

STREAM = "ivr:events"
COUNTER = "ivr:events:seq"
EPOCH = "ivr:events:epoch"
# KEYS: counter, stream. ARGV: maxlen, node, kind, call_id, data (JSON). Returns the number.
APPEND = """
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
           'seq', seq, 'node', ARGV[2], 'kind', ARGV[3], 'call', ARGV[4], 'data', ARGV[5])
return seq
"""
RETRY_S = 1.0
WRITE_BATCH = 200


@dataclass
class StreamBus(EventBus):
    """An ``EventBus`` whose events are numbered and shared through a Redis stream."""

    url: str = "redis://127.0.0.1:6379/0"
    readiness: Readiness | None = None
    outbox_size: int = 10_000
    connected: bool = False
    _outbox: asyncio.Queue[tuple[str, str, dict[str, Any]]] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _last_id: str = "$"
    dropped_outbox: int = 0

    def publish(self, kind: str, call_id: str, data: dict[str, Any]) -> BusEvent:
        """Queue the event for the stream; it reaches subscribers when read back from it (or
        at once, numbered locally, while Redis is unreachable)."""
        if not self.connected or self._outbox is None:
            return super().publish(kind, call_id, data)
        if self._outbox.full():
            self._outbox.get_nowait()
            self.dropped_outbox += 1
        self._outbox.put_nowait((kind, call_id, data))
        return BusEvent(0, kind, call_id, data, self.node_id)  # numbered by the stream

    async def start(self) -> None:
        """Connect (or note that Redis is away and keep trying) and start following."""
        self._outbox = asyncio.Queue(self.outbox_size)
        self._tasks.append(asyncio.create_task(self._run(), name="broker"))

    async def aclose(self) -> None:
        """Stop following the stream."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _run(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        while True:
            client = aioredis.from_url(self.url, socket_timeout=5, socket_connect_timeout=3,
                                       health_check_interval=10)
            try:
                await self._attach(client)
                await asyncio.gather(self._write(client), self._read(client))
            except (RedisError, OSError) as exc:
                self._detach(f"{type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(RETRY_S)

    async def _attach(self, client: Any) -> None:
        await client.set(EPOCH, uuid.uuid4().hex[:12], nx=True)
        epoch = (await client.get(EPOCH)).decode()
        entries = await client.xrevrange(STREAM, count=self.history_size)
        self._history.clear()
        events = [self._event(fields) for _id, fields in reversed(entries)]
        for event in events:
            self._history.append(event)
        last = await client.get(COUNTER)
        changed = epoch != self.epoch
        self.epoch = epoch
        self.last_seq = int(last) if last is not None else 0
        self._last_id = entries[0][0].decode() if entries else "0-0"
        self.connected = True
        if self.readiness is not None:
            self.readiness.undegrade("broker")
        log.info("live events follow the broker", extra={
            "stream": STREAM, "epoch": epoch, "seq": self.last_seq, "epoch_changed": changed})

    def _detach(self, reason: str) -> None:
        if self.connected:
            log.warning("broker unreachable; live events stay on this node",
                        extra={"error": reason})
        self.connected = False
        # Numbers given locally must not be taken for the stream's: a new epoch, numbering on.
        self.epoch = f"local-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count(self.last_seq + 1)
        if self.readiness is not None:
            self.readiness.degrade("broker", f"broker unreachable ({reason[:120]}): live events "
                                   "show only this node's calls")

    async def _write(self, client: Any) -> None:
        assert self._outbox is not None
        sha = await client.script_load(APPEND)  # again after every reconnect (a new Redis)
        while True:
            # Whatever queued up meanwhile goes in one round trip (a pipeline of scripts).
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < WRITE_BATCH:
                batch.append(self._outbox.get_nowait())
            pipe = client.pipeline(transaction=False)
            for kind, call_id, data in batch:
                pipe.evalsha(sha, 2, COUNTER, STREAM, self.history_size,
                             self.node_id or "", kind, call_id or "",
                             json.dumps(data, separators=(",", ":"), default=str))
            await pipe.execute()

    async def _read(self, client: Any) -> None:
        while True:
            reply = await client.xread({STREAM: self._last_id}, block=1000, count=500)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id.decode()
                    event = self._event(fields)
                    if event.seq > self.last_seq:
                        self.deliver(event)

    @staticmethod
    def _event(fields: dict[bytes, bytes]) -> BusEvent:
        node = fields.get(b"node", b"").decode() or None
        call_id = fields.get(b"call", b"").decode()
        return BusEvent(int(fields[b"seq"]), fields[b"kind"].decode(), call_id,
                        json.loads(fields[b"data"]), node)
