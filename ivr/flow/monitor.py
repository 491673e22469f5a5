"""Supervisor monitoring: listen, whisper and barge on a live call through ARI snoop.

The supervisor's own SIP phone is rung (``PJSIP/<phone>``); when it answers, a snoop channel on
the agent's leg (or the caller's leg before an agent is connected) is bridged with it:

    listen   spy=both  whisper=none   hears caller and agent, says nothing to anyone
    whisper  spy=both  whisper=out    hears both; only the agent hears the supervisor
    barge    spy=both  whisper=both   hears both; caller and agent hear the supervisor

Either side ending (the supervisor hangs up, or the call ends and its snoop goes with it) tears
the whole monitor down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from ivr.ari.client import AriClient
from ivr.errors import AriError, AriRequestError, MonitorRefused

log = logging.getLogger(__name__)

Mode = Literal["listen", "whisper", "barge"]
WHISPER: dict[str, str] = {"listen": "none", "whisper": "out", "barge": "both"}


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

    def as_dict(self) -> dict[str, Any]:
        """API form."""
        return {"monitor_id": self.id, "call_id": self.call_id, "mode": self.mode,
                "phone": self.phone, "target": self.target, "state": self.state}


class Monitoring:
    """Every monitor of one controller, keyed by the channels it owns."""

    def __init__(self, app: str, phones: tuple[str, ...]) -> None:
        self.app = app
        self.phones = phones
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
        if mode != "listen" and agent_channel is None:
            raise MonitorRefused(409, f"{mode} needs an agent on the call; only listen is "
                                 "possible before the agent answers")
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

    async def answered(self, ari: AriClient, channel_id: str) -> None:
        """The supervisor picked up: snoop on the target and bridge the two."""
        monitor = self._by_channel.get(channel_id)
        if monitor is None:
            with contextlib.suppress(AriError):
                await ari.request("DELETE", f"/channels/{channel_id}")
            return
        try:
            self._by_channel[monitor.snoop_channel] = monitor
            await ari.request("POST", f"/channels/{monitor.target_channel}/snoop", params={
                "spy": "both", "whisper": WHISPER[monitor.mode], "app": self.app,
                "appArgs": f"snoop,{monitor.call_id},monitor", "snoopId": monitor.snoop_channel})
            await ari.request("POST", "/bridges", params={
                "type": "mixing", "bridgeId": monitor.bridge_id,
                "name": f"monitor-{monitor.call_id}"})
            await _add_channels(ari, monitor.bridge_id,
                                [monitor.phone_channel, monitor.snoop_channel])
        except AriError as exc:
            log.warning("monitor could not start", extra={"call_id": monitor.call_id,
                                                          "error": str(exc)})
            await self.end(ari, monitor)
            return
        monitor.state = "active"
        log.info("monitor active", extra={"call_id": monitor.call_id, "mode": monitor.mode})

    async def channel_gone(self, ari: AriClient | None, channel_id: str) -> None:
        """A phone leg or snoop ended: end the monitor it belonged to."""
        monitor = self._by_channel.get(channel_id)
        if monitor is not None:
            await self.end(ari, monitor)

    async def end(self, ari: AriClient | None, monitor: Monitor) -> None:
        """Hang up what is left of a monitor; safe to call twice."""
        if monitor.state == "ended":
            return
        monitor.state = "ended"
        for channel in (monitor.phone_channel, monitor.snoop_channel):
            self._by_channel.pop(channel, None)
        if ari is None:
            return
        for channel in (monitor.phone_channel, monitor.snoop_channel):
            with contextlib.suppress(AriError):
                await ari.request("DELETE", f"/channels/{channel}")
        with contextlib.suppress(AriError):
            await ari.request("DELETE", f"/bridges/{monitor.bridge_id}")


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
