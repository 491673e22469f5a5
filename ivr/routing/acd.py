"""Automatic call distribution: which agents can take a call, and which waiting call is next.

Agents' availability comes from ARI (endpoint online/offline and their channels) plus our own
view of the calls we gave them (ringing, talking, wrap-up). Waiting calls are ordered by priority,
then by the time they joined the queue; an agent goes to the first waiting call that may use them
(agent region in the call's eligible regions, agent skills cover the call's skill).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ivr.routing.ledger import AgentLedger

log = logging.getLogger(__name__)
# After another node refused us an agent (it holds them, or their wrap-up runs there), they
# are not tried again for this long; the shared view is re-read at most this often too.
ELSEWHERE_S = 1.0


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
    busy_elsewhere_until: float = 0.0  # another node holds them (shared ledger)

    def can_take(self, skill: str | None, now: float) -> bool:
        """Registered, not on a call, out of wrap-up, and skilled for ``skill``."""
        return (self.registered and self.foreign_channels == 0 and self.call_id is None
                and now >= self.wrap_up_until and now >= self.busy_elsewhere_until
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
                 clock: Callable[[], float] = time.monotonic,
                 ledger: AgentLedger | None = None) -> None:
        self.clock = clock
        self.wrap_up_s = wrap_up_s
        self.agents: dict[str, AgentStatus] = {a.agent_id: a for a in agents}
        self.waiting: dict[str, QueueEntry] = {}
        # Called after every change of agents or queue (the live board redraws its counts).
        self.on_change: Callable[[], None] = lambda: None
        # Several nodes: claims go through the shared database (None: this node alone).
        self.ledger = ledger
        self._viewed_at = float("-inf")
        self._writes: set[asyncio.Future[Any]] = set()

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
        if self.ledger is not None:
            self._shared(self.ledger.release, agent_id, call_id, self.wrap_up_s, talked)
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
        if self.ledger is not None:
            self._shared(self.ledger.release_node)
        self.on_change()

    def mark_talking(self, agent_id: str, call_id: str) -> None:
        """Restore a connected call after a restart: the agent is busy with it."""
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.call_id = call_id
            if self.ledger is not None:
                self._shared(self.ledger.restore, agent_id, call_id)
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

    async def claim_shared(self, call_id: str) -> AgentStatus | None:
        """``claim``, confirmed in the shared database when there is one: an agent another
        node holds (or who wraps up there) is passed over and the next one tried."""
        if self.ledger is None:
            return self.claim(call_id)
        await self._refresh_view()
        while True:
            agent = self.claim(call_id)
            if agent is None:
                return None
            try:
                granted = await asyncio.to_thread(self.ledger.claim, agent.agent_id, call_id)
            except Exception as exc:  # noqa: BLE001 - decided below
                # The database is away: callers must still reach agents, so this node goes on
                # with its own view. Another node could ring the same agent meanwhile; the
                # phone then refuses the second call as busy and it is offered to the next.
                log.warning("shared agent claim not recorded (database unavailable); "
                            "ringing on this node's view", extra={
                                "agent_id": agent.agent_id, "error": type(exc).__name__})
                return agent
            if granted:
                return agent
            agent.call_id = None  # taken elsewhere: try the next one
            agent.busy_elsewhere_until = self.clock() + ELSEWHERE_S
            self.on_change()

    async def _refresh_view(self) -> None:
        """Wrap-up and idle time from the shared database (at most every ELSEWHERE_S)."""
        now = self.clock()
        if self.ledger is None or now - self._viewed_at < ELSEWHERE_S:
            return
        self._viewed_at = now
        try:
            shared = await asyncio.to_thread(self.ledger.view)
        except Exception as exc:  # noqa: BLE001 - claims are still checked one by one
            log.warning("shared agent view unavailable", extra={"error": type(exc).__name__})
            return
        wall = datetime.now(UTC)
        for agent_id, state in shared.items():
            agent = self.agents.get(agent_id)
            if agent is None:
                continue
            if state.wrap_up_until is not None:
                agent.wrap_up_until = max(agent.wrap_up_until, now + (
                    state.wrap_up_until - wall).total_seconds())
            if state.idle_since is not None:
                agent.idle_since = now + (state.idle_since - wall).total_seconds()
            held_elsewhere = (state.claimed_call_id is not None
                              and state.claimed_by != self.ledger.node_id)
            if held_elsewhere:
                agent.busy_elsewhere_until = now + ELSEWHERE_S

    def _shared(self, write: Callable[..., Any], *args: Any) -> None:
        """A ledger write off the event loop; a failure is logged (the claim is cleared when
        this node reconnects, or when it is declared lost)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools, tests): write now
            write(*args)
            return
        future = loop.run_in_executor(None, write, *args)
        self._writes.add(future)

        def done(finished: asyncio.Future[Any]) -> None:
            self._writes.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("shared agent state not written", extra={
                    "write": getattr(write, "__name__", "?"),
                    "error": type(finished.exception()).__name__})

        future.add_done_callback(done)

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
