"""Uploaded audio: 16-bit PCM WAV, mono, 8 or 16 kHz, to float32 at the model's 16 kHz."""

from __future__ import annotations

import io
import wave

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly  # type: ignore[import-untyped]  # scipy ships no stubs

from voiceprint.errors import AudioRejected

MODEL_RATE = 16000
_RATES = (8000, 16000)


def decode_wav(data: bytes, max_seconds: float = 120.0) -> npt.NDArray[np.float32]:
    """Samples in [-1, 1] at 16 kHz; :class:`AudioRejected` (``bad_format``) otherwise."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.getnframes()
            if channels != 1 or width != 2 or rate not in _RATES:
                raise AudioRejected("bad_format", f"need 16-bit mono WAV at 8 or 16 kHz, got "
                                    f"{channels} channel(s), {width * 8}-bit, {rate} Hz")
            if frames / rate > max_seconds:
                raise AudioRejected("too_long", f"{frames / rate:.0f} s; at most "
                                    f"{max_seconds:.0f} s per sample")
            raw = wav.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise AudioRejected("bad_format", f"not a readable WAV file: {exc}") from None
    samples = pcm16_to_float(raw)
    if rate != MODEL_RATE:
        samples = resample_poly(samples, MODEL_RATE, rate).astype(np.float32)
    return samples


def pcm16_to_float(pcm: bytes) -> npt.NDArray[np.float32]:
    """Little-endian 16-bit PCM (the speech path's format) as float32 samples."""
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
