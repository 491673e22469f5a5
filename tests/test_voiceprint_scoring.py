"""Voiceprint scoring, normalisation, decisions, evaluation measures and audio quality checks."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from voiceprint.audio_checks import QualityLimits, check_sample, require_usable
from voiceprint.errors import AudioRejected
from voiceprint.scoring import (
    CohortNormaliser,
    CohortStats,
    Thresholds,
    cosine,
    eer,
    min_dcf,
    rates_at,
    threshold_for_fmr,
)

pytestmark = pytest.mark.unit

RATE = 16000
TARGETS = [0.9, 0.8, 0.7, 0.4]
IMPOSTORS = [0.1, 0.3, 0.5, 0.6]


def test_cosine_basics() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        cosine([1.0, 0.0], [1.0, 0.0, 0.0])


def test_snorm_against_hand_made_cohort() -> None:
    # Cohort at 0°, 90°, 180°, 270°. Enrollment e at 0°: cohort scores [1, 0, -1, 0],
    # mean 0, std sqrt(0.5). Test t at 45°: cohort scores [s, s, -s, -s] with s = 1/√2,
    # mean 0, std 1/√2. Raw cosine(e, t) = 1/√2, so z = (1/√2)/√0.5 = 1 and t = 1: s-norm 1.
    cohort = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    normaliser = CohortNormaliser(cohort * 3.0)  # scale must not matter
    enroll, test = np.array([2.0, 0.0]), np.array([1.0, 1.0])
    stats = normaliser.stats(enroll)
    assert (stats.mean, stats.std) == pytest.approx((0.0, math.sqrt(0.5)))
    assert normaliser.score(enroll, test) == pytest.approx(1.0)
    # Asymmetric: raw 0.5, enroll stats (0.1, 0.2) give z = 2; test stats (0.0, 0.5) give t = 1.
    value = CohortNormaliser.normalise_with(0.5, CohortStats(0.1, 0.2), CohortStats(0.0, 0.5))
    assert value == pytest.approx((2.0 + 1.0) / 2)


def test_snorm_top_n_uses_the_closest_cohort() -> None:
    # Top-2 of enrollment [1,0]'s cohort scores [1, 0, -1, 0] are [1, 0]: mean 0.5, std 0.5.
    cohort = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    stats = CohortNormaliser(cohort, top_n=2).stats(np.array([1.0, 0.0]))
    assert (stats.mean, stats.std) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError):
        CohortNormaliser(cohort, top_n=5)


def test_thresholds_decide() -> None:
    thresholds = Thresholds(accept=2.0, reject=0.5)
    assert thresholds.decide(2.5) == "accept"
    assert thresholds.decide(2.0) == "accept"
    assert thresholds.decide(1.0) == "uncertain"
    assert thresholds.decide(0.5) == "uncertain"
    assert thresholds.decide(0.49) == "reject"
    assert Thresholds(accept=1.0, reject=1.0).decide(0.999) == "reject"
    with pytest.raises(ValueError):
        Thresholds(accept=0.5, reject=2.0)


def test_eer_hand_computed() -> None:
    # Accept when score >= t. Targets [.9 .8 .7 .4], impostors [.1 .3 .5 .6]:
    #   t=0.4: FNMR 0/4, FMR 2/4 (.5 .6)     t=0.5: FNMR 1/4 (.4), FMR 2/4
    #   t=0.6: FNMR 1/4,  FMR 1/4 (.6)       t=0.7: FNMR 1/4, FMR 0/4
    # The rates meet exactly at t=0.6: EER 0.25.
    rate, threshold = eer(TARGETS, IMPOSTORS)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.6)


def test_eer_interpolated_hand_case() -> None:
    # Targets [.8 .6 .4], impostors [.5 .3]: t=0.5 gives FMR 1/2 > FNMR 1/3; t=0.6 gives
    # FMR 0 < FNMR 1/3. On the segment between them FMR - FNMR goes 1/6 -> -1/3, so it is 0 at
    # 1/3 of the way: EER = 1/2 + (0 - 1/2)/3 = 1/3 at threshold 0.5 + 0.1/3.
    rate, threshold = eer([0.8, 0.6, 0.4], [0.5, 0.3])
    assert rate == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.5 + 0.1 / 3)
    assert eer([0.9, 0.8], [0.1, 0.2]) == pytest.approx((0.0, 0.8))  # separable: zero errors


def test_min_dcf_hand_cases() -> None:
    # p_target 0.01: normaliser min(0.01, 0.99) = 0.01. Best: t in (0.6, 0.7] with FNMR 1/4,
    # FMR 0: cost 0.01 * 0.25 = 0.0025 -> 0.25. (t=0.4: 0.99 * 0.5 -> 49.5; reject all -> 1.)
    assert min_dcf(TARGETS, IMPOSTORS) == pytest.approx(0.25)
    # p_target 0.9: normaliser min(0.9, 0.1) = 0.1. t=0.4: FNMR 0, FMR 1/2: 0.1 * 0.5 = 0.05
    # -> 0.5; t=0.3: FMR 3/4 -> 0.75; t=0.7: 0.9 * 0.25 = 0.225 -> 2.25. Minimum 0.5.
    assert min_dcf(TARGETS, IMPOSTORS, p_target=0.9) == pytest.approx(0.5)
    # Costs: c_fa 10, p_target 0.5: normaliser min(0.5, 5) = 0.5; t=0.7: 0.5 * 0.25 -> 0.25.
    assert min_dcf(TARGETS, IMPOSTORS, p_target=0.5, c_fa=10.0) == pytest.approx(0.25)


def test_rates_at() -> None:
    assert rates_at(0.6, TARGETS, IMPOSTORS) == (0.25, 0.25)
    assert rates_at(0.0, TARGETS, IMPOSTORS) == (1.0, 0.0)
    assert rates_at(1.0, TARGETS, IMPOSTORS) == (0.0, 1.0)


def test_threshold_for_fmr_on_known_impostors() -> None:
    impostors = np.arange(100) / 100  # 0.00 .. 0.99
    threshold = threshold_for_fmr(impostors, 0.05)
    # Five false accepts allowed (0.95..0.99); 0.94 must be rejected: just above it.
    assert 0.94 < threshold <= 0.95
    assert rates_at(threshold, [1.0], impostors)[0] == pytest.approx(0.05)
    assert rates_at(threshold_for_fmr(impostors, 0.0), [1.0], impostors)[0] == 0.0
    assert threshold_for_fmr(impostors, 0.001) > 0.99
    assert threshold_for_fmr(impostors, 1.0) == 0.0
    with pytest.raises(ValueError):
        threshold_for_fmr(impostors, 1.5)


# Audio checks run on synthetic speech-like audio so this module needs no external process:
# the energy detector only sees frame energies, so voiced "syllables" of a 120 Hz harmonic
# series with pauses of digital silence exercise it like speech does (real espeak speech is
# checked in test_voiceprint_embedding.py).
def speechlike(seconds: float, seed: int = 0) -> npt.NDArray[np.float32]:
    """Syllables of 150-250 ms with 50-150 ms pauses, peak about -6 dBFS."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    position = 0
    while position < len(out):
        length = int(rng.uniform(0.15, 0.25) * RATE)
        t = np.arange(length) / RATE
        voiced = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 12))
        envelope = np.sin(np.pi * np.arange(length) / length)
        segment = (voiced * envelope)[: len(out) - position]
        out[position: position + len(segment)] = segment
        position += length + int(rng.uniform(0.05, 0.15) * RATE)
    scaled: npt.NDArray[np.float32] = (0.5 * out / np.max(np.abs(out))).astype(np.float32)
    return scaled


