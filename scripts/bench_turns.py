#!/usr/bin/env python3
"""Turn-taking with real audio: false and missed barge-ins, webrtcvad alone vs + Silero VAD.

Every clip goes through the telephone channel (8 kHz G.711 mu-law, back to 16 kHz as Asterisk's
slin16 delivers it) and then through ``TurnDetector`` twice in the same run: webrtcvad alone and
webrtcvad with Silero confirming each onset. A barge-in is a ``SpeechStarted`` event.

* speech (should barge in): the spoken caller requests (tests/data/spoken_requests.yaml, flite
  and espeak-ng voices, line noise) and Asterisk's real English prompts (one real speaker);
  missed = no onset; delay = onset minus the true start of speech.
* non-speech (should not): music on hold (Asterisk's opsound files, real recordings), babble
  (five requests of other voices mixed at -20 dB under the line level), line noise (hiss and
  50 Hz mains hum), and cough-like bursts (synthetic: shaped noise, no real cough recording is
  in Debian's archive).

Usage: .venv/bin/python scripts/bench_turns.py [--speech 120] [--seconds 4]
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.frames import SpeechStarted  # noqa: E402
from asr.silero import SileroVad  # noqa: E402
from asr.testing.speech import build_set, read_wav_16k  # noqa: E402
from asr.vad import TurnDetector, VadOptions  # noqa: E402

RATE = 16000
MOH_DIR = Path("/usr/share/asterisk/moh")
PROMPTS_DIR = Path("/usr/share/asterisk/sounds/en")
Audio = npt.NDArray[np.float32]


def telephone(audio: Audio) -> Audio:
    """16 kHz float audio through G.711 mu-law at 8 kHz and back to 16 kHz."""
    from scipy.signal import resample_poly  # type: ignore[import-untyped]  # no stubs

    narrow = resample_poly(audio, 1, 2)
    pcm = np.clip(narrow * 32768, -32768, 32767).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "in.raw"
        raw.write_bytes(pcm.tobytes())
        law = Path(tmp) / "law.wav"
        subprocess.run(["sox", "-t", "raw", "-r", "8000", "-e", "signed", "-b", "16", "-c", "1",
                        str(raw), "-e", "u-law", str(law)], check=True, capture_output=True)
        back = Path(tmp) / "back.raw"
        subprocess.run(["sox", str(law), "-t", "raw", "-e", "signed", "-b", "16", str(back)],
                       check=True, capture_output=True)
        decoded = np.frombuffer(back.read_bytes(), "<i2").astype(np.float32) / 32768
    return np.asarray(resample_poly(decoded, 2, 1), dtype=np.float32)


def level(audio: Audio, dbfs: float) -> Audio:
    """``audio`` scaled to an RMS of ``dbfs``."""
    rms = float(np.sqrt(np.mean(audio ** 2))) or 1.0
    return (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def load_any(path: Path) -> Audio:
    """Any audio file as 16 kHz mono float (sox converts)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a.raw"
        subprocess.run(["sox", str(path), "-t", "raw", "-r", str(RATE), "-c", "1", "-e",
                        "signed", "-b", "16", str(out)], check=True, capture_output=True)
        return (np.frombuffer(out.read_bytes(), "<i2") / 32768).astype(np.float32)


