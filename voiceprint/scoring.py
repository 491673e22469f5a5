"""Scores between embeddings, score normalisation, decisions and evaluation measures.

Conventions: a higher score means "more likely the same speaker"; a trial is accepted when its
score is at or above the threshold. Rates are fractions in [0, 1]: FMR (false match rate) is the
share of impostor trials accepted, FNMR the share of target trials rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Decision = Literal["accept", "reject", "uncertain"]
Scores = Sequence[float] | npt.NDArray[np.floating]
_STD_FLOOR = 1e-6  # a cohort whose scores barely vary must not blow the normalised score up


def cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Cosine similarity of two 1-D vectors (0.0 when either is all zeros)."""
    left = np.asarray(a, dtype=np.float64)
    right = np.asarray(b, dtype=np.float64)
    if left.ndim != 1 or left.shape != right.shape:
        raise ValueError(f"need two 1-D vectors of one length, got {left.shape} and {right.shape}")
    denominator = float(np.linalg.norm(left) * np.linalg.norm(right))
    if denominator == 0.0:
        return 0.0
    return float(np.dot(left, right) / denominator)


@dataclass(frozen=True)
class CohortStats:
    """Mean and standard deviation of one embedding's scores against the cohort."""

    mean: float
    std: float


class CohortNormaliser:
    """Symmetric score normalisation (s-norm) against a cohort of impostor embeddings.

    ``normalise`` averages the z-norm (the raw score standardised by the enrollment's cohort
    scores) and the t-norm (standardised by the test utterance's cohort scores). With ``top_n``
    only each side's ``top_n`` highest cohort scores are used (adaptive s-norm).
    """

    def __init__(self, cohort_embeddings: npt.ArrayLike, top_n: int | None = None) -> None:
        cohort = np.asarray(cohort_embeddings, dtype=np.float64)
        if cohort.ndim != 2 or cohort.shape[0] < 2:
            raise ValueError(f"the cohort must be (n >= 2, dim), got shape {cohort.shape}")
        if top_n is not None and not 2 <= top_n <= cohort.shape[0]:
            raise ValueError(f"top_n must be in 2..{cohort.shape[0]}, not {top_n}")
        norms = np.linalg.norm(cohort, axis=1, keepdims=True)
        if np.any(norms == 0.0):
            raise ValueError("the cohort contains an all-zero embedding")
        self._cohort = cohort / norms
        self._top_n = top_n

    @property
    def size(self) -> int:
        """Number of cohort embeddings."""
        return int(self._cohort.shape[0])

    def stats(self, embedding: npt.ArrayLike) -> CohortStats:
        """Cohort score statistics of one embedding (store them with an enrollment template)."""
        vector = np.asarray(embedding, dtype=np.float64)
        if vector.shape != (self._cohort.shape[1],):
            raise ValueError(f"embedding shape {vector.shape} does not match the cohort's "
                             f"({self._cohort.shape[1]},)")
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise ValueError("cannot normalise against an all-zero embedding")
        scores = self._cohort @ (vector / norm)
        if self._top_n is not None:
            scores = np.sort(scores)[-self._top_n:]
        return CohortStats(float(np.mean(scores)), max(float(np.std(scores)), _STD_FLOOR))

    @staticmethod
    def normalise_with(raw_score: float, enroll: CohortStats, test: CohortStats) -> float:
        """s-norm of ``raw_score`` from precomputed enrollment and test statistics."""
        z_norm = (raw_score - enroll.mean) / enroll.std
        t_norm = (raw_score - test.mean) / test.std
        return 0.5 * (z_norm + t_norm)

    def normalise(self, raw_score: float, enroll_embedding: npt.ArrayLike,
                  test_embedding: npt.ArrayLike) -> float:
        """s-norm of ``raw_score`` between the two embeddings."""
        return self.normalise_with(raw_score, self.stats(enroll_embedding),
                                   self.stats(test_embedding))

    def score(self, enroll_embedding: npt.ArrayLike, test_embedding: npt.ArrayLike) -> float:
        """The s-normalised cosine score of a trial."""
        return self.normalise(cosine(enroll_embedding, test_embedding), enroll_embedding,
                              test_embedding)


