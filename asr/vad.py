"""Turn detection: webrtcvad frame decisions turned into speech start/end and utterances.

Cost: webrtcvad takes a few microseconds per 20 ms frame (``measure_frame_cost_us``), four
orders of magnitude under real time, so it runs inline on the event loop; a thread hop would
cost more than the work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import webrtcvad

from asr.frames import AudioChunk, SpeechEnded, SpeechStarted, Utterance

log = logging.getLogger(__name__)

TurnEvent = SpeechStarted | SpeechEnded | Utterance


@dataclass(frozen=True)
class VadOptions:
    """Turn-detection thresholds; every value is configuration, none is a law of nature."""

    aggressiveness: int = 2  # webrtcvad mode 0 (lenient) .. 3 (strict)
    frame_ms: int = 20  # webrtcvad accepts 10, 20 or 30
    pre_roll_ms: int = 300  # audio kept before the onset so soft consonants reach the ASR
    hangover_ms: int = 500  # silence that ends a turn
    min_speech_ms: int = 250  # shorter bursts are clicks or coughs, not turns
    max_utterance_s: float = 15.0  # cut long monologues so the ASR sees bounded pieces
    sample_rate: int = 16000
    # Onset needs this much voiced audio within the window: one stray voiced frame in line
    # noise must not barge in over a prompt.
    onset_voiced_ms: int = 60
    onset_window_ms: int = 100
    # webrtcvad's noise model starts from zero, so the first frames of a noisy line read as
    # speech; onsets are not declared until it has adapted (the frames still feed pre-roll).
    warmup_ms: int = 200
    event_queue_size: int = 64
    # With a second-stage check (Silero): after it rejects an onset, ask again at most this
    # often while webrtcvad keeps hearing "speech" (music on hold would ask on every frame).
    recheck_ms: int = 100

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError("aggressiveness must be 0..3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30")
        if self.sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError("webrtcvad supports 8, 16, 32 or 48 kHz")
        if self.onset_voiced_ms > self.onset_window_ms:
            raise ValueError("onset_voiced_ms must not exceed onset_window_ms")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one VAD frame of 16-bit PCM."""
        return self.sample_rate * self.frame_ms // 1000 * 2

    def frames(self, ms: float) -> int:
        """Whole frames covering ``ms`` milliseconds (at least one)."""
        return max(1, round(ms / self.frame_ms))


@dataclass
class _Frame:
    pcm: bytes
    start_s: float
    voiced: bool


_END: Final = object()


