"""Agent distribution: who gets which waiting call (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from ivr.routing.acd import AgentStatus, Distributor

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _distributor(clock: Clock, *agents: tuple[str, str]) -> Distributor:
    dist = Distributor([AgentStatus(a, r) for a, r in agents], wrap_up_s=5.0, clock=clock)
    for agent_id, _region in agents:
        clock.now += 1
        dist.set_registered(agent_id, True)
    return dist


def test_longest_idle_agent_of_the_region_is_chosen() -> None:
    clock = Clock()
    dist = _distributor(clock, ("n1", "north"), ("n2", "north"), ("e1", "east"))
    dist.join("c1", 0, ["north"], None)
    agent = dist.claim("c1")
    assert agent is not None and agent.agent_id == "n1"
    dist.join("c2", 0, ["north"], None)
    assert dist.claim("c2").agent_id == "n2"  # type: ignore[union-attr]
    dist.join("c3", 0, ["north"], None)
    assert dist.claim("c3") is None  # east is not eligible until overflow
    dist.widen("c3", ["east"])
    assert dist.claim("c3").agent_id == "e1"  # type: ignore[union-attr]


def test_priority_then_arrival_decides_who_is_next() -> None:
    clock = Clock()
    dist = _distributor(clock, ("n1", "north"))
    dist.set_registered("n1", False)
    dist.join("early", 0, ["north"], None)
    clock.now += 1
    dist.join("vip", 10, ["north"], None)
    clock.now += 1
    dist.join("late", 0, ["north"], None)
    assert [dist.position(c) for c in ("vip", "early", "late")] == [1, 2, 3]
    dist.set_registered("n1", True)
    assert dist.claim("early") is None, "the VIP call is owed the agent"
    assert dist.claim("vip").agent_id == "n1"  # type: ignore[union-attr]


def test_wrap_up_and_missed_calls() -> None:
    clock = Clock()
    dist = _distributor(clock, ("n1", "north"), ("n2", "north"))
    dist.join("c1", 0, ["north"], None)
    first = dist.claim("c1")
    assert first is not None and first.agent_id == "n1"
    dist.release("n1", "c1", talked=False)  # rang out: not tried again for this call
    assert dist.claim("c1").agent_id == "n2"  # type: ignore[union-attr]
    dist.release("n2", "c1", talked=True)
    dist.leave("c1")
    dist.join("c2", 0, ["north"], None)
    assert dist.claim("c2").agent_id == "n1"  # type: ignore[union-attr]
    dist.release("n1", "c2", talked=True)
    dist.leave("c2")
    dist.join("c3", 0, ["north"], None)
    assert dist.claim("c3") is None, "both agents are in wrap-up"
    clock.now += 5.0
    assert dist.claim("c3") is not None


def test_skills_and_foreign_calls_limit_who_can_take_a_call() -> None:
    clock = Clock()
    dist = Distributor([AgentStatus("s1", "east", frozenset({"security"})),
                        AgentStatus("g1", "east")], wrap_up_s=0, clock=clock)
    dist.set_registered("s1", True)
    dist.set_registered("g1", True, foreign_channels=1)  # on a call we did not give them
    dist.join("billing", 0, ["east"], "billing")
    assert dist.claim("billing") is None
    dist.join("security", 0, ["east"], "security")
    assert dist.claim("security").agent_id == "s1"  # type: ignore[union-attr]
    assert dist.registered_in(["east"]) and not dist.registered_in(["west"])