def rejection(pcm: npt.NDArray[np.generic], min_speech_s: float, rate: int = RATE) -> str:
    with pytest.raises(AudioRejected) as caught:
        require_usable(check_sample(pcm, rate), min_speech_s)
    return caught.value.reason


def test_clean_speechlike_is_usable() -> None:
    quality = check_sample(speechlike(3.0), RATE)
    assert 1.5 < quality.speech_s < 3.0
    assert quality.snr_db > 40 and quality.clipped_ratio == 0.0
    require_usable(quality, min_speech_s=1.5)
    int16 = (speechlike(3.0) * 32767).astype(np.int16)
    assert check_sample(int16, RATE).speech_s == pytest.approx(quality.speech_s)


def test_silence_is_silent() -> None:
    assert rejection(np.zeros(RATE * 2, dtype=np.int16), 1.0) == "silent"
    faint = np.random.default_rng(2).normal(0, 1e-4, RATE * 2)  # -80 dBFS hiss
    assert rejection(faint, 1.0) == "silent"


def test_clipped_square_wave() -> None:
    t = np.arange(RATE * 2) / RATE
    square = np.where(np.sin(2 * np.pi * 200 * t) >= 0, 32767, -32768).astype(np.int16)
    assert check_sample(square, RATE).clipped_ratio > 0.99
    assert rejection(square, 1.0) == "clipped"


def test_one_second_of_speech_is_too_short_for_twenty() -> None:
    assert rejection(speechlike(1.0), 20.0) == "too_short"


def test_white_noise_at_zero_db_is_noisy() -> None:
    speech = speechlike(5.0).astype(np.float64)
    noise = np.random.default_rng(3).normal(0.0, np.sqrt(np.mean(speech**2)), len(speech))
    assert rejection(speech + noise, 1.0) == "noisy"
    assert check_sample(speech + noise, RATE).snr_db < 5.0


def test_wrong_rate() -> None:
    assert rejection(speechlike(3.0), 1.0, rate=8000) == "wrong_rate"
    limits = QualityLimits(expected_rate=8000)
    require_usable(check_sample(speechlike(3.0), 8000), 1.0, limits)


def test_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError):
        AudioRejected("too_loud")
