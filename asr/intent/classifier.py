"""Intent of a caller utterance: a multinomial logistic regression over sparse text features.

The model is small enough to train from the shipped phrases at first use (well under a second),
so no weights file ships: ``IntentClassifier.default()`` trains once per process and keeps the
result. Training is full-batch Adam from zero weights, so it is deterministic without a seed.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from asr.errors import IntentModelError
from asr.intent.features import content_size, extract_features, normalize

INTENTS: tuple[str, ...] = (
    "billing",
    "product_info",
    "account_security",
    "technical_fault",
    "capacity",
    "ticket_status",
    "complaint",
    "human_agent",
    "unknown",
)
UNKNOWN = "unknown"
LANGUAGES: tuple[str, ...] = ("zh", "en")
DEFAULT_THRESHOLD = 0.5
DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_PATH = DATA_DIR / "train.yaml"
# What the default Whisper heard when train.yaml was spoken over a phone line
# (scripts/collect_asr_outputs.py): teaches the classifier that model's real errors.
ASR_OUTPUTS_PATH = DATA_DIR / "asr_outputs.yaml"
# Caller utterances are short; a runaway line must not cost seconds of feature extraction.
MAX_TEXT_CHARS = 1000

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LabelledPhrase:
    """One example utterance with its intent and language (``zh`` or ``en``)."""

    text: str
    intent: str
    language: str


@dataclass(frozen=True)
class IntentResult:
    """The decision for one utterance.

    ``intent`` is ``unknown`` when ``confidence`` (the probability of ``top_intent``) is below
    ``threshold`` or the utterance has too little content; ``top_intent`` keeps the model's
    choice either way. ``scores`` is empty when the model was not consulted.
    """

    text: str
    intent: str
    confidence: float
    top_intent: str
    scores: dict[str, float]
    threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class TrainingOptions:
    """Hyper-parameters of the logistic regression."""

    l2: float = 1e-6
    epochs: int = 120
    learning_rate: float = 0.2


@dataclass(frozen=True)
class RejectOptions:
    """When an utterance is answered ``unknown`` without trusting the model's choice.

    ``min_known_fraction`` is the share of an utterance's features that training has seen;
    below it the text is mostly words the model knows nothing about (gibberish, off-topic).
    """

    min_cjk_chars: int = 2
    min_latin_words: int = 1
    min_known_fraction: float = 0.35


@dataclass(frozen=True)
class IntentModel:
    """Trained weights and the feature vocabulary they index."""

    intents: tuple[str, ...]
    vocabulary: Mapping[str, int]
    weights: FloatArray  # (features, intents)
    bias: FloatArray  # (intents,)
    data_digest: str = ""
    training_examples: int = 0


@dataclass
class _SparseRows:
    """Rows of L2-normalised feature vectors in CSR form."""

    indptr: IntArray
    columns: IntArray
    values: FloatArray
    classes: int
    row_of_entry: IntArray = field(init=False)
    row_cells: IntArray = field(init=False)  # flat (row, class) cell of each entry and class

    def __post_init__(self) -> None:
        lengths = np.diff(self.indptr)
        self.row_of_entry = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        self.row_cells = (
            self.row_of_entry[:, None] * self.classes + np.arange(self.classes)
        ).ravel()

    @property
    def rows(self) -> int:
        return len(self.indptr) - 1


_training_lock = threading.Lock()
_training_runs = 0
_default_lock = threading.Lock()
_default: IntentClassifier | None = None


def training_runs() -> int:
    """How many models this process has trained (the default one is trained once)."""
    return _training_runs


def default_phrases() -> list[LabelledPhrase]:
    """The shipped training phrases: written ones plus what the default Whisper heard."""
    phrases = load_phrases(TRAIN_PATH)
    if ASR_OUTPUTS_PATH.is_file():
        phrases += load_phrases(ASR_OUTPUTS_PATH)
    return phrases


def load_phrases(path: Path) -> list[LabelledPhrase]:
    """Read labelled phrases from YAML shaped ``{intent: {language: [phrase, ...]}}``."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise IntentModelError(f"cannot read intent phrases from {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise IntentModelError(f"{path}: expected a mapping of intent to languages")
    phrases: list[LabelledPhrase] = []
    for intent, by_language in document.items():
        if intent not in INTENTS:
            raise IntentModelError(f"{path}: unknown intent {intent!r}")
        if not isinstance(by_language, dict):
            raise IntentModelError(f"{path}: {intent}: expected a mapping of language to phrases")
        for language, texts in by_language.items():
            if language not in LANGUAGES or not isinstance(texts, list):
                raise IntentModelError(f"{path}: {intent}.{language}: expected zh/en phrase list")
            for text in texts:
                if not isinstance(text, str) or not text.strip():
                    raise IntentModelError(f"{path}: {intent}.{language}: bad phrase {text!r}")
                phrases.append(LabelledPhrase(text=text, intent=intent, language=language))
    return phrases


def _featurize(text: str) -> tuple[str, list[str]]:
    normalized = normalize(text[:MAX_TEXT_CHARS])
    return normalized, extract_features(normalized)


def _vectorize(
    feature_lists: Sequence[list[str]], vocabulary: Mapping[str, int]
) -> tuple[_SparseRows, list[float]]:
    """Sparse rows of known features and, per row, the share of its features that are known."""
    indptr = [0]
    columns: list[int] = []
    values: list[float] = []
    known_fractions: list[float] = []
    for features in feature_lists:
        counts: dict[int, int] = {}
        known = 0
        for feature in features:
            column = vocabulary.get(feature)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
                known += 1
        known_fractions.append(known / len(features) if features else 0.0)
        # Sub-linear counts: a repeated word says a little more, not twice as much.
        row = {column: 1.0 + math.log(count) for column, count in counts.items()}
        norm = math.sqrt(sum(value * value for value in row.values())) or 1.0
        for column in sorted(row):
            columns.append(column)
            values.append(row[column] / norm)
        indptr.append(len(columns))
    rows = _SparseRows(
        indptr=np.asarray(indptr, dtype=np.int64),
        columns=np.asarray(columns, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        classes=len(INTENTS),
    )
    return rows, known_fractions


def _logits(rows: _SparseRows, weights: FloatArray, bias: FloatArray) -> FloatArray:
    contributions = rows.values[:, None] * weights[rows.columns]
    # One bincount over (row, class) cells is far faster than np.add.at.
    flat = np.asarray(
        np.bincount(
            rows.row_cells, weights=contributions.ravel(), minlength=rows.rows * rows.classes
        ),
        dtype=np.float64,
    )
    logits: FloatArray = flat.reshape(rows.rows, rows.classes) + bias
    return logits


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return result


def _data_digest(phrases: Sequence[LabelledPhrase]) -> str:
    digest = hashlib.sha256()
    for phrase in phrases:
        digest.update(f"{phrase.intent}\t{phrase.language}\t{phrase.text}\n".encode())
    return digest.hexdigest()[:16]


def train_model(
    phrases: Sequence[LabelledPhrase], options: TrainingOptions | None = None
) -> IntentModel:
    """Fit the logistic regression to labelled phrases; the same input gives the same model."""
    global _training_runs
    options = options or TrainingOptions()
    examples = [(phrase, _featurize(phrase.text)[1]) for phrase in phrases]
    examples = [(phrase, features) for phrase, features in examples if features]
    if not examples:
        raise IntentModelError("no usable training phrases")
    vocabulary: dict[str, int] = {}
    for _, features in examples:
        for feature in features:
            vocabulary.setdefault(feature, len(vocabulary))
    rows, _ = _vectorize([features for _, features in examples], vocabulary)
    labels = np.asarray([INTENTS.index(phrase.intent) for phrase, _ in examples])
    targets = np.zeros((len(examples), len(INTENTS)), dtype=np.float64)
    targets[np.arange(len(examples)), labels] = 1.0

    weights, bias = _fit(rows, targets, len(vocabulary), options)
    with _training_lock:
        _training_runs += 1
    return IntentModel(
        intents=INTENTS,
        vocabulary=vocabulary,
        weights=weights,
        bias=bias,
        data_digest=_data_digest([phrase for phrase, _ in examples]),
        training_examples=len(examples),
    )


def _fit(
    rows: _SparseRows, targets: FloatArray, n_features: int, options: TrainingOptions
) -> tuple[FloatArray, FloatArray]:
    """Full-batch Adam on mean cross-entropy plus an L2 penalty on the weights."""
    n_rows, n_classes = targets.shape
    weights = np.zeros((n_features, n_classes), dtype=np.float64)
    bias = np.zeros(n_classes, dtype=np.float64)
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    squares = [np.zeros_like(weights), np.zeros_like(bias)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    feature_cells = (rows.columns[:, None] * n_classes + np.arange(n_classes)).ravel()
    for step in range(1, options.epochs + 1):
        error = (_softmax(_logits(rows, weights, bias)) - targets) / n_rows
        spread = rows.values[:, None] * error[rows.row_of_entry]
        grad_weights: FloatArray = np.asarray(
            np.bincount(feature_cells, weights=spread.ravel(), minlength=n_features * n_classes),
            dtype=np.float64,
        ).reshape(n_features, n_classes)
        grad_weights += options.l2 * weights
        grads = [grad_weights, error.sum(axis=0)]
        params = [weights, bias]
        for i, grad in enumerate(grads):
            moments[i] = beta1 * moments[i] + (1 - beta1) * grad
            squares[i] = beta2 * squares[i] + (1 - beta2) * grad * grad
            corrected = moments[i] / (1 - beta1**step)
            scale = np.sqrt(squares[i] / (1 - beta2**step)) + eps
            params[i] -= options.learning_rate * corrected / scale
    return weights, bias


class IntentClassifier:
    """Classifies caller utterances into one of ``INTENTS``."""

    def __init__(self, model: IntentModel, reject: RejectOptions | None = None) -> None:
        self.model = model
        self.reject = reject or RejectOptions()

    @classmethod
    def train(
        cls,
        phrases: Sequence[LabelledPhrase],
        options: TrainingOptions | None = None,
        reject: RejectOptions | None = None,
    ) -> IntentClassifier:
        """A classifier trained on ``phrases``."""
        return cls(train_model(phrases, options), reject)

    @classmethod
    def default(cls) -> IntentClassifier:
        """The classifier trained on the shipped phrases; trained once per process."""
        global _default
        with _default_lock:
            if _default is None:
                _default = cls.train(default_phrases())
            return _default

    def classify(self, text: str, threshold: float = DEFAULT_THRESHOLD) -> IntentResult:
        """The intent of one utterance."""
        return self.classify_many([text], threshold)[0]

    def classify_many(
        self, texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD
    ) -> list[IntentResult]:
        """The intents of several utterances, in order."""
        featurized = [_featurize(text) for text in texts]
        rows, known = _vectorize([features for _, features in featurized], self.model.vocabulary)
        probabilities = _softmax(_logits(rows, self.model.weights, self.model.bias))
        results: list[IntentResult] = []
        for i, (text, (normalized, _)) in enumerate(zip(texts, featurized, strict=True)):
            if self._too_little_content(normalized, known[i]):
                results.append(IntentResult(text, UNKNOWN, 0.0, UNKNOWN, {}, threshold))
                continue
            scores = {
                intent: float(probabilities[i, j]) for j, intent in enumerate(self.model.intents)
            }
            top = int(np.argmax(probabilities[i]))
            top_intent, confidence = self.model.intents[top], float(probabilities[i, top])
            intent = top_intent if confidence >= threshold else UNKNOWN
            results.append(IntentResult(text, intent, confidence, top_intent, scores, threshold))
        return results

    def _too_little_content(self, normalized: str, known_fraction: float) -> bool:
        cjk_chars, latin_words = content_size(normalized)
        if cjk_chars < self.reject.min_cjk_chars and latin_words < self.reject.min_latin_words:
            return True
        return known_fraction < self.reject.min_known_fraction
