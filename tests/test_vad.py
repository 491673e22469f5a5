"""Turn detection on real synthesized speech (espeak-ng), clean and noisy."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from asr.frames import AudioChunk, SpeechEnded, SpeechStarted, Utterance
from asr.vad import TurnDetector, TurnEvent, VadOptions, measure_frame_cost_us

pytestmark = pytest.mark.unit

RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
TOLERANCE_S = 0.150

needs_tools = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")), reason="espeak-ng and sox needed"
)


def speak(tmp: Path, voice: str, text: str) -> np.ndarray:
    """Synthesize ``text`` and return it as 16 kHz mono int16 samples."""
    raw = tmp / f"{voice}-raw.wav"
    out = tmp / f"{voice}-16k.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True
    )
    with wave.open(str(out), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()


def speech_bounds(samples: np.ndarray) -> tuple[float, float]:
    """Where the clip's energy starts and ends: 10 ms windows above -40 dB of the loudest."""
    win = RATE // 100
    windows = samples[: samples.size // win * win].astype(np.float64).reshape(-1, win)
    rms = np.sqrt((windows**2).mean(axis=1))
    loud = np.flatnonzero(rms > rms.max() * 0.01)
    return loud[0] * win / RATE, (loud[-1] + 1) * win / RATE


def silence(seconds: float) -> np.ndarray:
    """Digital silence of the given length."""
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def add_noise(signal: np.ndarray, speech_rms: float, snr_db: float, seed: int = 1) -> np.ndarray:
    """White noise at ``snr_db`` below the speech level, over the whole signal."""
    noise_rms = speech_rms / 10 ** (snr_db / 20)
    noise = np.random.default_rng(seed).normal(0, noise_rms, signal.size)
    return np.clip(signal + noise, -32768, 32767).astype(np.int16)


def run(detector: TurnDetector, signal: np.ndarray) -> list[tuple[float, TurnEvent]]:
    """Feed whole frames through the synchronous core; return (frame time, event) pairs."""
    out: list[tuple[float, TurnEvent]] = []
    pcm = signal.astype("<i2").tobytes()
    size = FRAME_SAMPLES * 2
    for i in range(len(pcm) // size):
        t = i * FRAME_MS / 1000
        out.extend((t, e) for e in detector.process(pcm[i * size : (i + 1) * size], t))
    out.extend((len(pcm) / 2 / RATE, e) for e in detector.finish())
    return out


def utterances(events: Iterable[tuple[float, TurnEvent]]) -> list[Utterance]:
    """Only the utterances, in order."""
    return [e for _, e in events if isinstance(e, Utterance)]


class Conversation:
    """Two utterances 1.5 s apart inside a longer silence, with their true boundaries."""

    def __init__(self, first: np.ndarray, second: np.ndarray) -> None:
        lead, gap, tail = silence(1.0), silence(1.5), silence(1.0)
        self.signal = np.concatenate([lead, first, gap, second, tail])
        self.bounds: list[tuple[float, float]] = []
        offset = lead.size
        for clip in (first, second):
            start, end = speech_bounds(clip)
            self.bounds.append((offset / RATE + start, offset / RATE + end))
            offset += clip.size + gap.size
        voiced = np.concatenate([first, second]).astype(np.float64)
        self.speech_rms = float(np.sqrt((voiced[np.abs(voiced) > 0] ** 2).mean()))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Conversation]:
    """English and Mandarin two-turn conversations, synthesized once per module."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox needed")
    tmp = tmp_path_factory.mktemp("speech")
    english = Conversation(
        speak(tmp, "en-us", "I would like to check my bill for last month"),
        speak(tmp, "en-us", "yes please transfer me to an agent"),
    )
    (tmp / "b").mkdir()
    mandarin = Conversation(
        speak(tmp, "cmn-latn-pinyin", "ni3 hao3 wo3 xiang3 cha2 xun2 wo3 de5 zhang4 dan1"),
        speak(tmp / "b", "cmn-latn-pinyin", "qing3 zhuan3 ren2 gong1 ke4 fu2"),
    )
    return {"en": english, "cmn": mandarin}


@needs_tools
@pytest.mark.parametrize("language", ["en", "cmn"])
@pytest.mark.parametrize("snr_db", [None, 20.0])
def test_two_turns_are_found_at_their_true_boundaries(
    clips: dict[str, Conversation], language: str, snr_db: float | None
) -> None:
    conversation = clips[language]
    signal = conversation.signal
    if snr_db is not None:
        signal = add_noise(signal, conversation.speech_rms, snr_db)
    events = run(TurnDetector(VadOptions()), signal)
    found = utterances(events)
    assert len(found) == 2, [(round(u.start_s, 2), round(u.end_s, 2)) for u in found]
    for utterance, (start, end) in zip(found, conversation.bounds, strict=True):
        assert abs(utterance.start_s - start) <= TOLERANCE_S, (utterance.start_s, start)
        assert abs(utterance.end_s - end) <= TOLERANCE_S, (utterance.end_s, end)
        # The audio carries the pre-roll before the onset and stops at the last voiced frame.
        assert utterance.pre_roll_s == pytest.approx(0.3, abs=0.021)
        assert len(utterance.pcm) == pytest.approx(
            (utterance.end_s - utterance.audio_start_s) * RATE * 2, abs=2
        )
    starts = [e for _, e in events if isinstance(e, SpeechStarted)]
    ends = [e for _, e in events if isinstance(e, SpeechEnded)]
    assert len(starts) == len(ends) == 2


@needs_tools
def test_barge_in_fires_within_300_ms_of_onset(clips: dict[str, Conversation]) -> None:
    conversation = clips["en"]
    onset = conversation.bounds[0][0]
    events = run(TurnDetector(), conversation.signal)
    fired_at = [t + FRAME_MS / 1000 for t, e in events if isinstance(e, SpeechStarted)]
    assert fired_at, "no SpeechStarted"
    assert onset <= fired_at[0] + TOLERANCE_S  # not before the caller spoke
    assert fired_at[0] - onset <= 0.300


def click(ms: int, seed: int = 3) -> np.ndarray:
    """A loud broadband burst, the shape of a handset knock."""
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    rng = np.random.default_rng(seed)
    burst = 9000 * np.sin(2 * np.pi * 300 * t) + rng.normal(0, 3000, n)
    return np.clip(burst, -32768, 32767).astype(np.int16)


def test_short_click_is_discarded_by_min_speech() -> None:
    signal = np.concatenate([silence(1.0), click(100), silence(1.0)])
    events = run(TurnDetector(VadOptions()), signal)
    assert any(isinstance(e, SpeechStarted) for _, e in events)  # the VAD did hear it
    assert any(isinstance(e, SpeechEnded) for _, e in events)
    assert utterances(events) == []
    # Same click, lower bar: it becomes an utterance, so min_speech_ms is what dropped it.
    kept = utterances(run(TurnDetector(VadOptions(min_speech_ms=50)), signal))
    assert len(kept) == 1


def test_max_utterance_cuts_a_long_stream() -> None:
    signal = np.concatenate([silence(0.5), click(5000), silence(1.0)])
    found = utterances(run(TurnDetector(VadOptions(max_utterance_s=2.0)), signal))
    assert len(found) == 3
    assert [round(u.duration_s, 2) for u in found[:2]] == [2.0, 2.0]
    # Pieces are contiguous: the next one starts where the previous was cut, without pre-roll.
    assert found[1].start_s == pytest.approx(found[0].end_s)
    assert found[1].pre_roll_s == 0.0
    assert found[2].end_s == pytest.approx(5.5, abs=TOLERANCE_S)


def test_frames_must_have_the_configured_size() -> None:
    with pytest.raises(ValueError):
        TurnDetector().process(b"\x00" * 100, 0.0)
    with pytest.raises(ValueError):
        VadOptions(frame_ms=25)


async def test_stream_shape_yields_events_then_stops() -> None:
    detector = TurnDetector(VadOptions(frame_ms=30))
    signal = np.concatenate([silence(0.5), click(600), silence(1.0)]).astype("<i2").tobytes()
    # Receiver-sized 20 ms chunks into a 30 ms VAD: the detector re-frames them.
    for i in range(0, len(signal), 640):
        detector.push_frame(AudioChunk(signal[i : i + 640], RATE, i / 2 / RATE))
    detector.end_input()
    events = [event async for event in detector]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded, Utterance]
    assert events[2].start_s == pytest.approx(0.5, abs=0.06)  # type: ignore[union-attr]
    with pytest.raises(RuntimeError):
        detector.push_frame(AudioChunk(b"\x00" * 640, RATE, 3.0))


async def test_flush_ends_turn_and_aclose_stops_iteration() -> None:
    detector = TurnDetector()
    pcm = np.concatenate([silence(0.3), click(400)]).astype("<i2").tobytes()
    detector.push_frame(AudioChunk(pcm, RATE, 0.0))
    detector.flush()  # speech still going on: flush closes the turn anyway
    assert isinstance(await anext(detector), SpeechStarted)
    assert isinstance(await anext(detector), SpeechEnded)
    assert isinstance(await anext(detector), Utterance)
    await detector.aclose()
    assert [e async for e in detector] == []


def test_frame_cost_is_measured() -> None:
    assert measure_frame_cost_us(frames=200) > 0.0


def test_line_noise_alone_never_starts_a_turn() -> None:
    noise = add_noise(silence(5.0), speech_rms=3000.0, snr_db=20.0)
    assert run(TurnDetector(), noise) == []
