"""The hotline controller: one ARI connection, one state machine per call, reconciliation.

Events from the ARI WebSocket are turned into typed flow events and delivered to the call they
belong to (by caller channel, agent channel or playback id). When the connection drops, every
call is left as stored; on reconnect the controller compares the store with the channels and
bridges still in our Stasis application and resumes each call, or sends it to the human queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ivr import phone
from ivr.ari.client import AriClient
from ivr.ari.events import (
    AriEvent,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    PlaybackFinished,
    StasisEnd,
    StasisStart,
)
from ivr.asterisk.instance import AriCredentials
from ivr.bus import EventBus
from ivr.errors import AriError, AriRequestError, MonitorRefused
from ivr.flow.events import (
    AgentAnswered,
    AgentGone,
    CallerGone,
    Dtmf,
    FlowEvent,
    PlaybackDone,
    Wake,
)
from ivr.flow.monitor import BROWSER, WHISPER, Monitor, Monitoring, MonitorMedia
from ivr.flow.runner import run_call
from ivr.flow.session import CallSession, FlowContext, Prompts, call_summary
from ivr.flow.states import (
    Answer,
    Connected,
    Ended,
    Queued,
    QueuePlan,
    Routing,
    State,
    listen,
)
from ivr.flow.voice import VoiceTier
from ivr.health import Readiness, TaskGroup
from ivr.routing.acd import Distributor, agents_from_accounts
from ivr.routing.rules import RoutingDecision
from ivr.routing.service import RoutingService
from ivr.settings import FlowSettings, HealthSettings
from ivr.speech.listener import SpeechServices
from ivr.store.journal import CallJournal
from ivr.store.repository import VERIFY_STATES, Store, StoredCall
from ivr.verification.codes import VerificationServices

log = logging.getLogger(__name__)


@dataclass
class _Registry:
    by_channel: dict[str, CallSession] = field(default_factory=dict)
    by_playback: dict[str, CallSession] = field(default_factory=dict)
    by_call: dict[str, CallSession] = field(default_factory=dict)
    early: dict[str, list[FlowEvent]] = field(default_factory=dict)


def ari_time(stamp: object) -> datetime | None:
    """An ARI event's timestamp (``2026-12-01T09:00:00.123+0000``) as an aware datetime."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


class EventLag:
    """How late the last 1,000 ARI events were handled."""

    def __init__(self, size: int = 1000) -> None:
        self._lags: collections.deque[float] = collections.deque(maxlen=size)

    def note(self, stamp: object) -> None:
        """One event handled now, stamped ``stamp`` by Asterisk."""
        at = ari_time(stamp)
        if at is not None:
            self._lags.append(max((datetime.now(UTC) - at).total_seconds(), 0.0))

    def quantiles(self) -> dict[str, float]:
        """p50, p95, p99 and max, in seconds (nothing before the first event)."""
        ordered = sorted(self._lags)
        if not ordered:
            return {}
        return {name: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
                for name, q in (("0.5", 0.5), ("0.95", 0.95), ("0.99", 0.99), ("1", 1.0))}


