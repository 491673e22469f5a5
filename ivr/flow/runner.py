"""Runs one call's states and keeps the caller when something underneath fails.

What each failure becomes (every path releases what the call held):

- the caller (or the PBX) hangs up: ``Ended``, attributed to the side that ended it;
- the ARI connection is lost: what lives in this process is released (agent claim, listening
  sockets) and the call stays stored; reconciliation resumes it on reconnect;
- an ARI request stalls or fails with the connection still up (an overloaded or briefly frozen
  PBX): :class:`Recover` releases the agent leg, checks within a bounded number of retries that
  the caller is still there, and puts them back where they were going (queue, human queue); only
  when the PBX cannot be reached at all does the call end (``ari_unreachable``);
- any other error (a bug, a model out of memory, a database error): logged with the call id and
  traceback, and the call degrades instead of dropping: identity checks go to the experts
  (tier 3), the menu goes on keypad only, then to the human queue; the queue states re-queue.
  A call that meets ``max_internal_errors`` of them ends (``internal_error``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from ivr.errors import AriRequestError, AriUnavailableError
from ivr.flow.events import CallerGone
from ivr.flow.session import CallerHungUp, CallSession
from ivr.flow.states import (
    Answer,
    Callback,
    Connected,
    Ended,
    Menu,
    Queued,
    QueuePlan,
    Routing,
    State,
    release_agent,
    release_call,
)
from ivr.routing.rules import RoutingDecision
from ivr.store.repository import VERIFY_STATES

log = logging.getLogger(__name__)


async def run_call(s: CallSession, first: State) -> None:
    """Drive the states until the call ends; no error ends it without a cause and a log."""
    state: State | None = first
    while state is not None:
        s.state_name = state.name
        try:
            state = await state.run(s)
        except CallerHungUp as exc:
            side = exc.event.by
            state = Ended(f"{side}_hangup:{s.state_name}", side)
        except AriUnavailableError as exc:
            state = await _stalled(s, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error of a call is handled right here
            state = await _internal_error(s, exc)
    s.ctx.forget(s)


async def _stalled(s: CallSession, exc: AriUnavailableError) -> State | None:
    failed = s.state_name
    if not s.ctx.connected():
        # The connection is gone: reconciliation takes the call over when it is back.
        log.warning("ari lost mid-call; call left for reconciliation",
                    extra={"call_id": s.call_id, "state": failed})
        if s.agent_id is not None:
            s.ctx.distributor.release(s.agent_id, s.call_id, talked=False)
        for listener in s.listeners:
            await listener.close_local()
        s.listeners.clear()
        return None
    s.stalls += 1
    log.warning("ari request stalled mid-call; recovering the call",
                extra={"call_id": s.call_id, "state": failed, "error": str(exc)})
    if failed == "ended":
        return None  # the teardown's own requests are best effort; the sweep finishes it
    if failed == "recovering" or s.stalls > s.ctx.settings.ari_retries:
        # A PBX that keeps stalling this call's requests: no endless recover-and-fail loop.
        return Ended(f"ari_unreachable:{s.call.state}", "system")
    return Recover(failed, "ari_stalled")


async def _internal_error(s: CallSession, exc: Exception) -> State | None:
    failed = s.state_name
    s.internal_errors += 1
    log.error("call flow failed", exc_info=exc, extra={
        "call_id": s.call_id, "state": failed, "errors": s.internal_errors})
    if failed == "ended":
        try:
            await release_call(s)
        except Exception as again:  # noqa: BLE001 - logged; the sweep removes the leftovers
            log.error("call teardown failed", exc_info=again, extra={"call_id": s.call_id})
        return None
    if s.internal_errors >= s.ctx.settings.max_internal_errors:
        return Ended(f"internal_error:{failed}", "system")
    return Recover(failed, f"internal_error:{type(exc).__name__}")


@dataclass
class Recover:
    """After a failure in ``failed``: make sure the caller is still there, then go on safely."""

    failed: str
    why: str
    name: str = "recovering"

    async def run(self, s: CallSession) -> State | None:
        settings = s.ctx.settings
        connected = False
        for attempt in range(settings.ari_retries + 1):
            if attempt:
                await asyncio.sleep(settings.ari_retry_pause_s * attempt)
            if s.gone is not None:
                raise CallerHungUp(s.gone)
            if not s.ctx.connected():
                raise AriUnavailableError("ARI connection lost while recovering")
            try:
                await s.ctx.ari.request("GET", f"/channels/{s.channel_id}")
                connected = await self._still_talking(s)
                break
            except AriRequestError as exc:
                if exc.status == 404:
                    raise CallerHungUp(s.gone or CallerGone(16, "channel gone", "unknown")
                                       ) from exc
            except AriUnavailableError:
                continue
        else:
            return Ended(f"ari_unreachable:{self.failed}", "system")
        if not connected:
            await release_agent(s)
        await s.record("recovered", {"from_state": self.failed, "why": self.why,
                                     "stalls": s.stalls, "errors": s.internal_errors})
        return await self._next(s, connected)

    async def _still_talking(self, s: CallSession) -> bool:
        # Caller and agent already share the mixing bridge: leave them talking.
        if self.failed != "connected" or not (s.mixing_bridge_id and s.agent_channel_id):
            return False
        try:
            bridge = await s.ctx.ari.request("GET", f"/bridges/{s.mixing_bridge_id}")
        except AriRequestError:
            return False
        inside = set((bridge or {}).get("channels") or [])
        return {s.channel_id, s.agent_channel_id} <= inside

    async def _next(self, s: CallSession, connected: bool) -> State:
        failed, internal = self.failed, self.why.startswith("internal_error")
        plan = QueuePlan.from_route(s.call.route) if s.call.route else None
        if connected and plan is not None:
            return Connected(plan, resumed=True)
        if failed == "answering":
            return Answer()
        if failed in ("greeting", "menu"):
            if internal:
                await self._keypad_only(s)
            if s.internal_errors >= 2:
                return Routing("human_agent", "fallback")
            return Menu()
        if failed in VERIFY_STATES:
            # Nothing was proven: the security experts take the call (tier 3).
            verification = {**(s.call.verification or {}), "interrupted": failed,
                            "error": self.why, "decision": "none"}
            await s.record("verification", verification, verification=verification)
            return Routing("account_security", "degraded")
        if failed == "callback":
            return Callback("retry")
        if plan is None or failed == "routing":
            plan = _fallback(s)
            await s.record("fallback_route", {"region": plan.region,
                                              "overflow_regions": list(plan.overflow_regions)},
                           route=_plan_json(plan))
        return Queued(plan, resumed=s.holding_bridge_id is not None)

    @staticmethod
    async def _keypad_only(s: CallSession) -> None:
        s.keypad_only = True
        for listener in [item for item in s.listeners if item.speaker == "caller"]:
            s.listeners.remove(listener)
            await listener.close()
        await s.record("speech_unavailable", {"speaker": "caller", "error": "internal error",
                                              "keypad_only": True})


def _fallback(s: CallSession) -> QueuePlan:
    if s.ctx.fallback_plan is not None:
        plan: QueuePlan = s.ctx.fallback_plan(s)
        return plan
    region = s.call.route_region or s.call.region or "east"
    return QueuePlan(region, None, 0, (), 30.0, 15.0, 300.0)


def _plan_json(plan: QueuePlan) -> dict[str, object]:
    return RoutingDecision(
        "queue", plan.region, plan.skill, plan.priority, plan.overflow_regions,
        plan.overflow_after_s, plan.ring_timeout_s, plan.max_wait_s, None, None,
        "fallback: the routing rules failed for this call", datetime.now(UTC)).to_json()