@dataclass(frozen=True)
class Thresholds:
    """Accept at or above ``accept``, reject below ``reject``, uncertain in between."""

    accept: float
    reject: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.accept) and math.isfinite(self.reject)):
            raise ValueError("thresholds must be finite")
        if self.reject > self.accept:
            raise ValueError(f"reject threshold {self.reject} is above accept {self.accept}")

    def decide(self, normalised_score: float) -> Decision:
        """The decision for one (normalised) score."""
        if math.isnan(normalised_score):
            raise ValueError("score is NaN")
        if normalised_score >= self.accept:
            return "accept"
        if normalised_score < self.reject:
            return "reject"
        return "uncertain"


def _scores(values: Scores, name: str) -> npt.NDArray[np.float64]:
    """Validated 1-D finite float64 copy of a score list."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of scores")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return array


def rates_at(threshold: float, target: Scores, impostor: Scores) -> tuple[float, float]:
    """(FMR, FNMR) when trials scoring at or above ``threshold`` are accepted."""
    targets, impostors = _scores(target, "target"), _scores(impostor, "impostor")
    return float(np.mean(impostors >= threshold)), float(np.mean(targets < threshold))


def threshold_for_fmr(impostor_scores: Scores, target_fmr: float) -> float:
    """The lowest threshold whose FMR on these impostor scores is at most ``target_fmr``."""
    if not 0.0 <= target_fmr <= 1.0:
        raise ValueError(f"target_fmr must be in [0, 1], not {target_fmr}")
    descending = np.sort(_scores(impostor_scores, "impostor_scores"))[::-1]
    allowed = math.floor(target_fmr * len(descending) + 1e-9)  # false accepts we may keep
    if allowed >= len(descending):
        return float(descending[-1])
    # Just above the first impostor that must be rejected; ties with it are rejected too.
    return float(np.nextafter(descending[allowed], math.inf))


def _sweep(target: Scores, impostor: Scores) -> tuple[npt.NDArray[np.float64],
                                                     npt.NDArray[np.float64],
                                                     npt.NDArray[np.float64]]:
    """Thresholds at every distinct score and just above the top one, with FMR and FNMR there."""
    targets = np.sort(_scores(target, "target"))
    impostors = np.sort(_scores(impostor, "impostor"))
    distinct = np.unique(np.concatenate([targets, impostors]))
    thresholds = np.append(distinct, np.nextafter(distinct[-1], math.inf))
    fnmr = np.searchsorted(targets, thresholds, side="left") / len(targets)
    fmr = 1.0 - np.searchsorted(impostors, thresholds, side="left") / len(impostors)
    return thresholds, fmr, fnmr


def eer(target_scores: Scores, impostor_scores: Scores) -> tuple[float, float]:
    """Equal error rate and its threshold, interpolated linearly where FMR and FNMR cross."""
    thresholds, fmr, fnmr = _sweep(target_scores, impostor_scores)
    # FNMR rises and FMR falls with the threshold; at the top threshold FMR is 0.
    crossing = int(np.argmax(fnmr >= fmr))
    if fnmr[crossing] == fmr[crossing] or crossing == 0:
        return float(fmr[crossing]), float(thresholds[crossing])
    before = crossing - 1
    gap_before = fmr[before] - fnmr[before]  # > 0
    gap_after = fmr[crossing] - fnmr[crossing]  # < 0
    share = gap_before / (gap_before - gap_after)
    rate = fmr[before] + share * (fmr[crossing] - fmr[before])
    threshold = thresholds[before] + share * (thresholds[crossing] - thresholds[before])
    return float(rate), float(threshold)


def min_dcf(target: Scores, impostor: Scores, p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> float:
    """Minimum detection cost over all thresholds, divided by the cost of the best fixed answer."""
    if not 0.0 < p_target < 1.0 or c_miss <= 0.0 or c_fa <= 0.0:
        raise ValueError("need 0 < p_target < 1 and positive costs")
    _, fmr, fnmr = _sweep(target, impostor)
    # The lowest threshold accepts everything (FNMR 0, FMR 1), the top one rejects everything.
    costs = c_miss * p_target * fnmr + c_fa * (1.0 - p_target) * fmr
    default_cost = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(np.min(costs) / default_cost)