class HotlineController:
    """Keeps the ARI connection (capped exponential backoff) and runs every call's flow."""

    def __init__(self, creds: AriCredentials, readiness: Readiness, store: Store,
                 routing: RoutingService, distributor: Distributor, prompts: Prompts,
                 flow: FlowSettings, max_backoff_s: float = 10.0,
                 speech: SpeechServices | None = None,
                 verification: VerificationServices | None = None,
                 voice: VoiceTier | None = None, bus: EventBus | None = None,
                 supervisor_phones: tuple[str, ...] = (), health: HealthSettings | None = None,
                 journal: CallJournal | None = None,
                 monitor_media: MonitorMedia | None = None) -> None:
        self.creds = creds
        self.readiness = readiness
        self.store = store
        self.routing = routing
        self.distributor = distributor
        self.prompts = prompts
        self.flow = flow
        self.max_backoff_s = max_backoff_s
        self.speech = speech
        self.verification = verification
        self.voice = voice
        self.bus = bus
        self.monitoring = Monitoring(creds.app, supervisor_phones, monitor_media)
        self._acd_pending = False
        distributor.on_change = self._acd_changed
        self.health = health or HealthSettings.model_validate({})
        self.journal = journal or CallJournal(readiness)
        self._media_channels: set[str] = set()
        self.calls = TaskGroup("calls")  # one task per call's state machine
        self.tasks = TaskGroup("controller")  # monitors, refusals, the sweep
        self._suspects: set[str] = set()  # in our application without a state machine, once
        self._pbx_started: str | None = None  # Asterisk's startup time, to see restarts
        self._pbx_restarted = False
        self.refused_total = 0
        self.event_lag = EventLag()  # Asterisk's event time to our dispatch
        self._reg = _Registry()
        self._ari: AriClient | None = None
        self._recent: dict[tuple[str, str, str, str], None] = {}

    # -- connection --------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled; no error ends this loop (each is logged and said in
        /ready), so a PBX that comes back is always picked up again."""
        backoff = 0.5
        while True:
            try:
                async with AriClient(self.creds, self.health.ari_timeout_s) as ari:
                    stream = await ari.subscribe()
                    try:
                        self._ari = ari
                        await self._subscribe_agents(ari)
                        await self._sync_agents(ari)
                        await self._reconcile(ari)
                        self.readiness.set("ari", True)
                        log.info("ari connected", extra={"app": self.creds.app})
                        backoff = 0.5
                        sweep = self.tasks.spawn(self._sweep_forever(ari), "sweep")
                        try:
                            async for event in stream:
                                self._dispatch(event)
                        finally:
                            sweep.cancel()
                    finally:
                        # Said before closing: with a frozen PBX the close handshake waits.
                        self.readiness.set("ari", False, "ARI events connection lost")
                        await stream.aclose()
            except AriError as exc:
                self.readiness.set("ari", False, f"ARI unavailable: {exc}")
                log.warning("ari unavailable", extra={"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - logged, said in /ready, retried
                self.readiness.set("ari", False, f"controller error: {type(exc).__name__}: {exc}")
                log.exception("controller connection failed; retrying")
            finally:
                self.readiness.set("ari", False)  # keeps the reason said above
                self._ari = None
                await self._drop_sessions()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff_s)

    async def probe(self) -> None:
        """One ARI request through the live connection (readiness: a frozen PBX fails it).
        Without a connection there is nothing to probe: check ``ari`` already says so."""
        ari = self._ari
        if ari is not None:
            await ari.request("GET", "/asterisk/ping")

    async def _drop_sessions(self) -> None:
        await self.monitoring.drop_all("PBX connection lost")
        # The calls stay in the store as they were; reconciliation picks them up again.
        for session in list(self._reg.by_call.values()):
            for listener in session.listeners:
                await listener.close_local()
        await self.calls.cancel_all()
        self._reg = _Registry()
        self._suspects.clear()
        # Claims and queue places are rebuilt on reconnect from what is really bridged and
        # ringing: an agent must never stay busy for a call that no longer rings them.
        self.distributor.release_all()

    async def aclose(self) -> None:
        """Cancel every call task (calls stay stored for the next start)."""
        await self.calls.cancel_all()
        await self.tasks.cancel_all()

    def _spawn(self, coro: Any, what: str = "task", **context: Any) -> None:
        self.tasks.spawn(coro, what, context)

    # -- live view ---------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """Active calls, agents and queues now (the live WebSocket's first message)."""
        calls = await asyncio.to_thread(self.store.active_calls)
        acd = self.distributor.snapshot()
        return {"calls": [call_summary(c) for c in calls], "agents": acd["agents"],
                "waiting": acd["waiting"], "ari_connected": self._ari is not None}

    def _monitorable(self, call_id: str, mode: str) -> tuple[AriClient, CallSession, str | None]:
        """The live call's session and its agent leg (None before an agent answered), or the
        reason a monitor cannot start."""
        session = self._reg.by_call.get(call_id)
        if session is None or session.gone is not None or self._ari is None:
            raise MonitorRefused(404, f"no live call {call_id!r}")
        if mode not in WHISPER:
            raise MonitorRefused(422, f"unknown mode {mode!r}")
        connected = session.state_name == "connected" and session.agent_channel_id is not None
        return self._ari, session, session.agent_channel_id if connected else None

    async def supervise(self, call_id: str, mode: str, phone: str) -> dict[str, Any]:
        """Ring a supervisor's phone to listen / whisper / barge on a live call."""
        ari, session, agent_leg = self._monitorable(call_id, mode)
        monitor = await self.monitoring.start(
            ari, call_id, mode, phone, session.channel_id,  # type: ignore[arg-type]
            agent_leg)
        await session.record("monitor_started", {"mode": mode, "phone": phone,
                                                 "monitor_id": monitor.id})
        return monitor.as_dict()

    async def supervise_in_browser(self, call_id: str, mode: str, by: str) -> Monitor:
        """Listen / whisper / barge from the supervisor's browser: the returned monitor's
        ``audio`` carries the call's sound out and the supervisor's voice in."""
        ari, session, agent_leg = self._monitorable(call_id, mode)
        monitor = await self.monitoring.start_browser(
            ari, call_id, mode, session.channel_id,  # type: ignore[arg-type]
            agent_leg)
        await session.record("monitor_started", {"mode": mode, "phone": BROWSER, "by": by,
                                                 "monitor_id": monitor.id})
        return monitor

    async def end_browser_monitor(self, monitor: Monitor, reason: str) -> None:
        """The supervisor's page went away (or asked to stop): take the monitor down."""
        await self.monitoring.end(self._ari, monitor, reason)
        session = self._reg.by_call.get(monitor.call_id)
        if session is not None and session.gone is None:
            await session.record("monitor_ended", {"monitor_id": monitor.id, "reason": reason})

    # -- context handed to call sessions -----------------------------------------------------

    def _context(self, ari: AriClient) -> FlowContext:
        return FlowContext(
            ari=ari, store=self.store, distributor=self.distributor, prompts=self.prompts,
            settings=self.flow, app=self.creds.app, route_call=self._route_call,
            register_channel=self._register_channel, register_playback=self._register_playback,
            forget=self._forget, wake_waiting=self._wake_waiting, speech=self.speech,
            ignore_channel=self._media_channels.add, verification=self.verification,
            voice=self.voice, bus=self.bus, journal=self.journal,
            connected=lambda: self._ari is ari, fallback_plan=self._fallback_plan)

    def _fallback_plan(self, s: CallSession) -> QueuePlan:
        # The rules could not decide: the caller's region first, then every other region.
        region = s.call.region or self.routing.settings.default_region
        others = tuple(r for r in self.routing.regions if r != region)
        return QueuePlan(region, None, 0, others, 30.0, 15.0, 300.0)

    def _route_call(self, s: CallSession, intent: str) -> RoutingDecision:
        decision, _rule = self.routing.decide_for(
            s.call.caller_number, s.call.region or self.routing.settings.default_region, intent,
            language=s.language,
            verification=(s.call.verification or {}).get("decision") if s.call.verification
            else None)
        return decision

    def _register_channel(self, channel_id: str, session: CallSession) -> None:
        self._reg.by_channel[channel_id] = session
        for event in self._reg.early.pop(channel_id, []):
            session.deliver(event)

    def _register_playback(self, playback_id: str, session: CallSession) -> None:
        self._reg.by_playback[playback_id] = session

    def _forget(self, session: CallSession) -> None:
        for table in (self._reg.by_channel, self._reg.by_playback):
            for key in [k for k, v in table.items() if v is session]:
                del table[key]
        self._reg.by_call.pop(session.call_id, None)

    def _wake_waiting(self) -> None:
        for call_id in list(self.distributor.waiting):
            session = self._reg.by_call.get(call_id)
            if session is not None:
                session.deliver(Wake())

    def _start(self, session: CallSession, first: State) -> None:
        self._reg.by_call[session.call_id] = session
        self._register_channel(session.channel_id, session)
        if session.agent_channel_id:
            self._register_channel(session.agent_channel_id, session)
        self.calls.spawn(run_call(session, first), "call", {"call_id": session.call_id})

    # -- events ------------------------------------------------------------------------------

    def _seen_before(self, event: AriEvent) -> bool:
        # A channel reachable through two subscriptions (its own and its endpoint's) gets each
        # event twice; ARI events carry no id, so identical (type, time, channel) repeats go.
        channel = event.raw.get("channel") or {}
        key = (event.type, str(event.raw.get("timestamp", "")), str(channel.get("id", "")),
               str(event.raw.get("digit", "")))
        if not key[1] or event.type in ("EndpointStateChange", "PlaybackFinished"):
            return False
        if key in self._recent:
            return True
        self._recent[key] = None
        if len(self._recent) > 512:
            self._recent.pop(next(iter(self._recent)))
        return False

    def _dispatch(self, event: AriEvent) -> None:
        self.event_lag.note(event.raw.get("timestamp"))
        try:
            self._route_event(event)
        except Exception:  # noqa: BLE001 - one bad event must not cut every call's events
            log.exception("ari event not handled", extra={"event": event.type})

    def _route_event(self, event: AriEvent) -> None:
        if self._seen_before(event):
            return
        if isinstance(event, StasisStart):
            if (event.channel.id in self._media_channels or event.args[:1] == ("snoop",)
                    or (not event.args and self.monitoring.owns(event.channel.id))):
                return  # our own listening legs (snoop / ExternalMedia)
            if event.args and event.args[0] == "agent":
                self._agent_answered(event)
            elif event.args and event.args[0] == "supervisor":
                if self._ari is not None:
                    self._spawn(self.monitoring.answered(self._ari, event.channel.id), "monitor")
            else:
                refusal = self._admission()
                if refusal is not None:
                    self._spawn(self._refuse(event, refusal), "refuse")
                    return
                self._reg.early[event.channel.id] = []
                self._spawn(self._new_call(event), "new_call", channel=event.channel.id)
            return
        if event.type == "EndpointStateChange":
            self._endpoint_changed(event.raw.get("endpoint") or {})
            return
        if isinstance(event, PlaybackFinished):
            session = self._reg.by_playback.pop(event.playback_id, None)
            if session is not None:
                session.deliver(PlaybackDone(event.playback_id))
            return
        channel = getattr(event, "channel", None)
        if channel is None:
            return
        if isinstance(event, ChannelDestroyed):
            self._media_channels.discard(channel.id)
        if isinstance(event, ChannelDestroyed | StasisEnd) and self.monitoring.owns(channel.id):
            self._spawn(self.monitoring.channel_gone(self._ari, channel.id), "monitor")
            return
        flow_event = self._flow_event(event, channel.id)
        if flow_event is None:
            return
        session = self._reg.by_channel.get(channel.id)
        if session is None:
            if channel.id in self._reg.early:
                self._reg.early[channel.id].append(flow_event)
            return
        if isinstance(flow_event, CallerGone) and channel.id != session.channel_id:
            flow_event = AgentGone(channel.id, flow_event.cause, flow_event.cause_txt,
                                   "pbx" if flow_event.by == "pbx" else "agent")
        session.deliver(flow_event)

    @staticmethod
    def _flow_event(event: AriEvent, channel_id: str) -> FlowEvent | None:
        if isinstance(event, ChannelDtmfReceived):
            return Dtmf(event.digit, ari_time(event.raw.get("timestamp")))
        if isinstance(event, ChannelDestroyed):
            return CallerGone(event.cause, event.cause_txt or "destroyed")
        if isinstance(event, StasisEnd):
            return CallerGone(16, "left application")
        if isinstance(event, ChannelHangupRequest):
            # A soft hang-up request comes from Asterisk itself (shutdown, restart), not a party.
            return CallerGone(event.cause, "hangup requested", "pbx" if event.soft else "caller")
        return None

    def _agent_answered(self, event: StasisStart) -> None:
        session = self._reg.by_channel.get(event.channel.id)
        if session is None and len(event.args) > 1:
            session = self._reg.by_call.get(event.args[1])
        if session is None or session.agent_channel_id != event.channel.id:
            # An agent leg nobody waits for any more (the caller left first): hang it up.
            if self._ari is not None:
                self._spawn(self._hangup(self._ari, event.channel.id), "hangup")
            return
        session.deliver(AgentAnswered(event.channel.id))

    @staticmethod
    async def _hangup(ari: AriClient, channel_id: str, reason: str | None = None) -> None:
        try:
            await ari.request("DELETE", f"/channels/{channel_id}",
                              params={"reason": reason} if reason else None)
        except AriRequestError as exc:
            if exc.status != 404:
                log.warning("hang-up refused", extra={"error": str(exc)})
        except AriError as exc:
            log.warning("hang-up failed; the sweep retries", extra={"error": str(exc)})

    # -- admission control -------------------------------------------------------------------

    def _admission(self) -> str | None:
        """Why a new call must be refused now (overload), or None to take it."""
        sessions = self._reg.by_call.values()
        total = len(self._reg.by_call) + len(self._reg.early)
        if total >= self.flow.max_calls:
            return f"max_calls:{self.flow.max_calls}"
        setting_up = len(self._reg.early) + sum(
            1 for s in sessions if s.state_name in ("ringing", "answering"))
        if setting_up >= self.flow.max_setup:
            return f"max_setup:{self.flow.max_setup}"
        if self._ari is None:
            return "ari_unavailable"
        return None

    async def _refuse(self, event: StasisStart, why: str) -> None:
        # Refused before answer: the caller hears busy (SIP 486) at once, and the call is
        # stored as ended with the reason, so every call is accounted for.
        self.refused_total += 1
        log.warning("call refused", extra={"why": why, "calls": len(self._reg.by_call)})
        ari = self._ari
        if ari is not None:
            await self._hangup(ari, event.channel.id, reason="busy")
        await self._store_new_call(ari, event.channel, state="ended",
                                   ended_at=datetime.now(UTC), hangup_cause=f"refused:{why}",
                                   hangup_by="system")

    def _endpoint_changed(self, endpoint: dict[str, Any]) -> None:
        if endpoint.get("technology") != "PJSIP":
            return
        ours = set(self._reg.by_channel)
        foreign = [c for c in endpoint.get("channel_ids") or [] if c not in ours]
        self.distributor.set_registered(str(endpoint.get("resource")),
                                        endpoint.get("state") == "online", len(foreign))
        self._wake_waiting()

    def _acd_changed(self) -> None:
        # Agents or queues changed: publish once per loop turn however many changes it made.
        if self.bus is None or self._acd_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._acd_pending = True
        loop.call_soon(self._publish_acd)
        # An agent in wrap-up becomes available by the clock alone: publish again then.
        now = self.distributor.clock()
        ends = [a.wrap_up_until - now for a in self.distributor.agents.values()
                if a.wrap_up_until > now]
        if ends:
            loop.call_later(min(ends) + 0.05, self._acd_changed)

    def _publish_acd(self) -> None:
        self._acd_pending = False
        if self.bus is not None:
            self.bus.publish("acd", "", self.distributor.snapshot())

    async def _subscribe_agents(self, ari: AriClient) -> None:
        # Only the agents' endpoints: subscribing to all of PJSIP would also subscribe our app
        # to every caller channel a second time, and ARI would deliver their events twice.
        # An agent configured here but missing on the PBX is logged, not fatal.
        existing = {str(e.get("resource")) for e in await ari.request("GET", "/endpoints/PJSIP")
                    or []}
        missing = sorted(set(self.distributor.agents) - existing)
        if missing:
            log.warning("agents not configured on the PBX", extra={"agents": missing})
        sources = [f"endpoint:PJSIP/{a}" for a in self.distributor.agents if a in existing]
        if sources:
            await ari.request("POST", f"/applications/{self.creds.app}/subscription",
                              params={"eventSource": ",".join(sources)})

    async def _sync_agents(self, ari: AriClient) -> None:
        for endpoint in await ari.request("GET", "/endpoints/PJSIP") or []:
            self._endpoint_changed(endpoint)

    # -- a new call --------------------------------------------------------------------------

    async def _new_call(self, event: StasisStart) -> None:
        ari = self._ari
        if ari is None:
            return
        channel = event.channel
        try:
            call = await self._store_new_call(ari, channel)
        except Exception:
            # The caller must not sit in our application without a state machine.
            self._reg.early.pop(channel.id, None)
            log.exception("new call not taken", extra={"channel": channel.id})
            await self._hangup(ari, channel.id, reason="congestion")
            return
        session = CallSession(self._context(ari), call, channel.id,
                              language=self.flow.greeting_language)
        log.info("call started", extra={"call_id": call.id, "caller_number":
                                        channel.caller_number, "region": call.region})
        self._start(session, Answer())

    async def _store_new_call(self, ari: AriClient | None, channel: Channel,
                              state: str = "ringing", **extra: Any) -> StoredCall:
        """Store a call of ``channel`` (through the journal: a locked database never holds
        the caller); a ringing call also gets its SIP Call-ID."""
        sip_call_id = None
        if state == "ringing" and ari is not None:
            try:
                var = await ari.request("GET", f"/channels/{channel.id}/variable",
                                        params={"variable": "CHANNEL(pjsip,call-id)"})
                sip_call_id = (var or {}).get("value") or None
            except AriError as exc:  # the SIP Call-ID is a convenience for lookups only
                log.info("no sip call-id for a new call", extra={"error": str(exc)})
        resolution = self.routing.resolver.resolve(channel.caller_number)
        values: dict[str, Any] = {
            "channel_id": channel.id, "caller_number": phone.canonical(channel.caller_number),
            "dialed_number": channel.dialplan_exten, "sip_call_id": sip_call_id,
            "region": resolution.region, "region_source": resolution.source,
            "region_reason": resolution.reason, "province": resolution.province,
            "city": resolution.city, "node_id": self.store.node_id, **extra}
        call_id, now, store = uuid.uuid4().hex, datetime.now(UTC), self.store
        stored = await self.journal.write("call_started", lambda: store.create_call(
            call_id=call_id, started_at=now, state=state, **values))
        return stored or StoredCall.fresh(call_id, started_at=now, state=state, **values)

    # -- reconciliation ----------------------------------------------------------------------

    async def _reconcile(self, ari: AriClient, sweep: bool = False) -> None:
        """Make the store, our state machines and ARI agree.

        On (re)connect: every stored active call is resumed, re-queued or closed, and every
        channel in our application that no call holds is taken (callers) or hung up (our own
        leftover legs). As a periodic sweep (``sweep``): the same for what has no live state
        machine in two sweeps running, so nothing stays stranded even if a flow is lost."""
        app = await ari.request("GET", f"/applications/{self.creds.app}") or {}
        in_app = set(app.get("channel_ids") or [])
        bridges = {str(b["id"]) for b in await ari.request("GET", "/bridges") or []}
        if not sweep:
            await self._note_pbx_start(ari)
            if self.distributor.ledger is not None:
                # Claims this node held before (a crash, a lost connection) are rebuilt below
                # from what really rings and talks.
                await asyncio.to_thread(self.distributor.ledger.release_node)
        suspects: set[str] = set()
        known: set[str] = set()
        referenced: set[str] = set()
        # Only this node's calls: others' channels live on other nodes' Asterisk (their own
        # controllers reconcile them, or a lost node's are closed by NodeLease.reap).
        calls = await asyncio.to_thread(self.store.active_calls, self.store.node_id)
        # Connected calls first: their agents are marked busy before any resumed queue claims.
        calls.sort(key=lambda c: c.state != "connected")
        for call in calls:
            known.update(c for c in (call.channel_id, call.agent_channel_id) if c)
            referenced.update(b for b in (call.holding_bridge_id, call.mixing_bridge_id) if b)
            if sweep:
                if call.id in self._reg.by_call:
                    continue
                suspects.add(call.id)
                if call.id not in self._suspects:
                    continue
            await self._reconcile_call(ari, call, in_app, bridges, sweep)
        live = self._live_ids()
        if not sweep:
            for bridge_id in set(app.get("bridge_ids") or []) - referenced:
                # Listening bridges of a controller that died, or bridges of closed calls.
                await self._destroy(ari, bridge_id)
        for channel_id in in_app - known - live:
            if sweep:
                suspects.add(channel_id)
                if channel_id not in self._suspects:
                    continue
            await self._adopt(ari, channel_id)
        self._suspects = suspects

    def _live_ids(self) -> set[str]:
        ids = set(self._reg.by_channel) | set(self._reg.early) | self._media_channels
        for session in self._reg.by_call.values():
            for listener in session.listeners:
                ids.update((listener.snoop_id, listener.media_id))
        return {i for i in ids if i} | self.monitoring.channel_ids()

    async def _adopt(self, ari: AriClient, channel_id: str) -> None:
        # In our application but no call holds it: an agent or listening leg is hung up; a
        # caller whose call already ended is hung up; any other caller goes to the human queue.
        channel = await self._channel(ari, channel_id)
        if channel is None:
            return
        name = str(channel.get("name", ""))
        if (name.startswith(("PJSIP/agent-", "Snoop/", "UnicastRTP/"))
                or channel_id.startswith(("snoop-", "media-", "agent-"))):
            await self._hangup(ari, channel_id)
            return
        stored = await asyncio.to_thread(self.store.find_by_channel, channel_id)
        if stored is not None and stored.state == "ended":
            log.warning("caller of an ended call still in the application; hung up",
                        extra={"call_id": stored.id})
            await self._hangup(ari, channel_id)
            return
        call = await self._store_new_call(ari, Channel.from_json(channel), state="menu")
        session = CallSession(self._context(ari), call, channel_id)
        await session.record("reconciled", {"action": "human_queue", "why": "not stored"})
        log.warning("caller without a call flow taken to the human queue",
                    extra={"call_id": call.id})
        self._start(session, Routing("human_agent", "reconciled"))

    async def _note_pbx_start(self, ari: AriClient) -> None:
        try:
            info = await ari.request("GET", "/asterisk/info") or {}
        except AriError as exc:
            log.info("asterisk info unavailable", extra={"error": str(exc)})
            return
        started = str((info.get("status") or {}).get("startup_time") or "") or None
        self._pbx_restarted = (self._pbx_started is not None and started is not None
                               and started != self._pbx_started)
        self._pbx_started = started

    async def _destroy(self, ari: AriClient, bridge_id: str) -> None:
        try:
            await ari.request("DELETE", f"/bridges/{bridge_id}")
        except AriError as exc:
            log.info("leftover bridge not removed", extra={"error": str(exc)})

    async def _sweep_forever(self, ari: AriClient) -> None:
        while True:
            await asyncio.sleep(self.flow.sweep_every_s)
            try:
                await self._reconcile(ari, sweep=True)
            except AriError as exc:
                log.warning("sweep skipped: ari", extra={"error": str(exc)})
            except Exception:  # noqa: BLE001 - logged; the next sweep tries again
                log.exception("sweep failed")

    @staticmethod
    async def _channel(ari: AriClient, channel_id: str) -> dict[str, Any] | None:
        try:
            channel: dict[str, Any] = await ari.request("GET", f"/channels/{channel_id}")
            return channel
        except AriError:
            return None

    async def _reconcile_call(self, ari: AriClient, call: StoredCall, in_app: set[str],
                              bridges: set[str], sweep: bool = False) -> None:
        ctx = self._context(ari)
        session = CallSession(ctx, call, call.channel_id, language=call.language,
                              menu_path=list(call.menu_path), agent_id=call.agent_id,
                              agent_channel_id=call.agent_channel_id,
                              holding_bridge_id=call.holding_bridge_id
                              if call.holding_bridge_id in bridges else None,
                              mixing_bridge_id=call.mixing_bridge_id
                              if call.mixing_bridge_id in bridges else None)
        if call.channel_id not in in_app:
            # Who ended it is unknown, unless the PBX restarted meanwhile (then the PBX did).
            if sweep:
                cause, by = f"lost:{call.state}", "unknown"
            elif self._pbx_restarted:
                cause, by = f"pbx_restart:{call.state}", "pbx"
            else:
                cause, by = f"caller_gone_during_outage:{call.state}", "unknown"
            session.gone = CallerGone(16, "gone while the controller was away", by)
            await session.record("reconciled", {"action": "ended", "from_state": call.state})
            self._reg.by_call[call.id] = session
            self.calls.spawn(run_call(session, Ended(cause, by)), "call", {"call_id": call.id})
            return
        plan = QueuePlan.from_route(call.route) if call.route else None
        agent_up = call.agent_channel_id in in_app if call.agent_channel_id else False
        first: State
        if (call.state == "connected" and plan and agent_up and session.mixing_bridge_id
                and call.agent_id):
            self.distributor.mark_talking(call.agent_id, call.id)
            first, action = Connected(plan, resumed=True), "resume_connected"
        elif call.state in ("queued", "ringing_agent") and plan is not None:
            if call.agent_channel_id:
                await self._hangup(ari, call.agent_channel_id)
                session.agent_channel_id, session.agent_id = None, None
            first, action = Queued(plan, resumed=True), "resume_queue"
        elif call.state in VERIFY_STATES:
            # The identity check was cut off: nothing was proven, the experts take the call.
            verification = {**(call.verification or {}), "interrupted": call.state,
                            "decision": "none"}
            await session.record("verification", verification, verification=verification)
            first, action = Routing("account_security", "reconciled"), "security_queue"
        else:
            await session.destroy_bridge(session.holding_bridge_id)
            session.holding_bridge_id = None
            first, action = Routing("human_agent", "reconciled"), "human_queue"
        await session.record("reconciled", {"action": action, "from_state": call.state},
                             agent_channel_id=session.agent_channel_id)
        # The listening legs died with the old connection; the conversation is heard again.
        await listen(session, call.channel_id, "caller")
        if action == "resume_connected":
            await listen(session, call.agent_channel_id, "agent")
        log.info("call reconciled", extra={"call_id": call.id, "action": action})
        self._start(session, first)


def distributor_for(agents: Sequence[tuple[str, str]], skills: dict[str, list[str]],
                    wrap_up_s: float) -> Distributor:
    """A distributor for (agent_id, region) pairs."""
    return Distributor(agents_from_accounts(agents, skills), wrap_up_s)
