"""Typed events of the speech path: audio in, turn boundaries out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AudioChunk:
    """Little-endian 16-bit mono PCM; ``timestamp_s`` is media time of its first sample."""

    pcm: bytes
    sample_rate: int
    timestamp_s: float

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.pcm) / 2 / self.sample_rate


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started speaking at ``at_s`` (media time); the barge-in signal."""

    at_s: float


@dataclass(frozen=True)
class SpeechEnded:
    """The caller stopped speaking; ``at_s`` is the end of the last voiced frame."""

    at_s: float


@dataclass(frozen=True)
class Utterance:
    """One spoken turn.

    ``start_s``/``end_s`` bound the speech itself; ``pcm`` also carries ``pre_roll_s`` seconds
    of audio before ``start_s`` so the recogniser hears the soft onset the VAD missed.
    """

    pcm: bytes
    sample_rate: int
    start_s: float
    end_s: float
    pre_roll_s: float = 0.0

    @property
    def duration_s(self) -> float:
        """Length of the speech (without pre-roll) in seconds."""
        return self.end_s - self.start_s

    @property
    def audio_start_s(self) -> float:
        """Media time of the first sample in ``pcm``."""
        return self.start_s - self.pre_roll_s
