"""Caller intent from an utterance's transcript (Mandarin, English, mixed)."""

from asr.intent.classifier import (
    DEFAULT_THRESHOLD,
    INTENTS,
    UNKNOWN,
    IntentClassifier,
    IntentModel,
    IntentResult,
    LabelledPhrase,
    RejectOptions,
    TrainingOptions,
    load_phrases,
    train_model,
    training_runs,
)
from asr.intent.features import extract_features, normalize

__all__ = [
    "DEFAULT_THRESHOLD",
    "INTENTS",
    "UNKNOWN",
    "IntentClassifier",
    "IntentModel",
    "IntentResult",
    "LabelledPhrase",
    "RejectOptions",
    "TrainingOptions",
    "extract_features",
    "load_phrases",
    "normalize",
    "train_model",
    "training_runs",
]
