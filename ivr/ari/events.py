"""Typed ARI events: the ones the controller uses get a dataclass, the rest stay raw."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Channel:
    """The parts of an ARI channel object we rely on."""

    id: str
    name: str
    state: str
    caller_number: str
    caller_name: str
    dialplan_exten: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Channel:
        """Build from the ``channel`` object of an ARI event or response."""
        caller = data.get("caller") or {}
        dialplan = data.get("dialplan") or {}
        return cls(
            id=str(data.get("id", "")), name=str(data.get("name", "")),
            state=str(data.get("state", "")), caller_number=str(caller.get("number", "")),
            caller_name=str(caller.get("name", "")), dialplan_exten=str(dialplan.get("exten", "")),
        )


@dataclass(frozen=True)
class AriEvent:
    """Any ARI event; ``raw`` is the decoded JSON."""

    type: str
    application: str
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class StasisStart(AriEvent):
    """A channel entered our Stasis application."""

    channel: Channel
    args: tuple[str, ...]


@dataclass(frozen=True)
class StasisEnd(AriEvent):
    """A channel left our Stasis application."""

    channel: Channel


@dataclass(frozen=True)
class ChannelDtmfReceived(AriEvent):
    """A DTMF digit finished on a channel."""

    channel: Channel
    digit: str
    duration_ms: int


@dataclass(frozen=True)
class ChannelStateChange(AriEvent):
    """A channel changed state (Ring, Up, ...)."""

    channel: Channel


@dataclass(frozen=True)
class ChannelHangupRequest(AriEvent):
    """Someone asked to hang a channel up (``soft``: Asterisk itself, e.g. on shutdown)."""

    channel: Channel
    cause: int
    soft: bool = False


@dataclass(frozen=True)
class ChannelDestroyed(AriEvent):
    """A channel is gone."""

    channel: Channel
    cause: int
    cause_txt: str


@dataclass(frozen=True)
class PlaybackFinished(AriEvent):
    """A playback completed or was stopped."""

    playback_id: str
    target_uri: str
    state: str


def parse_event(data: dict[str, Any]) -> AriEvent:
    """Turn decoded ARI event JSON into the most specific event class we know."""
    kind = str(data.get("type", ""))
    app = str(data.get("application", ""))
    channel = Channel.from_json(data["channel"]) if isinstance(data.get("channel"), dict) else None
    if channel is not None:
        if kind == "StasisStart":
            return StasisStart(kind, app, data, channel, tuple(data.get("args") or ()))
        if kind == "StasisEnd":
            return StasisEnd(kind, app, data, channel)
        if kind == "ChannelDtmfReceived":
            return ChannelDtmfReceived(kind, app, data, channel, str(data.get("digit", "")),
                                       int(data.get("duration_ms", 0)))
        if kind == "ChannelStateChange":
            return ChannelStateChange(kind, app, data, channel)
        if kind == "ChannelHangupRequest":
            return ChannelHangupRequest(kind, app, data, channel, int(data.get("cause", 0)),
                                        bool(data.get("soft", False)))
        if kind == "ChannelDestroyed":
            return ChannelDestroyed(kind, app, data, channel, int(data.get("cause", 0)),
                                    str(data.get("cause_txt", "")))
    if kind == "PlaybackFinished" and isinstance(data.get("playback"), dict):
        playback = data["playback"]
        return PlaybackFinished(kind, app, data, str(playback.get("id", "")),
                                str(playback.get("target_uri", "")), str(playback.get("state", "")))
    return AriEvent(kind, app, data)
