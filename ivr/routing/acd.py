"""Automatic call distribution: which agents can take a call, and which waiting call is next.

Agents' availability comes from ARI (endpoint online/offline and their channels) plus our own
view of the calls we gave them (ringing, talking, wrap-up). Waiting calls are ordered by priority,
then by the time they joined the queue; an agent goes to the first waiting call that may use them
(agent region in the call's eligible regions, agent skills cover the call's skill).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class AgentStatus:
    """What the distributor knows about one agent."""

    agent_id: str
    region: str
    skills: frozenset[str] = frozenset()  # empty: takes any skill
    registered: bool = False
    foreign_channels: int = 0  # calls on the phone that are not ours
    call_id: str | None = None  # the call we gave them (ringing or talking)
    wrap_up_until: float = 0.0
    idle_since: float = 0.0
    missed: int = 0

    def can_take(self, skill: str | None, now: float) -> bool:
        """Registered, not on a call, out of wrap-up, and skilled for ``skill``."""
        return (self.registered and self.foreign_channels == 0 and self.call_id is None
                and now >= self.wrap_up_until
                and (not self.skills or skill is None or skill in self.skills))


@dataclass
class QueueEntry:
    """One waiting call."""

    call_id: str
    priority: int
    joined_at: float
    regions: tuple[str, ...]  # eligible regions, the target first; grows on overflow
    skill: str | None
    excluded: set[str] = field(default_factory=set)  # agents that did not answer this call

    def precedes(self, other: QueueEntry) -> bool:
        """Served before ``other``: higher priority, then earlier."""
        return (-self.priority, self.joined_at) < (-other.priority, other.joined_at)


class Distributor:
    """Agents and waiting calls of one controller."""

    def __init__(self, agents: Iterable[AgentStatus], wrap_up_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.wrap_up_s = wrap_up_s
        self.agents: dict[str, AgentStatus] = {a.agent_id: a for a in agents}
        self.waiting: dict[str, QueueEntry] = {}
        # Called after every change of agents or queue (the live board redraws its counts).
        self.on_change: Callable[[], None] = lambda: None

    # -- agents ------------------------------------------------------------------------------

    def set_registered(self, agent_id: str, registered: bool, foreign_channels: int = 0) -> None:
        """Endpoint state from ARI."""
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        if registered and not agent.registered:
            agent.idle_since = self.clock()
        agent.registered = registered
        agent.foreign_channels = foreign_channels
        self.on_change()

    def registered_in(self, regions: Sequence[str]) -> bool:
        """Whether any agent of ``regions`` is registered at all (busy or not)."""
        return any(a.registered and a.region in regions for a in self.agents.values())

    def release(self, agent_id: str, call_id: str, talked: bool) -> None:
        """The call we gave this agent is over (or never answered)."""
        agent = self.agents.get(agent_id)
        if agent is None or agent.call_id != call_id:
            return
        agent.call_id = None
        now = self.clock()
        if talked:
            agent.wrap_up_until = now + self.wrap_up_s
            agent.idle_since = agent.wrap_up_until
        else:
            agent.missed += 1
        entry = self.waiting.get(call_id)
        if entry is not None and not talked:
            entry.excluded.add(agent_id)
        self.on_change()

    def release_all(self) -> None:
        """Forget every claim and waiting call: the controller lost ARI and rebuilds both from
        what is really bridged and ringing when it reconnects."""
        for agent in self.agents.values():
            agent.call_id = None
        self.waiting.clear()
        self.on_change()

    def mark_talking(self, agent_id: str, call_id: str) -> None:
        """Restore a connected call after a restart: the agent is busy with it."""
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.call_id = call_id
            self.on_change()

    # -- queue -------------------------------------------------------------------------------

    def join(self, call_id: str, priority: int, regions: Sequence[str], skill: str | None,
             joined_at: float | None = None) -> QueueEntry:
        """Put a call in the queue (or return its existing entry)."""
        entry = self.waiting.get(call_id)
        if entry is None:
            entry = QueueEntry(call_id, priority, joined_at if joined_at is not None
                               else self.clock(), tuple(regions), skill)
            self.waiting[call_id] = entry
            self.on_change()
        return entry

    def widen(self, call_id: str, regions: Sequence[str]) -> None:
        """Overflow: the call may now also use agents of ``regions``."""
        entry = self.waiting.get(call_id)
        if entry is not None:
            entry.regions = tuple(dict.fromkeys((*entry.regions, *regions)))

    def leave(self, call_id: str) -> None:
        """The call no longer waits (connected, hung up, or gone to callback)."""
        if self.waiting.pop(call_id, None) is not None:
            self.on_change()

    def position(self, call_id: str) -> int:
        """1-based place among waiting calls that compete for the same regions."""
        entry = self.waiting.get(call_id)
        if entry is None:
            return 0
        ahead = sum(1 for other in self.waiting.values()
                    if other is not entry and other.precedes(entry)
                    and set(other.regions) & set(entry.regions))
        return ahead + 1

    def claim(self, call_id: str) -> AgentStatus | None:
        """The longest-idle agent this call may have now, if no earlier call is owed it."""
        entry = self.waiting.get(call_id)
        if entry is None:
            return None
        now = self.clock()
        candidates = sorted(
            (a for a in self.agents.values()
             if a.region in entry.regions and a.agent_id not in entry.excluded
             and a.can_take(entry.skill, now)),
            key=lambda a: (entry.regions.index(a.region) if a.region in entry.regions else 99,
                           a.idle_since))
        for agent in candidates:
            if any(other is not entry and other.precedes(entry)
                   and agent.region in other.regions and agent.agent_id not in other.excluded
                   and (not agent.skills or other.skill is None or other.skill in agent.skills)
                   for other in self.waiting.values()):
                continue
            agent.call_id = call_id
            self.on_change()
            return agent
        return None

    def snapshot(self) -> dict[str, object]:
        """Agents and queue, for the API and logs."""
        now = self.clock()
        return {
            "agents": [{"agent_id": a.agent_id, "region": a.region, "registered": a.registered,
                        "call_id": a.call_id, "available": a.can_take(None, now)}
                       for a in sorted(self.agents.values(), key=lambda a: a.agent_id)],
            "waiting": [{"call_id": e.call_id, "priority": e.priority,
                         "regions": list(e.regions), "position": self.position(e.call_id)}
                        for e in self.waiting.values()],
        }


def agents_from_accounts(accounts: Iterable[tuple[str, str]],
                         skills: Mapping[str, Sequence[str]]) -> list[AgentStatus]:
    """AgentStatus for (agent_id, region) pairs, with configured skills."""
    return [AgentStatus(agent_id, region, frozenset(skills.get(agent_id, ())))
            for agent_id, region in accounts]
