"""One call's context: its inbox of events, prompt playback with barge-in, store writes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ivr.ari.client import AriClient
from ivr.bus import EventBus
from ivr.errors import AriError, AriRequestError
from ivr.flow.events import (
    CallerGone,
    CallerInput,
    Dtmf,
    FlowEvent,
    IntentHeard,
    PlaybackDone,
    SpeechStarted,
)
from ivr.routing.acd import Distributor
from ivr.settings import FlowSettings
from ivr.store.journal import CallJournal
from ivr.store.repository import Store, StoredCall

if TYPE_CHECKING:
    from ivr.flow.voice import VoiceTier
    from ivr.speech.listener import LegListener, SpeechServices
    from ivr.verification.codes import VerificationServices

log = logging.getLogger(__name__)

INBOX_LIMIT = 256


def call_summary(call: StoredCall) -> dict[str, Any]:
    """One row of the live board (numbers in clear: the API masks them by role)."""
    verification = call.verification or {}
    return {"call_id": call.id, "caller_number": call.caller_number, "region": call.region,
            "intent": call.intent, "state": call.state, "language": call.language,
            "agent_id": call.agent_id, "route_region": call.route_region,
            "verification": verification.get("decision"),
            "started_at": _iso(call.started_at), "queued_at": _iso(call.queued_at),
            "connected_at": _iso(call.connected_at), "ended_at": _iso(call.ended_at),
            "hangup_cause": call.hangup_cause}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class CallerHungUp(Exception):
    """Raised inside a state when the caller's channel is gone."""

    def __init__(self, event: CallerGone) -> None:
        super().__init__(event.cause_txt)
        self.event = event


@dataclass
class Prompts:
    """Where the spoken prompts are, as Asterisk sees them."""

    sounds_dir: str  # e.g. /srv/ivr/instances/default/sounds

    def media(self, language: str, key: str) -> str:
        """ARI media URI of one prompt."""
        return f"sound:{self.sounds_dir}/{language}/{key}"


@dataclass
class FlowContext:
    """What every call's state machine shares."""

    ari: AriClient
    store: Store
    distributor: Distributor
    prompts: Prompts
    settings: FlowSettings
    app: str
    route_call: Callable[..., Any]  # (session) -> RoutingDecision; set by the controller
    register_channel: Callable[[str, CallSession], None]
    register_playback: Callable[[str, CallSession], None]
    forget: Callable[[CallSession], None]
    wake_waiting: Callable[[], None]
    clock: Callable[[], float] = time.monotonic
    speech: SpeechServices | None = None  # None: keypad only
    ignore_channel: Callable[[str], None] = lambda _channel: None
    verification: VerificationServices | None = None
    voice: VoiceTier | None = None  # None: no tier 2 (no model, no master key, or disabled)
    bus: EventBus | None = None  # live view: every recorded call event is published here
    journal: CallJournal = field(default_factory=CallJournal)
    # Whether this context's ARI connection is still the controller's live one.
    connected: Callable[[], bool] = lambda: True
    # Where a call goes when its own route cannot be decided (rules failed): (session) -> plan.
    fallback_plan: Callable[..., Any] | None = None


