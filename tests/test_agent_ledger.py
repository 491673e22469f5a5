"""Agents shared by several nodes through the database (SQLite and PostgreSQL): one agent is
never rung by two nodes, wrap-up and idle time are shared, and a node's claims go with it."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from ivr.routing.acd import Distributor, agents_from_accounts
from ivr.routing.ledger import AgentLedger
from ivr.store.db import make_engine, url_of
from ivr.store.nodes import NodeLease
from ivr.store.repository import Store

pytestmark = pytest.mark.unit
AGENTS = [("agent-east-1", "east"), ("agent-east-2", "east")]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _node(store: Store, node_id: str, clock: Clock | None = None) -> Distributor:
    ledger = AgentLedger(make_engine(url_of(store.engine)), node_id, clock)
    distributor = Distributor(agents_from_accounts(AGENTS, {}), wrap_up_s=30.0, ledger=ledger)
    for agent_id, _region in AGENTS:
        distributor.set_registered(agent_id, True)  # both nodes reach both phones
    return distributor


@pytest.fixture
def agents_in(store: Store) -> Store:
    store.upsert_agents([(a, r, []) for a, r in AGENTS])
    return store


def _race(nodes: dict[Distributor, list[str]]) -> list[tuple[str, str]]:
    """Every node serves its waiting calls at the same moment; (agent, call) pairs granted."""
    barrier = threading.Barrier(len(nodes))
    granted: list[tuple[str, str]] = []

    def serve(node: Distributor, call_ids: list[str]) -> None:
        barrier.wait()
        for call_id in call_ids:
            agent = asyncio.run(node.claim_shared(call_id))
            if agent is not None:
                granted.append((agent.agent_id, call_id))

    threads = [threading.Thread(target=serve, args=item) for item in nodes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return granted


def test_two_nodes_claiming_at_once_never_share_an_agent(agents_in: Store) -> None:
    """Eight rounds of two nodes racing for the same two agents with one waiting call each,
    then with two each: every agent rings for one call at a time, and no call is left
    without an agent while one is free."""
    for round_ in range(8):
        a, b = _node(agents_in, "node-a"), _node(agents_in, "node-b")
        calls = {a: [f"a{round_}-1", f"a{round_}-2"][: 1 + round_ % 2],
                 b: [f"b{round_}-1", f"b{round_}-2"][: 1 + round_ % 2]}
        for node, ids in calls.items():
            for call_id in ids:
                node.join(call_id, 0, ["east"], None)
        granted = _race(calls)
        agents = [agent for agent, _call in granted]
        assert len(agents) == len(set(agents)) == 2, granted  # never twice, and both used
        held = {s.agent_id: s.claimed_call_id for s in a.ledger.view().values()}  # type: ignore[union-attr]
        assert held == dict(granted)
        a.ledger.release_node()  # type: ignore[union-attr]
        b.ledger.release_node()  # type: ignore[union-attr]


async def test_wrap_up_and_idle_time_are_shared(agents_in: Store) -> None:
    clock = Clock()
    a, b = _node(agents_in, "node-a", clock), _node(agents_in, "node-b", clock)
    a.join("call-1", 0, ["east"], None)
    first = await a.claim_shared("call-1")
    assert first is not None and first.agent_id == "agent-east-1"
    a.ledger.release(first.agent_id, "call-1", a.wrap_up_s, talked=True)  # type: ignore[union-attr]
    # Node B has never seen agent-east-1 busy: the shared wrap-up keeps it from ringing them.
    b.join("call-2", 0, ["east"], None)
    second = await b.claim_shared("call-2")
    assert second is not None and second.agent_id == "agent-east-2"
    b.ledger.release(second.agent_id, "call-2", 0.0, talked=False)  # type: ignore[union-attr]
    b.release(second.agent_id, "call-2", talked=False)
    b.leave("call-2")
    clock.now += timedelta(seconds=31)  # agent-east-1's wrap-up is over
    b._viewed_at = float("-inf")  # noqa: SLF001 - re-read the shared view now
    b.join("call-3", 0, ["east"], None)
    third = await b.claim_shared("call-3")
    assert third is not None


def test_a_lost_nodes_agents_are_freed_for_the_others(agents_in: Store) -> None:
    clock = Clock()
    engine = make_engine(url_of(agents_in.engine))
    lease_a = NodeLease(engine, "node-a", 5.0, clock=clock)
    lease_b = NodeLease(engine, "node-b", 5.0, clock=clock)
    lease_a.register()
    lease_b.register()
    ledger_a = AgentLedger(engine, "node-a", clock)
    assert ledger_a.claim("agent-east-1", "call-1")
    assert not AgentLedger(engine, "node-b", clock).claim("agent-east-1", "call-2")
    clock.now += timedelta(seconds=6)
    lease_b.renew()
    (lost,) = lease_b.reap()
    assert lost.node_id == "node-a"
    assert AgentLedger(engine, "node-b", clock).claim("agent-east-1", "call-2")
