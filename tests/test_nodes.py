"""Call ownership and node leases on the shared database (SQLite and PostgreSQL): each node
reconciles only its own calls, and a node whose lease runs out is declared lost by exactly one
other node, which closes its calls with a clear cause."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from ivr.store.db import make_engine, migrate, url_of
from ivr.store.nodes import NodeLease
from ivr.store.repository import Store

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _node(url: str, node_id: str, clock: Clock, lease_s: float = 15.0
          ) -> tuple[Store, NodeLease]:
    engine = make_engine(url)
    return Store(engine, node_id=node_id), NodeLease(engine, node_id, lease_s, clock=clock)


def _call(store: Store, n: int, state: str = "queued") -> str:
    call = store.create_call(channel_id=f"{store.node_id}-ch-{n}", caller_number="13800210000",
                             dialed_number="4008101111", sip_call_id=None, state=state)
    return call.id


def test_each_node_reconciles_only_its_own_calls_and_adopts_unowned_ones(
        store: Store) -> None:
    url, clock = url_of(store.engine), Clock()
    legacy_active = _call(store, 1)  # written before nodes existed: no owner
    legacy_ended = _call(store, 2, state="ended")
    a, lease_a = _node(url, "node-a", clock)
    b, lease_b = _node(url, "node-b", clock)
    assert lease_a.register() == 1  # the first node to start adopts the active one
    assert lease_b.register() == 0
    mine_a, mine_b = _call(a, 3), _call(b, 4)
    assert {c.id for c in a.active_calls(owned_by="node-a")} == {legacy_active, mine_a}
    assert {c.id for c in b.active_calls(owned_by="node-b")} == {mine_b}
    assert {c.id for c in a.active_calls()} == {legacy_active, mine_a, mine_b}  # the board
    assert a.get_call(legacy_ended).node_id is None  # type: ignore[union-attr]


def test_a_lost_node_is_reaped_once_and_its_calls_closed(store: Store) -> None:
    url, clock = url_of(store.engine), Clock()
    a, lease_a = _node(url, "node-a", clock)
    b, lease_b = _node(url, "node-b", clock)
    c, lease_c = _node(url, "node-c", clock)
    for lease in (lease_a, lease_b, lease_c):
        lease.register()
    queued, connected = _call(a, 1), _call(a, 2, state="connected")
    finished = _call(a, 3, state="ended")
    other = _call(b, 4)
    clock.now += timedelta(seconds=10)
    lease_b.renew()
    lease_c.renew()
    assert lease_b.reap() == [] and lease_c.reap() == []  # a's lease still runs
    assert lease_a.live_node_ids() == {"node-a", "node-b", "node-c"}
    clock.now += timedelta(seconds=10)  # 20 s without a renewal of node-a
    lease_b.renew()
    lease_c.renew()
    # Two nodes notice at once: one declares it lost, the other finds nothing to do.
    found: list[object] = []
    barrier = threading.Barrier(2)

    def reap(lease: NodeLease) -> None:
        barrier.wait()
        found.extend(lease.reap())

    threads = [threading.Thread(target=reap, args=(lease,)) for lease in (lease_b, lease_c)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 1
    lost = found[0]
    assert (lost.node_id, lost.cause, lost.calls_closed) == ("node-a", "node_lost", 2)  # type: ignore[attr-defined]
    for call_id, state in ((queued, "queued"), (connected, "connected")):
        call = b.get_call(call_id)
        assert call is not None and call.state == "ended" and call.ended_at == clock.now
        assert call.hangup_cause == f"node_lost:{state}"
        event = b.events(call_id)[-1]
        assert event.kind == "ended" and event.data["cause"] == "node_lost"
        assert event.data["closed_by"] in ("node-b", "node-c")
    assert b.get_call(finished).hangup_cause is None  # type: ignore[union-attr]
    assert b.get_call(other).state == "queued"  # type: ignore[union-attr]
    assert lease_b.live_node_ids() == {"node-b", "node-c"}
    listed = {n["id"]: n for n in lease_b.nodes()}
    assert listed["node-a"]["alive"] is False
    assert listed["node-a"]["lost_by"] == b.events(queued)[-1].data["closed_by"]
    # node-a wakes up: its renewal says it was declared lost; a restart clears the mark.
    assert lease_a.renew() is False
    assert lease_a.live_node_ids() >= {"node-a"}
    lease_a.stop()
    lease_a.register()
    assert "node-a" in lease_b.live_node_ids()


def test_a_node_stopped_cleanly_is_closed_only_after_its_lease(store: Store) -> None:
    url, clock = url_of(store.engine), Clock()
    a, lease_a = _node(url, "node-a", clock, lease_s=5)
    b, lease_b = _node(url, "node-b", clock, lease_s=5)
    lease_a.register()
    lease_b.register()
    waiting = _call(a, 1)
    lease_a.stop()
    clock.now += timedelta(seconds=3)
    assert lease_b.reap() == []  # a restart within the lease finds its calls as they were
    clock.now += timedelta(seconds=3)
    (lost,) = lease_b.reap()
    assert (lost.node_id, lost.cause, lost.calls_closed) == ("node-a", "node_stopped", 1)
    assert b.get_call(waiting).hangup_cause == "node_stopped:queued"  # type: ignore[union-attr]


def test_the_schema_upgrade_keeps_calls_without_an_owner(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine)  # a tool (no node): the calls it writes have no owner
    call_id = _call(store, 1)
    assert store.get_call(call_id).node_id is None  # type: ignore[union-attr]
    assert [c.id for c in store.active_calls()] == [call_id]