@dataclass
class CallSession:
    """The live side of one call; states read events from ``inbox``."""

    ctx: FlowContext
    call: StoredCall
    channel_id: str
    language: str = "zh"
    failures: int = 0
    menu_path: list[str] = field(default_factory=list)
    inbox: asyncio.Queue[FlowEvent] = field(default_factory=lambda: asyncio.Queue(INBOX_LIMIT))
    gone: CallerGone | None = None
    agent_channel_id: str | None = None
    agent_id: str | None = None
    holding_bridge_id: str | None = None
    mixing_bridge_id: str | None = None
    state_name: str = "ringing"
    pending: list[FlowEvent] = field(default_factory=list)
    listeners: list[LegListener] = field(default_factory=list)
    internal_errors: int = 0  # errors of our own this call met (each degrades it)
    stalls: int = 0  # ARI requests of this call that timed out with the connection up
    keypad_only: bool = False  # speech was turned off for this call after an error

    @property
    def call_id(self) -> str:
        """Our id of the call."""
        return self.call.id

    # -- events ------------------------------------------------------------------------------

    def deliver(self, event: FlowEvent) -> None:
        """Queue an event for the state machine (called by the controller)."""
        if isinstance(event, CallerGone):
            self.gone = self.gone or event
        try:
            self.inbox.put_nowait(event)
        except asyncio.QueueFull:
            # Drop policy: the inbox only overflows if the flow is stuck; a hang-up is never
            # lost because ``gone`` is set above and checked before every wait.
            log.warning("call inbox full; event dropped",
                        extra={"call_id": self.call_id, "event": type(event).__name__})

    async def next_event(self, within_s: float | None) -> FlowEvent | None:
        """The next event, or None on timeout; raises :class:`CallerHungUp` once gone."""
        if self.pending:
            return self.pending.pop(0)
        if self.gone is not None:
            raise CallerHungUp(self.gone)
        try:
            if within_s is None:
                event = await self.inbox.get()
            else:
                event = await asyncio.wait_for(self.inbox.get(), max(within_s, 0.0))
        except TimeoutError:
            return None
        if isinstance(event, CallerGone):
            raise CallerHungUp(event)
        return event

    # -- store -------------------------------------------------------------------------------

    async def record(self, kind: str, data: dict[str, Any] | None = None,
                     **values: Any) -> None:
        """Durably append an event (and update fields) before the flow goes on."""
        at, store, call_id = datetime.now(UTC), self.ctx.store, self.call_id
        stored = await self.ctx.journal.write(
            kind, lambda: store.record(call_id, kind, data or {}, at=at, **values))
        # The database is away: the flow goes on with its own view; the journal stores it later.
        self.call = stored if stored is not None else replace(self.call, **values)
        if self.ctx.bus is not None:
            self.ctx.bus.publish("call", self.call_id, {"kind": kind, "data": data or {},
                                                        "call": call_summary(self.call)})

    # -- prompts -----------------------------------------------------------------------------

    async def play(self, keys: Sequence[str], interruptible: bool = True) -> CallerInput | None:
        """Play prompts in order; a key or speech stops them and is returned."""
        playback_id = uuid.uuid4().hex
        media = ",".join(self.ctx.prompts.media(self.language, key) for key in keys)
        self.ctx.register_playback(playback_id, self)
        try:
            await self.ctx.ari.request("POST", f"/channels/{self.channel_id}/play/{playback_id}",
                                       params={"media": media})
        except AriRequestError as exc:
            if exc.status == 404:
                raise CallerHungUp(self.gone or CallerGone(16, "channel gone")) from exc
            raise
        deferred: list[FlowEvent] = []
        try:
            while True:
                event = await self.next_event(None)
                if isinstance(event, PlaybackDone):
                    if event.playback_id == playback_id:
                        return None
                elif isinstance(event, Dtmf | IntentHeard):
                    if interruptible:
                        await self.stop_playback(playback_id)
                        return event
                elif isinstance(event, SpeechStarted):
                    if interruptible:  # barge-in: the caller talks over the prompt
                        await self.stop_playback(playback_id)
                elif event is not None:
                    deferred.append(event)  # for the state, after the prompt
        finally:
            self.pending.extend(deferred)

    async def stop_playback(self, playback_id: str) -> None:
        """Stop a playback if it is still going."""
        await self.cleanup("DELETE", f"/playbacks/{playback_id}")

    async def wait_input(self, within_s: float) -> CallerInput | None:
        """The caller's next key or utterance within ``within_s`` seconds."""
        deadline = self.ctx.clock() + within_s
        while True:
            remaining = deadline - self.ctx.clock()
            if remaining <= 0:
                return None
            event = await self.next_event(remaining)
            if event is None:
                return None
            if isinstance(event, Dtmf | IntentHeard):
                return event

    async def collect_digits(self, first_timeout: float, digit_timeout: float,
                             max_digits: int, terminator: str = "#") -> str:
        """Digits until the terminator, ``max_digits``, or a pause."""
        digits = ""
        wait = first_timeout
        while len(digits) < max_digits:
            event = await self.wait_input(wait)
            if event is None:
                break
            if isinstance(event, Dtmf):
                if event.digit == terminator:
                    break
                digits += event.digit
                wait = digit_timeout
        return digits

    async def keyed_digits(self, heard: CallerInput | None, max_digits: int) -> str:
        """Digits typed after a prompt: the key that interrupted it, then the rest up to '#'."""
        digits = heard.digit if isinstance(heard, Dtmf) and heard.digit != "#" else ""
        if not (isinstance(heard, Dtmf) and heard.digit == "#"):
            settings = self.ctx.settings
            digits += await self.collect_digits(settings.callback_first_digit_s,
                                                settings.callback_digit_s, max_digits)
        return digits

    # -- teardown ----------------------------------------------------------------------------

    async def hangup_channel(self, channel_id: str | None) -> None:
        """Hang up a channel; already gone is fine."""
        if channel_id:
            await self.cleanup("DELETE", f"/channels/{channel_id}")

    async def destroy_bridge(self, bridge_id: str | None) -> None:
        """Destroy a bridge; already gone is fine."""
        if bridge_id:
            await self.cleanup("DELETE", f"/bridges/{bridge_id}")

    async def cleanup(self, method: str, path: str) -> None:
        """A best-effort ARI request: gone already (404) is fine, anything else is logged
        (the controller's sweep removes what is left once ARI answers again)."""
        try:
            await self.ctx.ari.request(method, path)
        except AriRequestError as exc:
            if exc.status != 404:
                log.warning("ari cleanup refused", extra={"call_id": self.call_id,
                                                          "error": str(exc)})
        except AriError as exc:
            log.warning("ari cleanup failed", extra={"call_id": self.call_id, "error": str(exc)})
