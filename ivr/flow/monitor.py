"""Supervisor monitoring: listen, whisper and barge on a live call through ARI snoop.

A snoop channel on the agent's leg (or the caller's leg before an agent is connected) is bridged
with the supervisor's end, which is either

- their own SIP phone (``PJSIP/<phone>``), rung first; the snoop is made when it answers, or
- their browser: an ExternalMedia channel sending slin16 RTP to a port of this process, which
  relays it over the console's WebSocket (and the browser's microphone back the same way),
  made at once (see ``MonitorAudio`` and ``ivr.api.monitor_audio``).

The snoop's settings give the three modes:

    listen   spy=both  whisper=none   hears caller and agent, says nothing to anyone
    whisper  spy=both  whisper=out    hears both; only the agent hears the supervisor
    barge    spy=both  whisper=both   hears both; caller and agent hear the supervisor

Either side ending (the supervisor hangs up or closes the page, or the call ends and its snoop
goes with it) tears the whole monitor down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from asr.errors import PortPoolExhausted
from asr.media.receiver import Address, PortPool, RtpReceiver, host_for_url
from asr.media.rtp import RtpOptions, RtpPacker
from ivr.ari.client import AriClient
from ivr.errors import AriError, AriRequestError, MonitorRefused

log = logging.getLogger(__name__)

Mode = Literal["listen", "whisper", "barge"]
WHISPER: dict[str, str] = {"listen": "none", "whisper": "out", "barge": "both"}
BROWSER = "browser"  # the ``phone`` of a monitor heard in the supervisor's browser

# G.711 µ-law between Asterisk and us, as the phones speak it. (Asterisk 22's ExternalMedia
# channel sends slin16 but drops the slin16 RTP it receives: tests/test_supervisor_calls.py's
# browser whisper test fails with it.) The browser gets and sends 16-bit PCM at 8 kHz.
MONITOR_RTP = RtpOptions(payload_types=MappingProxyType({0: "ulaw"}), sample_rate=8000)
RATE = MONITOR_RTP.sample_rate
FRAME_BYTES = MONITOR_RTP.frame_bytes  # 20 ms of 16-bit PCM, both ways
# The supervisor's voice is sent to Asterisk one frame every 20 ms, as a phone would; the
# browser delivers it in bursts (an AudioWorklet renders 16 ms blocks, the socket batches),
# and Asterisk's audio hooks keep only a short backlog. A few frames are held first to ride
# out those bursts; more than half a second waiting (a flood, or a browser far ahead) drops
# the oldest.
SPEAK_PREFILL_FRAMES = 3
SPEAK_MAX_QUEUED = 25
SPEAK_CATCH_UP = 3


@dataclass(frozen=True)
class MonitorMedia:
    """Where browser monitors' RTP is exchanged with Asterisk."""

    ports: PortPool
    host: str  # the address Asterisk sends to
    bind: str  # the address our socket binds (usually the same)


