"""What a speaker model's scores mean: the shipped thresholds and the false-match rate behind them.

``scripts/eval_voiceprint.py --write-calibration`` writes ``voiceprint/calibration/<model>.json``
from an evaluation on real speakers: the score kind the thresholds apply to (``raw`` cosine, or
``snorm`` against a cohort of the same model's templates), the accept and reject thresholds
chosen for a stated false-match target, and the evaluation's impostor scores, so each decision
can carry the false-match rate its score had on that set. A model without a file (``ecapa``,
whose weights are not shipped) has no measured rates: its decisions say so instead of guessing.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ScoreKind = Literal["raw", "snorm"]
FOLDER = Path(__file__).resolve().parent / "calibration"


@dataclass(frozen=True)
class Calibration:
    """Thresholds of one model and the evaluation they were chosen on."""

    model_id: str
    score: ScoreKind
    accept: float
    reject: float
    target_fmr: float | None = None
    # Sorted impostor scores (same score kind) of the evaluation, through the phone channel.
    impostor_scores: tuple[float, ...] = ()
    basis: dict[str, Any] = field(default_factory=dict)  # what the evaluation was

    def fmr_at(self, score: float) -> float | None:
        """The share of evaluation impostor trials scoring at or above ``score``; None when the
        model was not evaluated."""
        if not self.impostor_scores:
            return None
        above = len(self.impostor_scores) - bisect.bisect_left(self.impostor_scores, score)
        return above / len(self.impostor_scores)

    def evidence(self, score: float | None) -> dict[str, Any]:
        """What the decision log says about a score: its kind and false-match rate on the
        evaluation set (and how big that set was)."""
        return {"score_kind": self.score,
                "fmr_at_score": None if score is None else self.fmr_at(score),
                "impostor_trials": len(self.impostor_scores),
                "speakers": self.basis.get("speakers"),
                "channel": self.basis.get("channel")}

    def to_json(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "score": self.score, "accept": self.accept,
                "reject": self.reject, "target_fmr": self.target_fmr, "basis": self.basis,
                "impostor_scores": [round(s, 5) for s in self.impostor_scores]}


# Models with no evaluation here: s-norm thresholds in z-units, conservative.
_UNMEASURED: dict[str, Calibration] = {
    "ecapa": Calibration("ecapa", "snorm", accept=3.0, reject=1.5,
                         basis={"note": "not evaluated here (no ECAPA weights in the "
                                        "registries); choose with scripts/eval_voiceprint.py"}),
}


def load(model_id: str, folder: Path = FOLDER) -> Calibration:
    """The calibration of ``model_id`` (its file, else the built-in unmeasured defaults)."""
    path = folder / f"{model_id}.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return Calibration(
            model_id=str(data["model_id"]), score=data["score"], accept=float(data["accept"]),
            reject=float(data["reject"]), target_fmr=data.get("target_fmr"),
            impostor_scores=tuple(sorted(float(s) for s in data.get("impostor_scores", ()))),
            basis=dict(data.get("basis", {})))
    if model_id in _UNMEASURED:
        return _UNMEASURED[model_id]
    raise ValueError(f"no calibration for speaker model {model_id!r}")


def save(calibration: Calibration, folder: Path = FOLDER) -> Path:
    """Write ``<folder>/<model>.json``; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{calibration.model_id}.json"
    path.write_text(json.dumps(calibration.to_json(), indent=1) + "\n", encoding="utf-8")
    return path
