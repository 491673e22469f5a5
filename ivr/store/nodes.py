"""Controller nodes on one shared database: who owns which calls, and who is still alive.

Each node (one controller beside one Asterisk) registers a row in ``nodes`` and renews its
lease (``heartbeat_at``) every third of ``lease_s``. Calls carry the node that took them;
reconciliation touches only its own (``Store.active_calls(owned_by=...)``).

A node whose lease has run out is *lost*: its calls' channels lived on its own Asterisk, which
no other node can reach, so they cannot be resumed elsewhere. The first live node to notice
(``reap``) marks it lost in one conditional UPDATE (so exactly one node does it, on SQLite and
on PostgreSQL alike) and closes its active calls with the cause ``node_lost:<state>`` (or
``node_stopped:<state>`` after a clean stop that was not followed by a restart in time). A node
that comes back registers again (clearing the mark) and reconciles what is left of its calls
as after any restart.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from ivr.health import Readiness
from ivr.store.models import AgentRow, CallEventRow, CallRow, NodeRow
from ivr.store.repository import ACTIVE_STATES

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def default_node_id(instance: str) -> str:
    """``<host name>-<asterisk instance>``: stable across restarts of the same node."""
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{instance}"[:64]


@dataclass(frozen=True)
class LostNode:
    """A node another one declared lost, and the calls it closed for it."""

    node_id: str
    cause: str  # node_lost | node_stopped
    calls_closed: int


class NodeLease:
    """This node's row in ``nodes``: register, renew, stop, and reap the lost."""

    def __init__(self, engine: Engine, node_id: str, lease_s: float, api_url: str | None = None,
                 clock: Clock | None = None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.lease_s = lease_s
        self.api_url = api_url
        self.clock = clock or (lambda: datetime.now(UTC))

    def register(self) -> int:
        """Start (or restart) this node's lease; adopt active calls stored without an owner
        (written before nodes existed). Returns how many were adopted."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            row = session.get(NodeRow, self.node_id)
            if row is None:
                session.add(NodeRow(id=self.node_id, host=socket.gethostname()[:255],
                                    api_url=self.api_url, started_at=now, heartbeat_at=now,
                                    lease_s=self.lease_s))
            else:
                if row.lost_at is not None:
                    log.warning("node restarts after being declared lost",
                                extra={"node": self.node_id, "lost_by": row.lost_by})
                row.host, row.api_url, row.lease_s = (socket.gethostname()[:255],
                                                      self.api_url, self.lease_s)
                row.started_at = row.heartbeat_at = now
                row.stopped_at = row.lost_at = row.lost_by = None
            adopted = cast(CursorResult[Any], session.execute(
                update(CallRow).where(CallRow.node_id.is_(None),
                                      CallRow.state.in_(ACTIVE_STATES))
                .values(node_id=self.node_id))).rowcount
        return int(adopted or 0)

    def renew(self) -> bool:
        """Extend the lease; False when another node has declared this one lost meanwhile
        (it was frozen or cut off for longer than the lease: its calls were closed)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(NodeRow, self.node_id)
            if row is None:  # removed by an operator: register again
                session.rollback()
                self.register()
                return True
            lost = row.lost_at is not None
            row.heartbeat_at = self.clock()
            row.lost_at = row.lost_by = None
        if lost:
            log.error("this node was declared lost by another while it did not renew its "
                      "lease; its calls were closed there", extra={"node": self.node_id})
        return not lost

    def stop(self) -> None:
        """A clean stop: others wait a full lease for a restart before closing its calls."""
        with Session(self.engine) as session, session.begin():
            session.execute(update(NodeRow).where(NodeRow.id == self.node_id)
                            .values(stopped_at=self.clock()))

    def reap(self) -> list[LostNode]:
        """Declare lost every other node whose lease ran out, and close its active calls."""
        now = self.clock()
        found: list[LostNode] = []
        with Session(self.engine) as session:
            candidates = session.execute(select(NodeRow.id, NodeRow.lease_s, NodeRow.stopped_at)
                                         .where(NodeRow.id != self.node_id,
                                                NodeRow.lost_at.is_(None))).all()
        for node_id, lease_s, stopped_at in candidates:
            cutoff = now - timedelta(seconds=float(lease_s))
            with Session(self.engine) as session, session.begin():
                # The conditional UPDATE is the claim: of several reapers, one changes the row.
                claimed = cast(CursorResult[Any], session.execute(
                    update(NodeRow).where(NodeRow.id == node_id, NodeRow.lost_at.is_(None),
                                          NodeRow.heartbeat_at < cutoff)
                    .values(lost_at=now, lost_by=self.node_id))).rowcount
                if not claimed:
                    continue
                cause = "node_stopped" if stopped_at is not None else "node_lost"
                closed = self._close_calls(session, node_id, cause, now)
                # Its agents are free again for every other node.
                session.execute(update(AgentRow).where(AgentRow.claimed_by == node_id).values(
                    claimed_call_id=None, claimed_by=None, claimed_at=None))
            log.warning("node declared lost; its calls closed", extra={
                "node": node_id, "cause": cause, "calls": closed, "by": self.node_id})
            found.append(LostNode(node_id, cause, closed))
        return found

    def _close_calls(self, session: Session, node_id: str, cause: str, now: datetime) -> int:
        calls = session.scalars(select(CallRow).where(
            CallRow.node_id == node_id, CallRow.state.in_(ACTIVE_STATES))).all()
        for call in calls:
            session.add(CallEventRow(call_id=call.id, at=now, kind="ended", data={
                "cause": cause, "node": node_id, "closed_by": self.node_id,
                "state": call.state}))
            call.hangup_cause = f"{cause}:{call.state}"[:64]
            call.hangup_by = "pbx"
            call.state = "ended"
            call.ended_at = now
        return len(calls)

    def nodes(self) -> list[dict[str, object]]:
        """Every node known to the database, for the API and ``ivr cluster status``."""
        now = self.clock()
        with Session(self.engine) as session:
            rows = session.scalars(select(NodeRow).order_by(NodeRow.id)).all()
            return [{"id": r.id, "host": r.host, "api_url": r.api_url,
                     "started_at": r.started_at, "heartbeat_at": r.heartbeat_at,
                     "lease_s": r.lease_s, "stopped_at": r.stopped_at, "lost_at": r.lost_at,
                     "lost_by": r.lost_by,
                     "alive": r.lost_at is None and r.stopped_at is None and
                     (now - r.heartbeat_at).total_seconds() < r.lease_s}
                    for r in rows]

    def live_node_ids(self) -> set[str]:
        """Nodes whose lease is current."""
        now = self.clock()
        with Session(self.engine) as session:
            rows = session.execute(select(NodeRow.id, NodeRow.heartbeat_at, NodeRow.lease_s)
                                   .where(and_(NodeRow.lost_at.is_(None),
                                               or_(NodeRow.stopped_at.is_(None),
                                                   NodeRow.stopped_at < NodeRow.heartbeat_at)))
                                   ).all()
        return {node_id for node_id, beat, lease in rows
                if (now - beat).total_seconds() < lease}


async def keep_lease(lease: NodeLease, readiness: Readiness) -> None:
    """Renew the lease and reap lost nodes every third of the lease, until cancelled. A
    failed renewal is said in /ready (``node_lease``) and retried."""
    every = lease.lease_s / 3
    while True:
        try:
            await asyncio.to_thread(lease.renew)
            readiness.set("node_lease", True)
            await asyncio.to_thread(lease.reap)
        except Exception as exc:  # noqa: BLE001 - said in /ready, retried
            readiness.set("node_lease", False, f"lease not renewed: {type(exc).__name__}")
            log.warning("node lease not renewed", extra={"node": lease.node_id,
                                                         "error": type(exc).__name__})
        await asyncio.sleep(every)
