"""Replay detection on real espeak-ng speech passed through a real sox G.711 round trip."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from voiceprint.replay import (
    DEFAULT_REPLAY_THRESHOLD,
    Fingerprint,
    fingerprint,
    is_replay,
    similarity,
)

pytestmark = pytest.mark.unit

DIGITS = "3 8 1 9 0 4"

Speak = Callable[..., np.ndarray]


def read_pcm(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed for test speech")
    return tmp_path_factory.mktemp("replay")


@pytest.fixture(scope="module")
def speak(workdir: Path) -> Speak:
    """espeak-ng text -> 16 kHz mono 16-bit PCM, as a caller's phone would deliver it."""

    def run(text: str, *options: str) -> np.ndarray:
        name = f"s{len(list(workdir.iterdir()))}"
        raw, wav = workdir / f"{name}_raw.wav", workdir / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", *options, "-w", str(raw), text],
                       check=True, capture_output=True)
        sox(str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav))
        return read_pcm(wav)

    return run


def replayed(pcm: np.ndarray, workdir: Path, gain: float, snr_db: float) -> np.ndarray:
    """Gain change, 8 kHz u-law and back with sox, then white noise at ``snr_db``."""
    src, ulaw, back = workdir / "src.wav", workdir / "ulaw.wav", workdir / "back.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())
    sox(str(src), "-r", "8000", "-e", "u-law", str(ulaw), "vol", str(gain))
    sox(str(ulaw), "-r", "16000", "-e", "signed", "-b", "16", str(back))
    out = read_pcm(back).astype(np.float64)
    noise_power = np.mean(out**2) / 10 ** (snr_db / 10)
    out += np.random.default_rng(3).normal(0.0, np.sqrt(noise_power), out.size)
    return np.clip(out, -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def original(speak: Speak) -> np.ndarray:
    return speak(DIGITS)


def test_a_replayed_copy_is_flagged(original: np.ndarray, workdir: Path) -> None:
    enrolled = fingerprint(original)
    copy = fingerprint(replayed(original, workdir, gain=0.6, snr_db=30))
    flagged, score = is_replay(copy, [enrolled])
    assert flagged, score
    assert score > DEFAULT_REPLAY_THRESHOLD + 0.1
    louder = fingerprint(replayed(original, workdir, gain=1.4, snr_db=25))
    assert is_replay(louder, [enrolled])[0]


def test_a_copy_shifted_in_time_is_still_flagged(original: np.ndarray, workdir: Path) -> None:
    enrolled = fingerprint(original)
    copy = replayed(original, workdir, gain=0.8, snr_db=30)
    rng = np.random.default_rng(5)
    lead = rng.normal(0, 20, 8000).astype(np.int16)  # 0.5 s of line hiss first
    late = fingerprint(np.concatenate([lead, copy]))
    early = fingerprint(copy[11_700:])  # the first 0.73 s cut off
    for shifted in (late, early):
        flagged, score = is_replay(shifted, [enrolled])
        assert flagged, score
    # Beyond the search window the same copy is not recognised.
    far = fingerprint(np.concatenate([np.zeros(48_000, np.int16), copy]))
    assert similarity(enrolled, far, max_offset_s=1.0) < DEFAULT_REPLAY_THRESHOLD
    assert similarity(enrolled, far, max_offset_s=3.5) > DEFAULT_REPLAY_THRESHOLD


def test_different_utterances_by_the_same_voice_are_not_flagged(
    original: np.ndarray, speak: Speak
) -> None:
    enrolled = fingerprint(original)
    others = {
        "other digits": speak("7 2 5 6 1 8"),
        "slower": speak(DIGITS, "-s", "140"),
        "faster": speak(DIGITS, "-s", "200"),
        "higher": speak(DIGITS, "-p", "70"),
    }
    scores = {name: is_replay(fingerprint(pcm), [enrolled]) for name, pcm in others.items()}
    assert not any(flagged for flagged, _ in scores.values()), scores
    assert max(score for _, score in scores.values()) < DEFAULT_REPLAY_THRESHOLD - 0.1, scores


def test_fingerprint_is_compact_storable_bytes(original: np.ndarray) -> None:
    fp = fingerprint(original)
    seconds = original.size / 16000
    assert len(fp.data) < 600 * seconds  # about 4.1 bytes per 8 ms frame
    stored = Fingerprint(bytes(fp.data))
    assert similarity(stored, fp) == pytest.approx(1.0)
    assert fingerprint(original.tobytes()) == fp
    with pytest.raises(ValueError):
        Fingerprint(fp.data[:-1])
    with pytest.raises(ValueError):
        Fingerprint(b"XYZ" + fp.data[3:])


def test_silence_and_tiny_inputs_match_nothing(original: np.ndarray) -> None:
    enrolled = fingerprint(original)
    silent = fingerprint(np.zeros(32_000, np.int16))
    assert similarity(silent, enrolled) == 0.0
    assert similarity(silent, silent) == 0.0
    assert is_replay(fingerprint(original[:400]), [enrolled]) == (False, 0.0)
    assert is_replay(enrolled, []) == (False, 0.0)
    with pytest.raises(ValueError, match="int16"):
        fingerprint(original.astype(np.float32))


def test_the_key_index_finds_copies_and_passes_over_other_audio(
        original: np.ndarray, workdir: Path, speak: Speak) -> None:
    """The lookup that keeps the replay check fast: every copy the full comparison flags is a
    candidate of the index; different utterances fall below the vote floor."""
    from voiceprint.replay import INDEX_VOTES, candidates, index_keys, offset_votes

    enrolled = fingerprint(original)
    keys, frames = index_keys(enrolled)
    assert keys.size == 2 * int(enrolled.unpack()[1].sum()) == frames.size
    copy = replayed(original, workdir, gain=0.6, snr_db=20)
    copies = {"20 dB": copy, "louder": replayed(original, workdir, gain=1.4, snr_db=25),
              "late": np.concatenate([np.random.default_rng(5).normal(0, 20, 8000)
                                      .astype(np.int16), copy]),
              "cut": copy[11_700:]}
    others = {"other digits": speak("7 2 5 6 1 8"), "slower": speak(DIGITS, "-s", "140"),
              "higher": speak(DIGITS, "-p", "70")}

    def votes(pcm: np.ndarray) -> int:
        return offset_votes(fingerprint(pcm), np.full(keys.size, 7), keys, frames).get(7, 0)

    for name, pcm in copies.items():
        assert is_replay(fingerprint(pcm), [enrolled])[0], name
        assert votes(pcm) >= 2 * INDEX_VOTES, name
    for name, pcm in others.items():
        assert votes(pcm) < INDEX_VOTES, name
    assert candidates({1: 500, 2: INDEX_VOTES - 1, 3: INDEX_VOTES, 4: 90}) == [1, 4, 3]
    assert offset_votes(enrolled, [], [], []) == {}
