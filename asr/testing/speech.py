"""Spoken caller requests for tests and benchmarks, made from Debian's speech synthesisers.

English comes from flite's four voices (``kal``, ``awb``, ``rms``, ``slt``: built from four real
speakers) and espeak-ng; Mandarin from espeak-ng's ``cmn-latn-pinyin`` voice, given pinyin with
tone numbers (pypinyin converts; espeak-ng 1.51's ``cmn`` voice reads tone digits in English when
given characters). Each request gets a voice, a speed, a line noise level and the G.711 telephone
channel (8 kHz mu-law) from its position in the set, so the set is varied and reproducible.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

ZH_VOICES: tuple[str, ...] = ("cmn-latn-pinyin", "cmn-latn-pinyin+f2", "cmn-latn-pinyin+m3",
                              "cmn-latn-pinyin+f4")
EN_VOICES: tuple[str, ...] = ("flite:kal", "flite:awb", "flite:rms", "flite:slt", "en-us",
                              "en-us+f3")
SPEEDS: tuple[float, ...] = (1.0, 0.9, 1.12)  # relative to each voice's normal rate
SNR_DB: tuple[float | None, ...] = (None, 25.0, 15.0)  # None: no added line noise
RECIPE = "s1"  # bump when the synthesis changes, so cached sets are rebuilt


class SynthesisUnavailable(RuntimeError):
    """espeak-ng, flite or sox is not installed (make setup installs them)."""


@dataclass(frozen=True)
class SpokenRequest:
    """One labelled utterance of the set."""

    text: str
    intent: str
    language: str
    voice: str
    speed: float
    snr_db: float | None
    wav: str  # 8 kHz mu-law-decoded 16-bit mono WAV, relative to the set folder


def cache_root() -> Path:
    """This project's user cache (``$IVR_CACHE_DIR`` or ``~/.cache/ivr``)."""
    from asr.default_model import cache_root as root

    return root()


def load_requests(path: Path) -> list[tuple[str, str, str]]:
    """``(text, intent, language)`` of a ``{intent: {lang: [...]}}`` YAML file, in file order."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [(text, intent, language) for intent, by_language in data.items()
            for language, texts in by_language.items() for text in texts]


def pinyin_with_tones(text: str) -> str:
    """Mandarin characters as pinyin with tone numbers, which espeak-ng speaks correctly."""
    from pypinyin import Style, pinyin

    return " ".join(s[0] for s in pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SynthesisUnavailable(f"{', '.join(missing)} not installed (make setup installs it)")


def synthesise(text: str, language: str, voice: str, speed: float, out: Path) -> None:
    """Speak ``text`` into ``out`` (a WAV at the synthesiser's own rate)."""
    if voice.startswith("flite:"):
        _need("flite")
        subprocess.run(["flite", "-voice", voice.split(":", 1)[1], "--setf",
                        f"duration_stretch={1.0 / speed:.3f}", "-t", text, "-o", str(out)],
                       check=True, capture_output=True)
        return
    _need("espeak-ng")
    spoken = pinyin_with_tones(text) if language == "zh" else text
    words_per_minute = round((130 if language == "zh" else 160) * speed)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(out),
                    spoken], check=True, capture_output=True)


def telephone(source: Path, out: Path, snr_db: float | None, seed: int) -> None:
    """``source`` through the phone line: 8 kHz, line noise at ``snr_db``, G.711 mu-law."""
    _need("sox")
    with tempfile.TemporaryDirectory() as tmp:
        narrow = Path(tmp) / "narrow.wav"
        subprocess.run(["sox", "-G", str(source), "-r", "8000", "-c", "1", "-b", "16",
                        str(narrow), "highpass", "300", "lowpass", "3400"],
                       check=True, capture_output=True)
        with wave.open(str(narrow), "rb") as handle:
            pcm = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float64)
        if snr_db is not None and pcm.size:
            rng = np.random.default_rng(seed)
            from scipy.signal import lfilter  # type: ignore[import-untyped]  # no stubs

            # Brownish line hiss: white noise through a one-pole low-pass.
            hiss = lfilter([1.0], [1.0, -0.9], rng.standard_normal(pcm.size))
            speech_power = float(np.mean(pcm[np.abs(pcm) > 0.05 * np.abs(pcm).max()] ** 2))
            hiss *= np.sqrt(speech_power / 10 ** (snr_db / 10) / float(np.mean(hiss ** 2)))
            pcm = pcm + hiss
        mixed = Path(tmp) / "mixed.wav"
        _write_wav(mixed, np.clip(pcm, -32768, 32767).astype("<i2"), 8000)
        law = Path(tmp) / "law.wav"
        subprocess.run(["sox", str(mixed), "-e", "u-law", str(law)], check=True,
                       capture_output=True)
        # Half a second of line silence either side, as a caller pauses around a request.
        subprocess.run(["sox", str(law), "-e", "signed-integer", "-b", "16", str(out),
                        "pad", "0.5", "0.5"], check=True, capture_output=True)


def _write_wav(path: Path, pcm: npt.NDArray[np.int16], rate: int) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def read_wav_16k(path: Path) -> npt.NDArray[np.float32]:
    """A mono 16-bit WAV as float32 at 16 kHz (8 kHz is upsampled as Asterisk's slin16 is)."""
    with wave.open(str(path), "rb") as handle:
        rate = handle.getframerate()
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32)
    audio = pcm / 32768.0
    if rate == 16000:
        return audio
    from scipy.signal import resample_poly

    resampled: npt.NDArray[np.float32] = resample_poly(audio, 16000, rate).astype(np.float32)
    return resampled


def plan(requests: Sequence[tuple[str, str, str]], rotation: int = 0
         ) -> Iterator[SpokenRequest]:
    """Assign each request its voice, speed and noise (cycled, so every mix is covered);
    another ``rotation`` gives every request another voice, speed and noise."""
    counters = {"zh": rotation * 7, "en": rotation * 7}
    for text, intent, language in requests:
        i = counters[language]
        counters[language] += 1
        voices = ZH_VOICES if language == "zh" else EN_VOICES
        voice = voices[i % len(voices)]
        speed = SPEEDS[(i // len(voices)) % len(SPEEDS)]
        snr = SNR_DB[(i // 2) % len(SNR_DB)]
        digest = hashlib.sha1(f"{text}|{voice}|{speed}|{snr}".encode()).hexdigest()[:12]
        yield SpokenRequest(text, intent, language, voice, speed, snr,
                            f"{language}/{intent}-{digest}.wav")


def build_set(requests_file: Path, folder: Path, rotation: int = 0) -> list[SpokenRequest]:
    """Speak every request of ``requests_file`` into ``folder`` (cached by content)."""
    requests = load_requests(requests_file)
    key = hashlib.sha1(requests_file.read_bytes() + f"{RECIPE}/{rotation}".encode()
                       ).hexdigest()[:12]
    index = folder / "index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        if data.get("key") == key:
            return [SpokenRequest(**item) for item in data["items"]]
    items = list(plan(requests, rotation))
    with tempfile.TemporaryDirectory() as tmp:
        for n, item in enumerate(items):
            target = folder / item.wav
            target.parent.mkdir(parents=True, exist_ok=True)
            raw = Path(tmp) / "raw.wav"
            synthesise(item.text, item.language, item.voice, item.speed, raw)
            telephone(raw, target, item.snr_db, seed=n)
    index.write_text(json.dumps({"key": key, "items": [asdict(i) for i in items]},
                                ensure_ascii=False, indent=1), encoding="utf-8")
    return items
