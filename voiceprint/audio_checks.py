"""Quality checks on enrollment and verification audio, before anything is embedded.

A simple energy detector, on purpose (no webrtcvad, no ``asr``): 20 ms frames count as speech
when their energy is above an absolute floor and well above the recording's own noise floor
(its quietest frames). The SNR estimate compares the mean power of speech frames, less the
noise, with the noise floor. Limits are configuration (``QualityLimits``); each rejection says
which one failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceprint.errors import AudioRejected

FRAME_SECONDS = 0.02
_NOISE_PERCENTILE = 10.0  # the quietest tenth of frames stands for the noise floor
_SPEECH_ABOVE_FLOOR_DB = 10.0
_SPEECH_MIN_DBFS = -50.0
_CLIP_LEVEL = 0.999  # |sample| at or above this fraction of full scale counts as clipped
_MAX_SNR_DB = 100.0  # digital silence between words would otherwise give an infinite SNR
_POWER_FLOOR = 1e-12
_SILENT_DBFS = -120.0  # the level reported for empty input (= _POWER_FLOOR)


@dataclass(frozen=True)
class SampleQuality:
    """Measurements of one recording; levels are relative to full scale (1.0)."""

    rate: int
    duration_s: float
    speech_s: float  # net seconds of frames the energy detector counts as speech
    loudest_dbfs: float  # power of the loudest 20 ms frame
    peak: float
    clipped_ratio: float  # fraction of samples at full scale
    snr_db: float


@dataclass(frozen=True)
class QualityLimits:
    """What ``require_usable`` accepts; the speech minimum is given per call."""

    expected_rate: int = 16000
    silence_dbfs: float = -50.0  # a recording whose loudest frame is below this is silent
    max_clipped_ratio: float = 0.001
    min_snr_db: float = 15.0


def _as_unit_float(pcm: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Samples as float64 in [-1, 1]; int16 is scaled, floats are taken as already scaled."""
    array = np.asarray(pcm)
    if array.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float64) / 32768.0
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"audio must be int16 or float, not {array.dtype}")
    return array.astype(np.float64)


def frame_powers(samples: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """Mean power of each whole 20 ms frame (a trailing partial frame is dropped)."""
    size = max(1, round(rate * FRAME_SECONDS))
    count = len(samples) // size
    frames = samples[: count * size].reshape(count, size)
    powers: npt.NDArray[np.float64] = np.mean(frames * frames, axis=1)
    return powers


def check_sample(pcm: npt.NDArray[Any], rate: int) -> SampleQuality:
    """Measure speech time, peak, clipping and SNR of mono int16 or float audio."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    samples = _as_unit_float(pcm)
    duration = len(samples) / rate
    if len(samples) == 0:
        return SampleQuality(rate, 0.0, 0.0, _SILENT_DBFS, 0.0, 0.0, 0.0)
    magnitude = np.abs(samples)
    peak = float(magnitude.max())
    clipped = float(np.mean(magnitude >= _CLIP_LEVEL))
    powers = frame_powers(samples, rate)
    if len(powers) == 0:
        return SampleQuality(rate, duration, 0.0, _SILENT_DBFS, peak, clipped, 0.0)
    levels_db = 10.0 * np.log10(np.maximum(powers, _POWER_FLOOR))
    loudest = float(levels_db.max())
    noise_power = float(np.percentile(powers, _NOISE_PERCENTILE))
    noise_db = 10.0 * np.log10(max(noise_power, _POWER_FLOOR))
    speech = levels_db > max(_SPEECH_MIN_DBFS, noise_db + _SPEECH_ABOVE_FLOOR_DB)
    speech_s = float(np.count_nonzero(speech)) * FRAME_SECONDS
    if not speech.any():
        # No frame stands out: silence, or a steady signal (tone, hum, noise) with 0 dB SNR.
        return SampleQuality(rate, duration, 0.0, loudest, peak, clipped, 0.0)
    signal_power = float(np.mean(powers[speech])) - noise_power
    snr = 10.0 * np.log10(max(signal_power, _POWER_FLOOR) / max(noise_power, _POWER_FLOOR))
    return SampleQuality(rate, duration, speech_s, loudest, peak, clipped,
                         float(min(snr, _MAX_SNR_DB)))


def require_usable(quality: SampleQuality, min_speech_s: float,
                   limits: QualityLimits | None = None) -> None:
    """Raise ``AudioRejected`` with the first failed check, in the order a caller can act on."""
    limits = limits or QualityLimits()
    if quality.rate != limits.expected_rate:
        raise AudioRejected("wrong_rate", f"{quality.rate} Hz, expected {limits.expected_rate}")
    if quality.loudest_dbfs < limits.silence_dbfs:
        raise AudioRejected("silent", f"loudest frame {quality.loudest_dbfs:.1f} dBFS")
    if quality.clipped_ratio > limits.max_clipped_ratio:
        raise AudioRejected("clipped", f"{quality.clipped_ratio:.2%} of samples at full scale")
    if quality.snr_db < limits.min_snr_db:
        raise AudioRejected("noisy", f"SNR {quality.snr_db:.1f} dB < {limits.min_snr_db} dB")
    if quality.speech_s < min_speech_s:
        raise AudioRejected("too_short", f"{quality.speech_s:.2f} s of speech < {min_speech_s} s")
