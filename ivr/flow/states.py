"""The call flow as explicit states. Each state's ``run`` returns the next state (None: done).

    Greeting -> Menu -> Routing -> Queued <-> RingingAgent -> Connected -> Ended
                  |         |         \\-> Callback -> Ended
                  |         \\-> Callback / Ended (after hours)
                  \\-> (3 failures) Routing(human_agent)

A caller hang-up in any state raises :class:`CallerHungUp` out of the state; the runner
(:mod:`ivr.flow.runner`) turns it into ``Ended``, which tears down everything the call created,
and turns stalled ARI requests and internal errors into a fallback for the caller.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from asr.errors import AsrError
from ivr import phone
from ivr.errors import AriError, AriUnavailableError
from ivr.flow.events import AgentAnswered, AgentGone, CallerInput, Dtmf
from ivr.flow.session import CallSession
from ivr.flow.verify import VerifyCode

log = logging.getLogger(__name__)

KEY_INTENTS = {
    "1": "billing", "2": "product_info", "3": "account_security", "4": "technical_fault",
    "5": "capacity", "6": "ticket_status", "7": "complaint", "0": "human_agent",
}
SPEECH_MIN_CONFIDENCE = 0.5
_CALLBACK_NUMBER = re.compile(r"^(1\d{10}|0\d{9,11}|\d{7,8})$")


class State(Protocol):
    """One step of the call flow."""

    name: str

    async def run(self, s: CallSession) -> State | None:
        """Do this step; return the next state, or None when the call is finished."""
        ...


@dataclass(frozen=True)
class QueuePlan:
    """The parts of a routing decision the queue needs (rebuilt from the stored decision)."""

    region: str
    skill: str | None
    priority: int
    overflow_regions: tuple[str, ...]
    overflow_after_s: float
    ring_timeout_s: float
    max_wait_s: float

    @classmethod
    def from_route(cls, route: dict[str, Any]) -> QueuePlan:
        """From a stored ``RoutingDecision.to_json()``."""
        return cls(str(route["region"]), route.get("skill"), int(route.get("priority", 0)),
                   tuple(route.get("overflow_regions") or ()),
                   float(route.get("overflow_after_s", 60.0)),
                   float(route.get("ring_timeout_s", 15.0)), float(route.get("max_wait_s", 300.0)))


# -- greeting and menu ------------------------------------------------------------------------


@dataclass
class Answer:
    """First state: answer the channel, note when, and start hearing the caller."""

    name: str = "answering"

    async def run(self, s: CallSession) -> State | None:
        await s.ctx.ari.request("POST", f"/channels/{s.channel_id}/answer")
        await s.record("answered", {}, answered_at=datetime.now(UTC), state="greeting")
        if not s.listeners:
            await listen(s, s.channel_id, "caller")
        return Greeting()


@dataclass
class Greeting:
    """Answer has happened; greet the caller (Mandarin by default)."""

    name: str = "greeting"

    async def run(self, s: CallSession) -> State | None:
        await s.record("state", {"state": self.name}, state=self.name)
        heard = await s.play(["greeting"])
        return Menu(first_input=heard)


@dataclass
class Menu:
    """Listen for a key or speech; whichever comes first wins."""

    first_input: CallerInput | None = None
    name: str = "menu"

    async def run(self, s: CallSession) -> State | None:
        settings = s.ctx.settings
        await s.record("state", {"state": self.name}, state=self.name)
        heard = self.first_input
        while True:
            if heard is None:
                heard = await s.play(["menu"])
            if heard is None:
                heard = await s.wait_input(settings.menu_timeout_s)
            if heard is None:
                next_state = await self._failure(s, "no_input")
            elif isinstance(heard, Dtmf) and heard.digit == settings.english_key:
                s.menu_path.append(heard.digit)
                s.language = "en" if s.language == "zh" else "zh"
                for listener in s.listeners:
                    if listener.speaker == "caller":
                        listener.language = s.language
                await s.record("language", {"language": s.language}, language=s.language,
                               menu_path=list(s.menu_path))
                heard = None
                continue
            elif isinstance(heard, Dtmf):
                s.menu_path.append(heard.digit)
                intent = KEY_INTENTS.get(heard.digit)
                if intent is not None:
                    return Routing(intent, "keypad", key_at=heard.at)
                next_state = await self._failure(s, "invalid_key")
            else:
                s.menu_path.append(f"speech:{heard.intent}")
                if heard.intent != "unknown" and heard.confidence >= SPEECH_MIN_CONFIDENCE:
                    return Routing(heard.intent, "speech")
                next_state = await self._failure(s, "not_understood")
            if next_state is not None:
                return next_state
            heard = await s.play(["no_input" if s.menu_path[-1:] == ["timeout"] else "invalid"])

    async def _failure(self, s: CallSession, reason: str) -> State | None:
        s.failures += 1
        if reason == "no_input":
            s.menu_path.append("timeout")
        await s.record("menu_failure", {"reason": reason, "failures": s.failures},
                       menu_path=list(s.menu_path))
        if s.failures >= s.ctx.settings.max_failures:
            return Routing("human_agent", "fallback")
        return None


# -- routing ----------------------------------------------------------------------------------


@dataclass
class Routing:
    """Decide where the call goes with the routing rules."""

    intent: str
    source: str
    key_at: datetime | None = None  # when the key that chose the intent was pressed
    name: str = "routing"

    async def run(self, s: CallSession) -> State | None:
        if self.intent == "account_security" and s.call.verification is None:
            return VerifyCode(then=self)  # the identity check first, then back here
        decision = s.ctx.route_call(s, self.intent)
        route = decision.to_json()
        data = dict(route)
        if self.key_at is not None:
            data["after_key_ms"] = round(
                (datetime.now(UTC) - self.key_at).total_seconds() * 1000, 1)
        await s.record("routed", data, intent=self.intent, intent_source=self.source,
                       menu_path=list(s.menu_path), route=route, route_rule_id=decision.rule_id,
                       route_region=decision.region, language=s.language)
        if decision.action == "queue":
            return Queued(QueuePlan.from_route(route))
        if decision.action == "callback":
            return Callback("after_hours")
        await s.play(["after_hours", "goodbye"], interruptible=False)
        return Ended("after_hours", "system")


# -- queue and agents -------------------------------------------------------------------------


@dataclass
class Queued:
    """Wait in a holding bridge with music until an agent of an eligible region is free."""

    plan: QueuePlan
    resumed: bool = False
    name: str = "queued"

    async def run(self, s: CallSession) -> State | None:
        ctx, plan = s.ctx, self.plan
        dist = ctx.distributor
        all_regions = [plan.region, *plan.overflow_regions]
        if not dist.registered_in(all_regions):
            return Callback("no_agents")
        overflowed = s.call.overflow
        if s.holding_bridge_id is None:
            if not self.resumed:
                await s.play(["transfer"], interruptible=False)
            await self._hold(s)
        if s.call.queued_at is None:
            await s.record("queued", {"region": plan.region, "priority": plan.priority},
                           state=self.name, queued_at=datetime.now(UTC),
                           holding_bridge_id=s.holding_bridge_id)
        elif s.call.state != self.name:
            await s.record("requeued", {}, state=self.name,
                           holding_bridge_id=s.holding_bridge_id)
        queued_at = s.call.queued_at or datetime.now(UTC)
        waited = (datetime.now(UTC) - queued_at).total_seconds()
        started = ctx.clock() - max(waited, 0.0)
        dist.join(s.call_id, plan.priority, [plan.region], plan.skill, joined_at=started)
        if overflowed:
            dist.widen(s.call_id, plan.overflow_regions)
        last_announce = ctx.clock()
        while True:
            agent = await dist.claim_shared(s.call_id)
            if agent is not None:
                return RingingAgent(plan, agent.agent_id)
            elapsed = ctx.clock() - started
            # Overflow after the rule's wait, or at once when nobody of the target region is in.
            due = elapsed >= plan.overflow_after_s or not dist.registered_in([plan.region])
            if not overflowed and plan.overflow_regions and due:
                overflowed = True
                dist.widen(s.call_id, plan.overflow_regions)
                await s.record("overflow", {"regions": list(plan.overflow_regions),
                                            "after_s": round(elapsed, 1)}, overflow=True)
                await s.play(["overflow"], interruptible=False)
            if elapsed >= plan.max_wait_s:
                dist.leave(s.call_id)
                return Callback("max_wait")
            if not dist.registered_in(all_regions if overflowed else [plan.region]) and (
                    overflowed or not plan.overflow_regions):
                dist.leave(s.call_id)
                return Callback("no_agents")
            if ctx.clock() - last_announce >= ctx.settings.position_announce_every_s:
                position = dist.position(s.call_id)
                key = f"queue_position_{position}" if 1 <= position <= 9 else "queue_position_many"
                await s.play([key], interruptible=False)
                last_announce = ctx.clock()
            await s.next_event(ctx.settings.queue_poll_s)

    async def _hold(self, s: CallSession) -> None:
        ari = s.ctx.ari
        bridge = await ari.request("POST", "/bridges",
                                   params={"type": "holding", "name": f"hold-{s.call_id}"})
        s.holding_bridge_id = str(bridge["id"])
        await s.record("holding", {"bridge_id": s.holding_bridge_id},
                       holding_bridge_id=s.holding_bridge_id)
        await ari.request("POST", f"/bridges/{s.holding_bridge_id}/addChannel",
                          params={"channel": s.channel_id, "role": "participant"})
        with contextlib.suppress(AriError):  # no music configured: the caller waits in silence
            await ari.request("POST", f"/bridges/{s.holding_bridge_id}/moh",
                              params={"mohClass": "default"})


RING_BACKSTOP_S = 5
CAUSE_NO_USER_RESPONSE = 18  # Q.850: "No user responding"
CAUSE_NO_ANSWER = 19  # Q.850: "User alerting, no answer" (the dial timeout or the phone's own)


@dataclass
class RingingAgent:
    """Originate the chosen agent inside our application; wait for answer or give up."""

    plan: QueuePlan
    agent_id: str
    name: str = "ringing_agent"

    async def run(self, s: CallSession) -> State | None:
        ctx = s.ctx
        channel_id = f"agent-{uuid.uuid4().hex}"
        s.agent_channel_id, s.agent_id = channel_id, self.agent_id
        ctx.register_channel(channel_id, s)
        await s.record("agent_ringing", {"agent_id": self.agent_id}, state=self.name,
                       agent_channel_id=channel_id)
        try:
            await ctx.ari.request("POST", "/channels", params={
                "endpoint": f"PJSIP/{self.agent_id}", "app": ctx.app,
                "appArgs": f"agent,{s.call_id}", "channelId": channel_id,
                # Our own timer below decides; Asterisk's dial timeout is only a backstop
                # should this controller stall, so it must never fire first.
                "timeout": int(self.plan.ring_timeout_s) + RING_BACKSTOP_S,
                "callerId": phone.national(s.call.caller_number)})
        except AriUnavailableError:
            raise
        except AriError as exc:
            return await self._missed(s, f"originate failed: {exc}")
        deadline = ctx.clock() + self.plan.ring_timeout_s
        while True:
            event = await s.next_event(deadline - ctx.clock())
            if event is None:
                await s.hangup_channel(channel_id)
                return await self._missed(s, "no_answer")
            if isinstance(event, AgentAnswered) and event.channel_id == channel_id:
                return Connected(self.plan)
            if isinstance(event, AgentGone) and event.channel_id == channel_id:
                if event.cause in (CAUSE_NO_ANSWER, CAUSE_NO_USER_RESPONSE):
                    return await self._missed(s, "no_answer")
                return await self._missed(s, event.cause_txt or "agent leg ended")

    async def _missed(self, s: CallSession, reason: str) -> State:
        s.ctx.distributor.release(self.agent_id, s.call_id, talked=False)
        s.agent_channel_id = None
        s.agent_id = None
        await s.record("agent_missed", {"agent_id": self.agent_id, "reason": reason},
                       agent_channel_id=None)
        return Queued(self.plan, resumed=True)


@dataclass
class Connected:
    """Caller and agent talk in a mixing bridge until either hangs up."""

    plan: QueuePlan
    resumed: bool = False
    name: str = "connected"

    async def run(self, s: CallSession) -> State | None:
        ari = s.ctx.ari
        s.ctx.distributor.leave(s.call_id)
        if not self.resumed:
            bridge = await ari.request("POST", "/bridges",
                                       params={"type": "mixing", "name": f"call-{s.call_id}"})
            s.mixing_bridge_id = str(bridge["id"])
            if s.holding_bridge_id is not None:
                with contextlib.suppress(AriError):
                    await ari.request("POST", f"/bridges/{s.holding_bridge_id}/removeChannel",
                                      params={"channel": s.channel_id})
                await s.destroy_bridge(s.holding_bridge_id)
                s.holding_bridge_id = None
            await ari.request("POST", f"/bridges/{s.mixing_bridge_id}/addChannel",
                              params={"channel": f"{s.channel_id},{s.agent_channel_id}"})
            agent = s.ctx.distributor.agents.get(s.agent_id or "")
            await s.record("connected", {"agent_id": s.agent_id}, state=self.name,
                           connected_at=datetime.now(UTC), agent_id=s.agent_id,
                           agent_channel_id=s.agent_channel_id, holding_bridge_id=None,
                           mixing_bridge_id=s.mixing_bridge_id,
                           route_region=agent.region if agent else s.call.route_region)
            await listen(s, s.agent_channel_id, "agent")
        while True:
            event = await s.next_event(None)
            if isinstance(event, AgentGone) and event.channel_id == s.agent_channel_id:
                return Ended("agent_hangup", "agent")


# -- callback and end -------------------------------------------------------------------------


@dataclass
class Callback:
    """Nobody can take the call: take a callback number by keypad."""

    reason: str
    name: str = "callback"

    async def run(self, s: CallSession) -> State | None:
        s.ctx.distributor.leave(s.call_id)
        if s.holding_bridge_id is not None:
            await s.destroy_bridge(s.holding_bridge_id)
            s.holding_bridge_id = None
        await s.record("callback_offered", {"reason": self.reason}, state=self.name,
                       holding_bridge_id=None)
        settings = s.ctx.settings
        offer = "after_hours" if self.reason == "after_hours" else "callback_offer"
        for _ in range(settings.callback_attempts):
            heard = await s.play([offer])
            digits = await s.keyed_digits(heard, max_digits=16)
            if _CALLBACK_NUMBER.match(digits):
                region = s.call.route_region or s.call.region
                await s.ctx.journal.write("callback", functools.partial(
                    s.ctx.store.add_callback, s.call_id, phone.canonical(digits), region,
                    self.reason,
                    at=datetime.now(UTC)))
                await s.play(["callback_confirm", "goodbye"], interruptible=False)
                return Ended("callback_requested", "system")
            await s.record("callback_invalid", {"length": len(digits)})
            offer = "callback_invalid"
        await s.play(["goodbye"], interruptible=False)
        return Ended("callback_not_given", "system")


@dataclass
class Ended:
    """Tear down every channel and bridge this call created; write the final record."""

    cause: str
    by: str
    name: str = "ended"

    async def run(self, s: CallSession) -> State | None:
        await release_call(s)
        await s.record("ended", {"cause": self.cause, "by": self.by}, state=self.name,
                       ended_at=datetime.now(UTC), hangup_cause=self.cause, hangup_by=self.by)
        s.ctx.wake_waiting()
        return None


async def release_agent(s: CallSession) -> None:
    """Give back the agent this call holds (claim, leg, its listener, the mixing bridge)."""
    if s.agent_id is not None:
        s.ctx.distributor.release(s.agent_id, s.call_id, talked=s.call.connected_at is not None)
    for listener in [item for item in s.listeners if item.speaker != "caller"]:
        s.listeners.remove(listener)
        await listener.close()
    await s.hangup_channel(s.agent_channel_id)
    await s.destroy_bridge(s.mixing_bridge_id)
    s.agent_id = s.agent_channel_id = s.mixing_bridge_id = None


async def release_call(s: CallSession) -> None:
    """Give back everything the call holds: queue place, agent, listeners, bridges, channel.

    Each step stands alone (ARI errors are already absorbed by the helpers), so a failure in
    one never keeps the others from running."""
    s.ctx.distributor.leave(s.call_id)
    await release_agent(s)
    for listener in s.listeners:
        await listener.close()
    s.listeners.clear()
    await s.destroy_bridge(s.holding_bridge_id)
    s.holding_bridge_id = None
    if s.gone is None:
        await s.hangup_channel(s.channel_id)


async def listen(s: CallSession, channel_id: str | None, speaker: str) -> None:
    """Start transcribing one leg; without speech services, or on failure, stay keypad-only."""
    speech = s.ctx.speech
    if speech is None or channel_id is None or (s.keypad_only and speaker == "caller"):
        return
    from ivr.speech.listener import LegListener

    listener = LegListener(speech, s.ctx.ari, s.ctx.app, s.call_id, channel_id, speaker,
                           s.call.started_at, s.deliver if speaker == "caller" else None,
                           s.ctx.ignore_channel)
    if speech.settings.language is not None:
        listener.language = s.language  # the call's menu language (9 switches it)
    try:
        await listener.start()
    except AriUnavailableError:
        raise
    except (AriError, AsrError, OSError) as exc:
        # ARI errors name the request and Asterisk's message; no personal data in them.
        log.warning("speech path unavailable for this leg", extra={
            "call_id": s.call_id, "speaker": speaker, "error": str(exc)})
        await s.record("speech_unavailable", {"speaker": speaker, "error": str(exc)})
        return
    s.listeners.append(listener)
