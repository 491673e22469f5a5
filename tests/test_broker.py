"""Live events across nodes through a real Redis stream (Debian's redis-server, started per
session): every node's subscribers get every node's events, with the same numbers, so a
supervisor can resume on another node; Redis going away keeps events flowing locally."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ivr.broker import StreamBus
from ivr.bus import BusEvent
from ivr.health import Readiness
from ivr.metrics import MetricsRecorder
from ivr.store.postgres import free_tcp_port

pytestmark = pytest.mark.unit
REDIS = shutil.which("redis-server")


class RedisServer:
    def __init__(self) -> None:
        self.port = free_tcp_port()
        self.folder = Path(tempfile.mkdtemp(prefix="ivr-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS is not None
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (scripts/host_packages installs it)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[StreamBus, StreamBus]]:
    a = StreamBus(url=redis_server.url, node_id="node-a", readiness=Readiness())
    b = StreamBus(url=redis_server.url, node_id="node-b", readiness=Readiness())
    for bus in (a, b):
        await bus.start()
    await _until(lambda: a.connected and b.connected)
    try:
        yield a, b
    finally:
        for bus in (a, b):
            await bus.aclose()


async def _until(check: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _drain(queue: asyncio.Queue[BusEvent], count: int) -> list[BusEvent]:
    return [await asyncio.wait_for(queue.get(), 5) for _ in range(count)]


async def test_every_node_sees_every_event_with_the_same_numbers(
        nodes: tuple[StreamBus, StreamBus]) -> None:
    a, b = nodes
    sub_a, sub_b = a.subscribe(), b.subscribe()
    for i in range(10):
        (a if i % 2 else b).publish("call", f"call-{i}", {"i": i})
    got_a, got_b = await _drain(sub_a.queue, 10), await _drain(sub_b.queue, 10)
    assert got_a == got_b  # same events, same order, same numbers
    seqs = [e.seq for e in got_a]
    assert seqs == list(range(seqs[0], seqs[0] + 10))  # consecutive
    assert {e.node for e in got_a} == {"node-a", "node-b"}
    assert sorted(e.data["i"] for e in got_a) == list(range(10))
    assert a.epoch == b.epoch and a.last_seq == b.last_seq == seqs[-1]
    # A supervisor who saw up to the fourth event on node-a resumes on node-b.
    assert b.since(seqs[3]) == got_a[4:]


async def test_a_node_started_later_resumes_clients_of_the_others(
        nodes: tuple[StreamBus, StreamBus], redis_server: RedisServer) -> None:
    a, _b = nodes
    sub = a.subscribe()
    for i in range(5):
        a.publish("acd", "", {"i": i})
    events = await _drain(sub.queue, 5)
    late = StreamBus(url=redis_server.url, node_id="node-c")
    await late.start()
    try:
        await _until(lambda: late.connected)
        assert late.epoch == a.epoch
        assert late.since(events[1].seq) == events[2:]
    finally:
        await late.aclose()


async def test_metrics_count_only_this_nodes_events(nodes: tuple[StreamBus, StreamBus]
                                                    ) -> None:
    a, b = nodes
    metrics = MetricsRecorder(a)
    sub = a.subscribe()
    a.publish("transcript.final", "c1", {"seconds": 0.5})
    b.publish("transcript.final", "c2", {"seconds": 0.7})
    for event in await _drain(sub.queue, 2):
        metrics.observe(event)
    assert metrics.live_events.labels("transcript.final")._value.get() == 1  # noqa: SLF001


async def test_redis_gone_and_back(nodes: tuple[StreamBus, StreamBus],
                                   redis_server: RedisServer) -> None:
    a, b = nodes
    sub_a, sub_b = a.subscribe(), b.subscribe()
    a.publish("call", "before", {})
    (before,) = await _drain(sub_a.queue, 1)
    await _drain(sub_b.queue, 1)
    shared_epoch = a.epoch
    redis_server.kill()
    await _until(lambda: not a.connected, 10)
    assert "broker" in a.readiness.degraded()  # type: ignore[union-attr]
    assert a.epoch != shared_epoch  # clients resuming now start over from a snapshot
    a.publish("call", "during", {})  # still reaches this node's supervisors
    (during,) = await _drain(sub_a.queue, 1)
    assert during.call_id == "during" and during.seq > before.seq
    redis_server.start()  # a fresh Redis (nothing persisted): a new shared epoch
    await _until(lambda: a.connected and b.connected, 15)
    assert "broker" not in a.readiness.degraded()  # type: ignore[union-attr]
    assert a.epoch == b.epoch and a.epoch not in (shared_epoch,)
    a.publish("call", "after", {})
    (after,) = await _drain(sub_b.queue, 1)
    assert after.call_id == "after" and after.node == "node-a"