def speech_clips(count: int, workdir: Path) -> Iterator[tuple[str, Audio, float]]:
    """(kind, audio, true speech start s): spoken requests and real Asterisk prompts."""
    items = build_set(ROOT / "tests" / "data" / "spoken_requests.yaml", workdir / "spoken")
    step = max(1, len(items) // max(1, count - 20))
    lead = 1.0  # a second of line silence first, as while a prompt plays
    for item in items[::step][:count - 20]:
        audio = read_wav_16k(workdir / "spoken" / item.wav)
        yield f"speech-{item.language}", np.concatenate([np.zeros(int(lead * RATE) - 8000,
                                                                  np.float32), audio]), lead
    prompts = sorted(PROMPTS_DIR.glob("*.wav"))[::25][:20] if PROMPTS_DIR.is_dir() else []
    for path in prompts:
        audio = load_any(path)
        voiced = np.flatnonzero(np.abs(audio) > 0.02)
        start = voiced[0] / RATE if voiced.size else 0.0
        yield "speech-prompt", np.concatenate([np.zeros(int(lead * RATE), np.float32),
                                               audio]), lead + start


def noise_clips(seconds: float, workdir: Path) -> Iterator[tuple[str, Audio]]:
    """Non-speech a caller's line carries: music, babble, hiss, hum, coughs."""
    n = int(seconds * RATE)
    rng = np.random.default_rng(7)
    for path in sorted(MOH_DIR.glob("*.wav")) if MOH_DIR.is_dir() else []:
        music = load_any(path)
        for start in range(0, min(len(music) - n, 8 * n), n):
            yield "music", level(music[start:start + n], -20)
    items = build_set(ROOT / "tests" / "data" / "spoken_requests.yaml", workdir / "spoken")
    voices = [read_wav_16k(workdir / "spoken" / item.wav) for item in items[::7][:40]]
    for k in range(0, len(voices) - 5, 5):
        mix = np.zeros(n, np.float32)
        for offset, voice in enumerate(voices[k:k + 5]):
            shift = int(offset * 0.37 * RATE)
            piece = np.tile(voice, 1 + n // max(1, len(voice)))[:n]
            mix += np.roll(piece, shift)
        yield "babble", level(mix, -40)
    from scipy.signal import lfilter

    for dbfs in (-50, -40, -30):
        yield "line-hiss", level(lfilter([1.0], [1.0, -0.95], rng.standard_normal(n))
                                 .astype(np.float32), dbfs)
        t = np.arange(n) / RATE
        hum = sum(np.sin(2 * np.pi * 50 * h * t) / h for h in (1, 3, 5, 7))
        yield "mains-hum", level(np.asarray(hum, np.float32) + 0.01 * rng.standard_normal(n)
                                 .astype(np.float32), dbfs)
    for k in range(12):
        burst = np.zeros(n, np.float32)
        length = int((0.15 + 0.02 * k) * RATE)
        envelope = np.exp(-np.arange(length) / (0.05 * RATE)).astype(np.float32)
        shaped = lfilter([1.0, -0.5], [1.0, -0.3 - 0.04 * k], rng.standard_normal(length))
        at = int(1.0 * RATE)
        burst[at:at + length] = shaped * envelope
        yield "cough-like", level(burst, -22)


def onsets(audio: Audio, confirm: Callable[[bytes], bool] | None) -> list[float]:
    """Times of the SpeechStarted events the detector gives on ``audio``."""
    detector = TurnDetector(VadOptions(), confirm)
    pcm = np.clip(audio * 32768, -32768, 32767).astype("<i2").tobytes()
    size = VadOptions().frame_bytes
    found = []
    for i in range(0, len(pcm) - size + 1, size):
        for event in detector.process(pcm[i:i + size], i / 2 / RATE):
            if isinstance(event, SpeechStarted):
                found.append(event.at_s)
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both detectors over the same clips."""
    silero = SileroVad()
    checks: list[float] = []

    def timed_check(pcm: bytes) -> bool:
        started = time.perf_counter()
        try:
            return silero.is_speech(pcm)
        finally:
            checks.append(time.perf_counter() - started)

    detectors: dict[str, Callable[[bytes], bool] | None] = {
        "webrtcvad": None, "webrtcvad+silero": timed_check}
    result: dict[str, Any] = {name: {} for name in detectors}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        speech = [(kind, telephone(audio), start)
                  for kind, audio, start in speech_clips(args.speech, work)]
        noise = [(kind, telephone(audio)) for kind, audio in noise_clips(args.seconds, work)]
    for name, confirm in detectors.items():
        by_kind: dict[str, dict[str, Any]] = {}
        for kind, audio, start in speech:
            found = onsets(audio, confirm)
            row = by_kind.setdefault(kind, {"clips": 0, "missed": 0, "delays_ms": []})
            row["clips"] += 1
            if not found:
                row["missed"] += 1
            else:
                row["delays_ms"].append(1000 * (found[0] - start))
        for kind, audio in noise:
            row = by_kind.setdefault(kind, {"clips": 0, "false_barge_ins": 0})
            row["clips"] += 1
            row["false_barge_ins"] += bool(onsets(audio, confirm))
        for row in by_kind.values():
            delays = row.pop("delays_ms", None)
            if delays:
                row["onset_delay_ms_p50"] = round(float(np.percentile(delays, 50)), 1)
                row["onset_delay_ms_p95"] = round(float(np.percentile(delays, 95)), 1)
        speech_rows = [r for k, r in by_kind.items() if k.startswith("speech")]
        noise_rows = [r for k, r in by_kind.items() if not k.startswith("speech")]
        result[name] = {
            "missed_barge_ins": sum(r["missed"] for r in speech_rows),
            "speech_clips": sum(r["clips"] for r in speech_rows),
            "false_barge_ins": sum(r["false_barge_ins"] for r in noise_rows),
            "non_speech_clips": sum(r["clips"] for r in noise_rows),
            "by_kind": by_kind,
        }
    result["silero_check_ms"] = {
        "count": len(checks),
        "p50": round(1000 * float(np.percentile(checks, 50)), 2) if checks else None,
        "p95": round(1000 * float(np.percentile(checks, 95)), 2) if checks else None}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speech", type=int, default=120, help="speech clips (20 are prompts)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of non-speech clips")
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args)
    result["machine"] = {"cpus": len(__import__("os").sched_getaffinity(0)),
                         "python": platform.python_version()}
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
