"""Typed events a call's state machine reacts to (control first: hang-ups beat everything)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Dtmf:
    """The caller pressed a key."""

    digit: str
    at: datetime | None = None  # when Asterisk saw it (the ARI event's time)


@dataclass(frozen=True)
class PlaybackDone:
    """A prompt finished (or was stopped)."""

    playback_id: str


@dataclass(frozen=True)
class CallerGone:
    """The caller's channel left our application (hang-up)."""

    cause: int
    cause_txt: str
    by: str = "caller"  # who ended it: "caller", or "pbx" (Asterisk shut down or cut it)


@dataclass(frozen=True)
class AgentAnswered:
    """The agent leg we originated was answered and entered our application."""

    channel_id: str


@dataclass(frozen=True)
class AgentGone:
    """The agent leg ended (no answer, busy, or hang-up)."""

    channel_id: str
    cause: int
    cause_txt: str
    by: str = "agent"  # who ended it: "agent", or "pbx"


@dataclass(frozen=True)
class SpeechStarted:
    """The speech path heard the caller start talking (barge-in)."""


@dataclass(frozen=True)
class IntentHeard:
    """The speech path understood an utterance (the hook the ASR issue plugs into)."""

    intent: str
    confidence: float
    text: str


@dataclass(frozen=True)
class Spoken:
    """One finished caller utterance with its audio, for tiers that need the voice itself.

    Delivered for every caller utterance (also those the recogniser dropped); ``started_at`` is
    the flow clock (monotonic) when speech began, so a state can ignore what was said before it
    asked. ``pcm`` is 16 kHz little-endian 16-bit mono.
    """

    text: str
    dropped: bool
    started_at: float
    pcm: bytes = field(repr=False)


@dataclass(frozen=True)
class Wake:
    """Something changed for waiting calls (an agent may be free)."""


FlowEvent = Dtmf | PlaybackDone | CallerGone | AgentAnswered | AgentGone | SpeechStarted | \
    IntentHeard | Spoken | Wake
CallerInput = Dtmf | IntentHeard