class TurnDetector:
    """Per-call turn detector with the shared stream shape.

    ``push_frame`` / ``flush`` / ``end_input`` feed it, ``async for event in detector`` reads
    ``SpeechStarted``, ``SpeechEnded`` and ``Utterance``; ``process`` is the synchronous core.
    """

    def __init__(self, options: VadOptions | None = None,
                 confirm: Callable[[bytes], bool] | None = None) -> None:
        """``confirm``, when given, gets the audio of each candidate onset (pre-roll + onset
        window) and says whether it is speech; webrtcvad alone decides otherwise."""
        self.options = options or VadOptions()
        self._vad = webrtcvad.Vad(self.options.aggressiveness)
        self._confirm = confirm
        self._recheck_left = 0
        self.rejected_onsets = 0
        opts = self.options
        self._onset_window = opts.frames(opts.onset_window_ms)
        self._onset_needed = opts.frames(opts.onset_voiced_ms)
        self._pre_roll = opts.frames(opts.pre_roll_ms) if opts.pre_roll_ms > 0 else 0
        self._hangover = opts.frames(opts.hangover_ms)
        # Idle history: enough for the pre-roll plus the onset window it precedes.
        self._history: deque[_Frame] = deque(maxlen=self._pre_roll + self._onset_window)
        self._speech: list[_Frame] | None = None  # frames of the open utterance
        self._onset_s = 0.0
        self._pre_roll_s = 0.0
        self._last_voiced_end = 0.0
        self._silent_run = 0
        self._continued = False  # the open utterance follows a max-length cut
        self._warmup_left = opts.warmup_ms // opts.frame_ms
        self._carry = bytearray()  # push_frame input not yet a whole VAD frame
        self._carry_start_s = 0.0
        self._events: asyncio.Queue[TurnEvent | object] = asyncio.Queue(opts.event_queue_size)
        self._input_ended = False
        self._closed = False
        self.dropped_events = 0

    def set_hangover(self, ms: int | None) -> None:
        """Silence that ends a turn from now on (None: the configured ``hangover_ms``); longer
        while a caller reads digits with pauses, so the answer stays one utterance."""
        self._hangover = self.options.frames(self.options.hangover_ms if ms is None else ms)

    # -- synchronous core ------------------------------------------------------------------

    def process(self, pcm_frame: bytes, t: float) -> list[TurnEvent]:
        """Classify one frame starting at media time ``t``; return the events it causes."""
        if len(pcm_frame) != self.options.frame_bytes:
            raise ValueError(
                f"frame must be {self.options.frame_bytes} bytes, got {len(pcm_frame)}"
            )
        voiced = self._vad.is_speech(pcm_frame, self.options.sample_rate)
        frame = _Frame(pcm_frame, t, voiced)
        if self._speech is None:
            return self._idle(frame)
        return self._speaking(frame)

    def finish(self) -> list[TurnEvent]:
        """Close an open turn now (end of input or an explicit flush)."""
        if self._speech is None:
            return []
        return self._close_turn()

    def _frame_end(self, frame: _Frame) -> float:
        return frame.start_s + self.options.frame_ms / 1000

    def _idle(self, frame: _Frame) -> list[TurnEvent]:
        self._history.append(frame)
        if self._warmup_left > 0:
            self._warmup_left -= 1
            return []
        window = list(self._history)[-self._onset_window :]
        if sum(f.voiced for f in window) < self._onset_needed:
            return []
        history = list(self._history)
        if self._confirm is not None:
            if self._recheck_left > 0:
                self._recheck_left -= 1
                return []
            if not self._confirm(b"".join(f.pcm for f in history)):
                self.rejected_onsets += 1
                self._recheck_left = self.options.frames(self.options.recheck_ms) - 1
                return []
        onset_index = len(history) - len(window)
        while not history[onset_index].voiced:
            onset_index += 1
        first = max(0, onset_index - self._pre_roll)
        self._speech = history[first:]
        self._onset_s = history[onset_index].start_s
        self._pre_roll_s = self._onset_s - history[first].start_s
        self._last_voiced_end = self._frame_end(frame)
        self._silent_run = 0
        self._continued = False
        self._history.clear()
        return [SpeechStarted(self._onset_s)]

    def _speaking(self, frame: _Frame) -> list[TurnEvent]:
        assert self._speech is not None
        self._speech.append(frame)
        if frame.voiced:
            self._last_voiced_end = self._frame_end(frame)
            self._silent_run = 0
        else:
            self._silent_run += 1
        if self._silent_run >= self._hangover:
            return self._close_turn()
        if self._frame_end(frame) - self._onset_s >= self.options.max_utterance_s:
            return self._cut(frame)
        return []

    def _utterance(self, end_s: float) -> Utterance:
        assert self._speech is not None
        audio_start = self._onset_s - self._pre_roll_s
        rate = self.options.sample_rate
        pcm = b"".join(f.pcm for f in self._speech)
        keep = max(0, round((end_s - audio_start) * rate)) * 2
        return Utterance(pcm[:keep], rate, self._onset_s, end_s, self._pre_roll_s)

    def _close_turn(self) -> list[TurnEvent]:
        end_s = self._last_voiced_end
        events: list[TurnEvent] = [SpeechEnded(end_s)]
        long_enough = end_s - self._onset_s >= self.options.min_speech_ms / 1000
        # The tail after a max-length cut belongs to a long turn, so it is never a click.
        if long_enough or (self._continued and end_s > self._onset_s):
            events.append(self._utterance(end_s))
        self._speech = None
        self._history.clear()
        return events

    def _cut(self, frame: _Frame) -> list[TurnEvent]:
        # Speech is still going on: hand over what we have and keep the turn open.
        end_s = self._frame_end(frame)
        utterance = self._utterance(end_s)
        self._speech = []
        self._onset_s = end_s
        self._pre_roll_s = 0.0
        self._continued = True
        return [utterance]

    # -- stream shape ----------------------------------------------------------------------

    def push_frame(self, chunk: AudioChunk) -> None:
        """Feed audio of any length; it is cut into VAD frames and processed inline."""
        if self._input_ended or self._closed:
            raise RuntimeError("push_frame after end_input/aclose")
        if chunk.sample_rate != self.options.sample_rate:
            raise ValueError(f"expected {self.options.sample_rate} Hz, got {chunk.sample_rate}")
        if not self._carry:
            self._carry_start_s = chunk.timestamp_s
        self._carry += chunk.pcm
        size = self.options.frame_bytes
        while len(self._carry) >= size:
            self._emit(self.process(bytes(self._carry[:size]), self._carry_start_s))
            del self._carry[:size]
            self._carry_start_s += self.options.frame_ms / 1000

    def flush(self) -> None:
        """End the current turn now (e.g. the prompt was interrupted); input may continue."""
        # A partial frame cannot be classified; dropping under one frame of audio is harmless.
        self._carry.clear()
        self._emit(self.finish())

    def end_input(self) -> None:
        """No more audio: close the open turn; iteration ends after the remaining events."""
        if self._input_ended or self._closed:
            return
        self.flush()
        self._input_ended = True
        self._wake()

    async def aclose(self) -> None:
        """Stop now; events not yet read are discarded."""
        self._closed = True
        while not self._events.empty():
            self._events.get_nowait()
        self._wake()

    def __aiter__(self) -> TurnDetector:
        return self

    async def __anext__(self) -> TurnEvent:
        if self._closed or (self._input_ended and self._events.empty()):
            raise StopAsyncIteration
        item = await self._events.get()
        if isinstance(item, SpeechStarted | SpeechEnded | Utterance):
            return item
        raise StopAsyncIteration

    def _emit(self, events: list[TurnEvent]) -> None:
        for event in events:
            if self._events.full():
                # A full queue means nobody has read turns for many seconds; keep the newest.
                self._events.get_nowait()
                self.dropped_events += 1
                log.warning("turn event queue full, oldest event dropped")
            self._events.put_nowait(event)

    def _wake(self) -> None:
        if self._events.empty():
            self._events.put_nowait(_END)


def measure_frame_cost_us(frames: int = 2000, options: VadOptions | None = None) -> float:
    """Mean wall time of ``TurnDetector.process`` per frame, in microseconds."""
    opts = options or VadOptions()
    detector = TurnDetector(opts)
    rng = np.random.default_rng(0)
    samples = opts.frame_bytes // 2
    t = np.arange(samples * frames) / opts.sample_rate
    # Alternating voiced-like tone bursts and quiet noise exercise both detector paths.
    tone = 8000 * np.sin(2 * np.pi * 220 * t) * ((t % 2.0) < 1.0)
    signal = (tone + rng.normal(0, 100, t.size)).astype("<i2").tobytes()
    size = opts.frame_bytes
    started = time.perf_counter()
    for i in range(frames):
        detector.process(signal[i * size : (i + 1) * size], i * opts.frame_ms / 1000)
    return (time.perf_counter() - started) / frames * 1e6
