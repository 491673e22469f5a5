"""Barge-in onsets confirmed by Silero VAD: speech still barges in, music and bursts do not.

Real audio: Asterisk's music-on-hold recordings and flite speech through G.711; the Silero
model is the ONNX file of the silero-vad package. scripts/bench_turns.py gives the figures.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from asr.frames import SpeechStarted
from asr.silero import SileroOptions, SileroVad
from asr.testing.speech import read_wav_16k, synthesise, telephone
from asr.vad import TurnDetector, VadOptions

pytestmark = [pytest.mark.model]

MOH = Path("/usr/share/asterisk/moh")


def _onsets(audio: np.ndarray, detector: TurnDetector) -> int:
    pcm = np.clip(audio * 32768, -32768, 32767).astype("<i2").tobytes()
    size = detector.options.frame_bytes
    return sum(isinstance(event, SpeechStarted)
               for i in range(0, len(pcm) - size + 1, size)
               for event in detector.process(pcm[i:i + size], i / 32000))


def _voice_like(seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(
        np.float32)


@pytest.mark.unit
def test_a_rejecting_check_holds_onsets_and_is_asked_sparingly() -> None:
    asked: list[int] = []

    def never(pcm: bytes) -> bool:
        asked.append(len(pcm))
        return False

    detector = TurnDetector(VadOptions(), never)
    assert _onsets(_voice_like(), detector) == 0
    assert detector.rejected_onsets == len(asked) > 0
    # 3 s of voiced audio is 150 frames: with recheck_ms=100 at most one question per 5 frames.
    assert len(asked) <= 150 // 5 + 1
    # What the check hears: the pre-roll and the onset window (300 + 100 ms of 16-bit audio).
    assert max(asked) == (300 + 100) * 32
    assert _onsets(_voice_like(), TurnDetector(VadOptions(), lambda pcm: True)) >= 1


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad()


def test_speech_is_confirmed(silero: SileroVad, tmp_path: Path) -> None:
    for n, voice in enumerate(("flite:slt", "flite:kal", "cmn-latn-pinyin")):
        raw, line = tmp_path / f"{n}.wav", tmp_path / f"{n}-line.wav"
        text = "我想查一下我的账单" if voice.startswith("cmn") else "I want to check my bill"
        synthesise(text, "zh" if voice.startswith("cmn") else "en", voice, 1.0, raw)
        telephone(raw, line, snr_db=20.0, seed=n)
        audio = read_wav_16k(line)
        assert _onsets(audio, TurnDetector(VadOptions(), silero.is_speech)) >= 1, voice


def test_music_on_hold_barges_in_less_often(silero: SileroVad) -> None:
    files = sorted(MOH.glob("*.wav"))
    if not files:
        pytest.skip("asterisk-moh-opsound-wav not installed (make setup installs it)")
    alone = checked = clips = 0
    for path in files:
        raw = subprocess.run(["sox", str(path), "-t", "raw", "-r", "8000", "-c", "1", "-e",
                              "u-law", "-", "trim", "0", "16"], check=True,
                             capture_output=True).stdout
        decoded = subprocess.run(["sox", "-t", "raw", "-r", "8000", "-c", "1", "-e", "u-law",
                                  "-", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16",
                                  "-"], input=raw, check=True, capture_output=True).stdout
        music = np.frombuffer(decoded, "<i2").astype(np.float32) / 32768
        for start in range(0, len(music) - 64000 + 1, 64000):
            clip = music[start:start + 64000]
            clips += 1
            alone += bool(_onsets(clip, TurnDetector(VadOptions())))
            checked += bool(_onsets(clip, TurnDetector(VadOptions(), silero.is_speech)))
    assert clips >= 15
    assert checked < alone and checked <= clips // 3, (checked, alone, clips)


def test_no_audio_is_no_speech(silero: SileroVad) -> None:
    assert silero.probabilities(b"") == []
    assert silero.is_speech(b"\x00\x00" * 16000) is False
    strict = SileroVad(SileroOptions(threshold=0.99, min_chunks=50))
    assert strict.is_speech(b"\x00\x00" * 1600) is False
