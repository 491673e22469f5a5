"""Small WAV helpers for phones and tests: write tones, read PCM, measure energy and pitch."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Pcm:
    """Mono 16-bit PCM as floats in [-1, 1] with its sample rate."""

    samples: FloatArray
    rate: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / self.rate


def write_tone(path: Path, frequency: float, seconds: float, rate: int = 16000,
               amplitude: float = 0.5) -> Path:
    """Write a mono 16-bit sine tone WAV."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    write_pcm(path, pcm.tobytes(), rate)
    return path


def write_pcm(path: Path, data: bytes, rate: int) -> None:
    """Write raw little-endian 16-bit mono PCM as a WAV file."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(data)


def read_wav(path: Path) -> Pcm:
    """Read a 16-bit WAV (first channel) as floats."""
    with wave.open(str(path), "rb") as src:
        if src.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels = src.getnchannels()
        rate = src.getframerate()
        raw = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
    if channels > 1:
        raw = raw[::channels]
    return Pcm(raw.astype(np.float64) / 32768.0, rate)


def rms_dbfs(pcm: Pcm) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    if len(pcm.samples) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(pcm.samples))))
    return 20 * float(np.log10(rms)) if rms > 0 else float("-inf")


def dominant_frequency(pcm: Pcm, skip_s: float = 0.0) -> float:
    """Frequency (Hz) of the strongest spectral peak, ignoring the first ``skip_s`` seconds."""
    samples = pcm.samples[int(skip_s * pcm.rate):]
    if len(samples) < 256:
        raise ValueError("not enough audio to measure a frequency")
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples * window))
    freqs = np.fft.rfftfreq(len(samples), 1 / pcm.rate)
    spectrum[freqs < 50] = 0  # ignore DC and mains hum
    return float(freqs[int(np.argmax(spectrum))])


def band_energy_ratio(pcm: Pcm, frequency: float, width: float = 40.0) -> float:
    """Share of the signal's energy within ``frequency ± width`` Hz (0..1)."""
    if len(pcm.samples) < 256:
        return 0.0
    spectrum = np.abs(np.fft.rfft(pcm.samples * np.hanning(len(pcm.samples)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm.samples), 1 / pcm.rate)
    total = float(spectrum[freqs >= 50].sum())
    if total == 0:
        return 0.0
    band = float(spectrum[(freqs >= frequency - width) & (freqs <= frequency + width)].sum())
    return band / total
