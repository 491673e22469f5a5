"""Typed events a call's state machine reacts to (control first: hang-ups beat everything)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dtmf:
    """The caller pressed a key."""

    digit: str


@dataclass(frozen=True)
class PlaybackDone:
    """A prompt finished (or was stopped)."""

    playback_id: str


@dataclass(frozen=True)
class CallerGone:
    """The caller's channel left our application (hang-up)."""

    cause: int
    cause_txt: str


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
class Wake:
    """Something changed for waiting calls (an agent may be free)."""


FlowEvent = Dtmf | PlaybackDone | CallerGone | AgentAnswered | AgentGone | SpeechStarted | \
    IntentHeard | Wake
CallerInput = Dtmf | IntentHeard
