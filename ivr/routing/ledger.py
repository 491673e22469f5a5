"""Agent claims in the shared database, so that several nodes never ring one agent.

Each node's ``Distributor`` still orders its own waiting calls and picks the agent it wants;
the claim itself is one conditional UPDATE on the agent's row (free, out of wrap-up), which the
database grants to exactly one node however many try at once (SQLite serialises writers;
PostgreSQL's row lock makes the second UPDATE re-check the condition and change nothing).
Release sets the shared wrap-up and idle time, so every node sees the same agent as busy,
wrapping up or longest idle. A node's claims are cleared when it reconnects to its PBX (it
rebuilds them from what is really ringing and bridged) and when it is declared lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, or_, select, update
from sqlalchemy.orm import Session

from ivr.store.models import AgentRow

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class SharedAgent:
    """One agent's shared state."""

    agent_id: str
    claimed_call_id: str | None
    claimed_by: str | None
    wrap_up_until: datetime | None
    idle_since: datetime | None


class AgentLedger:
    """The shared half of agent distribution for one node."""

    def __init__(self, engine: Engine, node_id: str, clock: Clock | None = None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.clock = clock or (lambda: datetime.now(UTC))

    def claim(self, agent_id: str, call_id: str) -> bool:
        """Take the agent for ``call_id`` if nobody holds them and their wrap-up is over."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            result = cast(CursorResult[Any], session.execute(
                update(AgentRow).where(
                    AgentRow.id == agent_id, AgentRow.claimed_call_id.is_(None),
                    or_(AgentRow.wrap_up_until.is_(None), AgentRow.wrap_up_until <= now))
                .values(claimed_call_id=call_id, claimed_by=self.node_id, claimed_at=now)))
            return result.rowcount == 1

    def restore(self, agent_id: str, call_id: str) -> bool:
        """After a restart: the agent is talking to ``call_id`` (really bridged), unless
        another call holds them."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            result = cast(CursorResult[Any], session.execute(
                update(AgentRow).where(AgentRow.id == agent_id, or_(
                    AgentRow.claimed_call_id.is_(None), AgentRow.claimed_call_id == call_id))
                .values(claimed_call_id=call_id, claimed_by=self.node_id, claimed_at=now)))
            return result.rowcount == 1

    def release(self, agent_id: str, call_id: str, wrap_up_s: float, talked: bool) -> bool:
        """The call is over for this agent; after a conversation, wrap-up starts."""
        now = self.clock()
        free_at = now + timedelta(seconds=wrap_up_s) if talked else now
        values: dict[str, Any] = {"claimed_call_id": None, "claimed_by": None,
                                  "claimed_at": None}
        if talked:
            values.update(wrap_up_until=free_at, idle_since=free_at)
        with Session(self.engine) as session, session.begin():
            result = cast(CursorResult[Any], session.execute(
                update(AgentRow).where(AgentRow.id == agent_id,
                                       AgentRow.claimed_call_id == call_id).values(**values)))
            return result.rowcount == 1

    def release_node(self, node_id: str | None = None) -> int:
        """Clear every claim a node holds (this one by default); how many."""
        with Session(self.engine) as session, session.begin():
            result = cast(CursorResult[Any], session.execute(
                update(AgentRow).where(AgentRow.claimed_by == (node_id or self.node_id))
                .values(claimed_call_id=None, claimed_by=None, claimed_at=None)))
            return int(result.rowcount or 0)

    def view(self) -> dict[str, SharedAgent]:
        """Every agent's shared state, for the node's own view."""
        with Session(self.engine) as session:
            rows = session.execute(select(
                AgentRow.id, AgentRow.claimed_call_id, AgentRow.claimed_by,
                AgentRow.wrap_up_until, AgentRow.idle_since)).all()
        return {row[0]: SharedAgent(*row) for row in rows}
