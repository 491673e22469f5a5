"""WAV helpers used to judge what phones heard."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.sip.audio import band_energy_ratio, dominant_frequency, read_wav, rms_dbfs, write_tone
from ivr.sip.phone import wav_complete

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("frequency", [300.0, 440.0, 1004.0, 3000.0])
def test_tone_frequency_and_level_are_measured(tmp_path: Path, frequency: float) -> None:
    pcm = read_wav(write_tone(tmp_path / "t.wav", frequency, 1.0, amplitude=0.5))
    assert abs(dominant_frequency(pcm) - frequency) < 2.0
    assert band_energy_ratio(pcm, frequency) > 0.95
    assert band_energy_ratio(pcm, frequency + 500) < 0.01
    assert rms_dbfs(pcm) == pytest.approx(-9.03, abs=0.1)  # 0.5 peak sine: 20*log10(0.5/sqrt 2)


def test_silence_has_no_level(tmp_path: Path) -> None:
    pcm = read_wav(write_tone(tmp_path / "s.wav", 440.0, 0.5, amplitude=0.0))
    assert rms_dbfs(pcm) == float("-inf")
    assert band_energy_ratio(pcm, 440.0) == 0.0


def test_unfinished_recording_is_detected(tmp_path: Path) -> None:
    done = write_tone(tmp_path / "done.wav", 440.0, 0.2)
    assert wav_complete(done)
    partial = tmp_path / "partial.wav"
    data = bytearray(done.read_bytes())
    data[4:8] = (0).to_bytes(4, "little")  # what a recorder leaves before it closes
    partial.write_bytes(bytes(data))
    assert not wav_complete(partial)
    assert not wav_complete(tmp_path / "missing.wav")