class MonitorAudio:
    """The browser's end of one monitor.

    Asterisk's ExternalMedia channel sends the snooped audio (µ-law RTP) to our port; it comes
    out of ``frames()`` as 20 ms little-endian PCM frames, with reordering and loss handled by
    the RTP receiver. ``speak()`` takes the browser's microphone (8 kHz little-endian PCM of
    any length), cuts it into 20 ms frames and sends them back to the channel's own RTP port,
    from the same socket (symmetric RTP), paced at one frame per 20 ms.
    """

    def __init__(self, receiver: RtpReceiver, port: int, ports: PortPool) -> None:
        self.receiver = receiver
        self.port = port
        self._ports = ports
        self.packer = RtpPacker(MONITOR_RTP)
        self.peer: Address | None = None  # Asterisk's end, from the channel's variables
        self._pending = bytearray()
        self._queue: collections.deque[bytes] = collections.deque()
        self._pacer: asyncio.Task[None] | None = None
        self.spoken_frames = 0
        self.dropped_frames = 0  # too far ahead of real time, or Asterisk's end not yet known
        self.ended = asyncio.Event()
        self.end_reason = ""

    async def frames(self) -> AsyncIterator[bytes]:
        """What the supervisor hears, frame by frame, until the monitor ends."""
        async for chunk in self.receiver:
            yield chunk.pcm

    def speak(self, pcm: bytes) -> None:
        """Queue the supervisor's voice (whisper and barge only; checked by the caller)."""
        if self.ended.is_set():
            return
        self._pending += pcm
        while len(self._pending) >= FRAME_BYTES:
            self._queue.append(bytes(self._pending[:FRAME_BYTES]))
            del self._pending[:FRAME_BYTES]
            if len(self._queue) > SPEAK_MAX_QUEUED:
                self._queue.popleft()
                self.dropped_frames += 1
        if self._pacer is None:
            self._pacer = asyncio.get_running_loop().create_task(self._pace())

    async def _pace(self) -> None:
        # Frames are due at a steady 50 per second from the first one sent; a late wake-up
        # (a busy machine) sends the frames it owes, at most SPEAK_CATCH_UP at once, so the
        # average stays real time without ever bursting more than Asterisk's mixer keeps.
        frame_s = FRAME_BYTES / 2 / RATE
        loop = asyncio.get_running_loop()
        started = loop.time()
        due_sent = 0  # frames sent (or skipped while empty) since ``started``
        waiting = True  # for the prefill, at the start and whenever the queue ran dry
        while not self.ended.is_set():
            await asyncio.sleep(max(0.0, started + (due_sent + 1) * frame_s - loop.time()))
            due = int((loop.time() - started) / frame_s) - due_sent
            if due > SPEAK_CATCH_UP:  # asleep for long: resume from now
                due_sent += due - SPEAK_CATCH_UP
                due = SPEAK_CATCH_UP
            for _ in range(max(due, 0)):
                due_sent += 1
                if waiting and len(self._queue) < SPEAK_PREFILL_FRAMES:
                    continue
                waiting = not self._queue
                if not waiting:
                    self._send(self._queue.popleft())

    def _send(self, frame: bytes) -> None:
        peer = self.peer or self.receiver.remote_addr
        if peer is None:
            self.dropped_frames += 1
            return
        self.receiver.send(self.packer.pack(frame), peer)
        self.spoken_frames += 1

    async def aclose(self, reason: str) -> None:
        """Stop both directions and give the port back; safe to call twice."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
        if self._pacer is not None:
            self._pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
        await self.receiver.aclose()
        self._ports.release(self.port)


@dataclass
class Monitor:
    """One supervisor phone attached to one call."""

    id: str
    call_id: str
    mode: Mode
    phone: str
    target: str  # agent | caller
    target_channel: str
    phone_channel: str
    snoop_channel: str
    bridge_id: str
    state: str = "ringing"  # ringing | active | ended
    audio: MonitorAudio | None = field(default=None, repr=False)  # browser monitors only

    def as_dict(self) -> dict[str, Any]:
        """API form."""
        return {"monitor_id": self.id, "call_id": self.call_id, "mode": self.mode,
                "phone": self.phone, "target": self.target, "state": self.state}


class Monitoring:
    """Every monitor of one controller, keyed by the channels it owns."""

    def __init__(self, app: str, phones: tuple[str, ...],
                 media: MonitorMedia | None = None) -> None:
        self.app = app
        self.phones = phones
        self.media = media
        self._by_channel: dict[str, Monitor] = {}

    def owns(self, channel_id: str) -> bool:
        """Whether the channel is a supervisor phone leg or a monitor's snoop."""
        return channel_id in self._by_channel

    def channel_ids(self) -> set[str]:
        """Every channel a monitor holds."""
        return set(self._by_channel)

    async def start(self, ari: AriClient, call_id: str, mode: Mode, phone: str,
                    caller_channel: str, agent_channel: str | None) -> Monitor:
        """Ring the supervisor's phone; the snoop is made when it answers."""
        if phone not in self.phones:
            raise MonitorRefused(422, f"unknown supervisor phone {phone!r}; "
                                 f"configured: {', '.join(self.phones) or 'none'}")
        _check_mode(mode, agent_channel)
        try:
            endpoint = await ari.request("GET", f"/endpoints/PJSIP/{phone}")
        except AriRequestError as exc:
            raise MonitorRefused(409, f"supervisor phone {phone!r} is not known to the PBX "
                                 f"({exc.status})") from exc
        if (endpoint or {}).get("state") != "online":
            # Ringing it would fail inside Asterisk ("Allocation failed"): say what to do.
            raise MonitorRefused(409, f"supervisor phone {phone!r} is not registered; register "
                                 "a SIP phone as that user (its password is in the instance's "
                                 "instance.json) and try again")
        tag = uuid.uuid4().hex[:12]
        monitor = Monitor(tag, call_id, mode, phone, "agent" if agent_channel else "caller",
                          agent_channel or caller_channel,
                          f"sup-{tag}", f"supsnoop-{tag}", f"monitor-{tag}")
        self._by_channel[monitor.phone_channel] = monitor
        try:
            await ari.request("POST", "/channels", params={
                "endpoint": f"PJSIP/{phone}", "app": self.app,
                "appArgs": f"supervisor,{tag}", "channelId": monitor.phone_channel,
                "callerId": f"monitor {mode}", "timeout": "30"})
        except AriError:
            self._by_channel.pop(monitor.phone_channel, None)
            raise
        return monitor

    async def start_browser(self, ari: AriClient, call_id: str, mode: Mode,
                            caller_channel: str, agent_channel: str | None) -> Monitor:
        """Snoop on the call and send its audio to a port of ours for the supervisor's browser
        (no phone to ring: active as soon as this returns)."""
        _check_mode(mode, agent_channel)
        media = self.media
        if media is None:
            raise MonitorRefused(503, "listening in the browser is not available in this "
                                 "process (no media address configured)")
        try:
            port = media.ports.allocate()
        except PortPoolExhausted as exc:
            raise MonitorRefused(503, f"no free media port for the monitor: {exc}") from exc
        try:
            receiver = await RtpReceiver.bind(port, MONITOR_RTP, host=media.bind)
        except OSError as exc:
            media.ports.release(port)
            raise MonitorRefused(503, f"media port {port} could not be opened: "
                                 f"{exc.strerror}") from exc
        audio = MonitorAudio(receiver, port, media.ports)
        tag = uuid.uuid4().hex[:12]
        monitor = Monitor(tag, call_id, mode, BROWSER, "agent" if agent_channel else "caller",
                          agent_channel or caller_channel, f"supmedia-{tag}",
                          f"supsnoop-{tag}", f"monitor-{tag}", audio=audio)
        self._by_channel[monitor.phone_channel] = monitor
        self._by_channel[monitor.snoop_channel] = monitor
        try:
            created = await ari.request("POST", "/channels/externalMedia", params={
                "app": self.app, "external_host": f"{host_for_url(media.host)}:{port}",
                "format": "ulaw", "channelId": monitor.phone_channel,
                "encapsulation": "rtp", "transport": "udp"})
            audio.peer = _unicast_peer(created)
            await self._snoop_and_bridge(ari, monitor)
        except BaseException:
            await self.end(ari, monitor, "could not start")
            raise
        monitor.state = "active"
        log.info("monitor active", extra={"call_id": call_id, "mode": mode,
                                          "phone": BROWSER})
        return monitor

    async def answered(self, ari: AriClient, channel_id: str) -> None:
        """The supervisor picked up: snoop on the target and bridge the two."""
        monitor = self._by_channel.get(channel_id)
        if monitor is None:
            with contextlib.suppress(AriError):
                await ari.request("DELETE", f"/channels/{channel_id}")
            return
        try:
            self._by_channel[monitor.snoop_channel] = monitor
            await self._snoop_and_bridge(ari, monitor)
        except AriError as exc:
            log.warning("monitor could not start", extra={"call_id": monitor.call_id,
                                                          "error": str(exc)})
            await self.end(ari, monitor, "could not start")
            return
        monitor.state = "active"
        log.info("monitor active", extra={"call_id": monitor.call_id, "mode": monitor.mode})

    async def _snoop_and_bridge(self, ari: AriClient, monitor: Monitor) -> None:
        await ari.request("POST", f"/channels/{monitor.target_channel}/snoop", params={
            "spy": "both", "whisper": WHISPER[monitor.mode], "app": self.app,
            "appArgs": f"snoop,{monitor.call_id},monitor", "snoopId": monitor.snoop_channel})
        await ari.request("POST", "/bridges", params={
            "type": "mixing", "bridgeId": monitor.bridge_id,
            "name": f"monitor-{monitor.call_id}"})
        await _add_channels(ari, monitor.bridge_id,
                            [monitor.phone_channel, monitor.snoop_channel])

    async def channel_gone(self, ari: AriClient | None, channel_id: str) -> None:
        """A phone leg or snoop ended: end the monitor it belonged to."""
        monitor = self._by_channel.get(channel_id)
        if monitor is not None:
            await self.end(ari, monitor, "call ended" if channel_id == monitor.snoop_channel
                           else "monitor channel ended")

    async def drop_all(self, reason: str) -> None:
        """The PBX connection is gone: end every monitor here (Asterisk drops its side)."""
        for monitor in list({id(m): m for m in self._by_channel.values()}.values()):
            await self.end(None, monitor, reason)

    async def end(self, ari: AriClient | None, monitor: Monitor, reason: str = "ended") -> None:
        """Hang up what is left of a monitor; safe to call twice."""
        if monitor.state == "ended":
            return
        monitor.state = "ended"
        for channel in (monitor.phone_channel, monitor.snoop_channel):
            self._by_channel.pop(channel, None)
        if monitor.audio is not None:
            await monitor.audio.aclose(reason)
        if ari is None:
            return
        for channel in (monitor.phone_channel, monitor.snoop_channel):
            with contextlib.suppress(AriError):
                await ari.request("DELETE", f"/channels/{channel}")
        with contextlib.suppress(AriError):
            await ari.request("DELETE", f"/bridges/{monitor.bridge_id}")


def _check_mode(mode: str, agent_channel: str | None) -> None:
    if mode != "listen" and agent_channel is None:
        raise MonitorRefused(409, f"{mode} needs an agent on the call; only listen is "
                             "possible before the agent answers")


def _unicast_peer(channel: Any) -> Address | None:
    """Asterisk's RTP address of an ExternalMedia channel (its UNICASTRTP_LOCAL_* variables)."""
    variables = channel.get("channelvars") if isinstance(channel, dict) else None
    if not isinstance(variables, dict):
        return None
    address = str(variables.get("UNICASTRTP_LOCAL_ADDRESS") or "")
    port = str(variables.get("UNICASTRTP_LOCAL_PORT") or "")
    if not address or not port.isdigit():
        return None  # learned from its first packet instead (symmetric RTP)
    return address, int(port)


async def _add_channels(ari: AriClient, bridge_id: str, channels: list[str],
                        attempts: int = 40) -> None:
    # A new snoop enters the application a moment after ARI answers its creation (422 until).
    for attempt in range(attempts):
        try:
            await ari.request("POST", f"/bridges/{bridge_id}/addChannel",
                              params={"channel": ",".join(channels)})
            return
        except AriRequestError as exc:
            if exc.status != 422 or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05)
