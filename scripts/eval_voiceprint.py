#!/usr/bin/env python3
"""Evaluate a speaker-embedding model on a trials list; prints one JSON object on stdout.

TRIALS is a text file with one trial per line, ``label enroll_path test_path``: label 1 is a
target trial (same speaker), 0 an impostor trial. Paths are relative to ``--audio-root`` (default:
the trials file's folder) unless absolute; blank lines and ``#`` comments are ignored. A malformed
line stops the run with exit code 2 and a message naming the line number. ``--cohort`` names a
file in the same format as the paths (one audio path per line) whose embeddings form the s-norm
cohort (at least two).

Audio is WAV (integer PCM: 8, 16, 24 or 32 bit) of any rate and channel count, read with the
``wave`` module, averaged to mono and resampled to 16 kHz with the windowed-sinc resampler below
(numpy only: no sox or torchaudio at evaluation time, so the conversion is the same everywhere).
``--telephone`` sends every file through an 8 kHz G.711 mu-law channel first: resample to 8 kHz,
mu-law encode to 8-bit codes and decode, resample back to 16 kHz.

Each distinct file is embedded once (``Embedder.embed`` in batches of similar length); trials are
scored by cosine, or by s-norm with ``--cohort``. EER, minDCF (p_target 0.01), the threshold for
``--target-fmr`` and the rates at the threshold come from ``voiceprint.scoring``. The threshold is
``--threshold`` when given ("given"), else the one meeting ``--target-fmr`` ("target_fmr"), else
the EER threshold ("eer"). Logs go to stderr.

Exit codes: 0 done; 2 bad trials, cohort or audio input (or bad arguments); 1 the model failed.

Usage: .venv/bin/python scripts/eval_voiceprint.py --trials TRIALS --model-dir DIR
       [--audio-root DIR] [--telephone] [--threshold T | --target-fmr 0.01]
       [--cohort LIST] [--device cpu|auto|cuda] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from voiceprint.scoring import (
    CohortNormaliser,
    CohortStats,
    cosine,
    eer,
    min_dcf,
    rates_at,
    threshold_for_fmr,
)

if TYPE_CHECKING:  # torch and SpeechBrain load only when a model is actually needed
    from voiceprint.embedding import Embedder

FloatArray = npt.NDArray[np.float32]
MODEL_RATE = 16000
TELEPHONE_RATE = 8000
MU = 255  # G.711 mu-law
P_TARGET = 0.01
EXIT_INPUT = 2
EXIT_MODEL = 1
# Sinc zero crossings on each side of an output sample: ~80 dB stop band with the Kaiser window.
_SINC_HALF_ZEROS = 16
_KAISER_BETA = 8.6
# The pass band ends a little below the new Nyquist so the window's transition band fits under it.
_ROLLOFF = 0.92
_CHUNK = 1 << 15  # output samples per vectorised block (bounds the (chunk, taps) matrix)

log = logging.getLogger("eval_voiceprint")


class InputError(Exception):
    """A trials, cohort or audio problem the user must fix (exit code 2)."""


@dataclass(frozen=True)
class Trial:
    """One line of the trials file."""

    line: int
    target: bool
    enroll: Path
    test: Path


@dataclass(frozen=True)
class ScoreSummary:
    """Evaluation measures of one set of target and impostor scores."""

    eer: float
    eer_threshold: float
    min_dcf: float
    threshold: float
    threshold_source: str  # "given" | "target_fmr" | "eer"
    fmr: float
    fnmr: float


def _resolve(raw: str, audio_root: Path) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else audio_root / path


def parse_trials(path: Path, audio_root: Path) -> list[Trial]:
    """Read ``label enroll test`` lines; raises ``InputError`` naming the first bad line."""
    trials = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise InputError(f"{path}:{number}: expected 'label enroll_path test_path' with "
                             f"label 0 or 1, got {raw.strip()!r}")
        trials.append(Trial(number, fields[0] == "1", _resolve(fields[1], audio_root),
                            _resolve(fields[2], audio_root)))
    if not trials:
        raise InputError(f"{path}: no trials")
    return trials


def parse_cohort(path: Path, audio_root: Path) -> list[Path]:
    """Cohort audio paths, one per line (``#`` comments and blank lines ignored)."""
    files = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if len(text.split()) != 1:
            raise InputError(f"{path}:{number}: expected one audio path, got {raw.strip()!r}")
        files.append(_resolve(text, audio_root))
    if len(set(files)) < 2:
        raise InputError(f"{path}: s-norm needs at least two distinct cohort files")
    return files


def read_wav(path: Path) -> tuple[FloatArray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of an integer-PCM WAV file."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise InputError(f"{path}: cannot read as integer-PCM WAV: {exc}") from exc
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:  # 8-bit WAV is unsigned
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width in (2, 3, 4):
        # Place each little-endian sample in the top bytes of an int32, then scale.
        padded = np.zeros((len(raw) // width, 4), dtype=np.uint8)
        padded[:, 4 - width:] = raw[: len(padded) * width].reshape(-1, width)
        samples = padded.view("<i4").reshape(-1).astype(np.float32) / 2.0**31
    else:
        raise InputError(f"{path}: unsupported sample width {width} bytes")
    mono = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return mono.astype(np.float32), rate


def resample(signal: npt.ArrayLike, src_rate: int, dst_rate: int) -> FloatArray:
    """Band-limited resampling by Kaiser-windowed sinc interpolation (any rate ratio)."""
    source = np.asarray(signal, dtype=np.float64)
    if src_rate == dst_rate:
        return source.astype(np.float32)
    # Cutoff as a fraction of the source Nyquist: below the lower of the two Nyquist rates.
    cutoff = _ROLLOFF * min(1.0, dst_rate / src_rate)
    half_width = math.ceil(_SINC_HALF_ZEROS / cutoff)  # in source samples
    n_out = int(len(source) * dst_rate // src_rate)
    offsets = np.arange(-half_width + 1, half_width + 1)
    padded = np.concatenate([np.zeros(half_width), source, np.zeros(half_width + 1)])
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, _CHUNK):
        times = np.arange(start, min(start + _CHUNK, n_out)) * (src_rate / dst_rate)
        base = np.floor(times).astype(np.int64)
        taps = base[:, None] + offsets[None, :]  # source indices under each output sample
        distance = times[:, None] - taps
        # The Kaiser window evaluated at each (fractional) distance from the output instant.
        inside = np.clip(1.0 - (distance / half_width) ** 2, 0.0, None)
        weights = np.i0(_KAISER_BETA * np.sqrt(inside)) / np.i0(_KAISER_BETA)
        weights *= cutoff * np.sinc(cutoff * distance)
        out[start:start + len(times)] = np.sum(padded[taps + half_width] * weights, axis=1)
    return out.astype(np.float32)


def mu_law_encode(signal: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """8-bit mu-law codes (0..255) of samples in [-1, 1] (the continuous G.711 curve)."""
    clipped = np.clip(np.asarray(signal, dtype=np.float64), -1.0, 1.0)
    companded = np.sign(clipped) * np.log1p(MU * np.abs(clipped)) / math.log1p(MU)
    codes: npt.NDArray[np.uint8] = np.rint((companded + 1.0) / 2.0 * MU).astype(np.uint8)
    return codes


def mu_law_decode(codes: npt.ArrayLike) -> FloatArray:
    """Samples in [-1, 1] from 8-bit mu-law codes."""
    companded = np.asarray(codes, dtype=np.float64) / MU * 2.0 - 1.0
    linear = np.sign(companded) * np.expm1(np.abs(companded) * math.log1p(MU)) / MU
    return linear.astype(np.float32)


def telephone_channel(signal: npt.ArrayLike, rate: int = MODEL_RATE) -> FloatArray:
    """``signal`` as heard through an 8 kHz G.711 mu-law call, back at ``rate``."""
    narrow = resample(signal, rate, TELEPHONE_RATE)
    return resample(mu_law_decode(mu_law_encode(narrow)), TELEPHONE_RATE, rate)


def load_audio(path: Path, telephone: bool) -> FloatArray:
    """A file as 16 kHz mono float32, optionally through the telephone channel."""
    samples, rate = read_wav(path)
    audio = resample(samples, rate, MODEL_RATE)
    return telephone_channel(audio) if telephone else audio


def embed_files(embedder: Embedder, files: Sequence[Path], telephone: bool,
                batch_size: int) -> dict[Path, FloatArray]:
    """One embedding per distinct file, batched by similar length to limit padding."""
    from voiceprint.embedding import MIN_EMBED_SECONDS

    audio = {path: load_audio(path, telephone) for path in dict.fromkeys(files)}
    for path, samples in audio.items():
        if len(samples) < MIN_EMBED_SECONDS * MODEL_RATE:
            raise InputError(f"{path}: {len(samples) / MODEL_RATE:.3f} s of audio; the model "
                             f"needs at least {MIN_EMBED_SECONDS} s")
    ordered = sorted(audio, key=lambda path: len(audio[path]))
    embeddings: dict[Path, FloatArray] = {}
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        embeddings.update(zip(chunk, embedder.embed([audio[path] for path in chunk]),
                              strict=True))
    return embeddings


def score_trials(trials: Sequence[Trial], embeddings: dict[Path, FloatArray],
                 normaliser: CohortNormaliser | None) -> tuple[list[float], list[float]]:
    """(target scores, impostor scores): cosine, or s-norm when a cohort normaliser is given."""
    stats: dict[Path, CohortStats] = {}
    if normaliser is not None:
        stats = {path: normaliser.stats(vector) for path, vector in embeddings.items()}
    targets: list[float] = []
    impostors: list[float] = []
    for trial in trials:
        score = cosine(embeddings[trial.enroll], embeddings[trial.test])
        if normaliser is not None:
            score = normaliser.normalise_with(score, stats[trial.enroll], stats[trial.test])
        (targets if trial.target else impostors).append(score)
    return targets, impostors


def summarise_scores(target: Sequence[float], impostor: Sequence[float],
                     threshold: float | None = None,
                     target_fmr: float | None = None) -> ScoreSummary:
    """EER, minDCF and the rates at the chosen threshold, all from ``voiceprint.scoring``."""
    rate, eer_threshold = eer(target, impostor)
    if threshold is not None:
        chosen, source = threshold, "given"
    elif target_fmr is not None:
        chosen, source = threshold_for_fmr(impostor, target_fmr), "target_fmr"
    else:
        chosen, source = eer_threshold, "eer"
    fmr, fnmr = rates_at(chosen, target, impostor)
    return ScoreSummary(eer=rate, eer_threshold=eer_threshold,
                        min_dcf=min_dcf(target, impostor, p_target=P_TARGET), threshold=chosen,
                        threshold_source=source, fmr=fmr, fnmr=fnmr)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--audio-root", type=Path, default=None,
                        help="base of relative paths (default: the trials file's folder)")
    parser.add_argument("--telephone", action="store_true",
                        help="pass audio through an 8 kHz G.711 mu-law channel")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=float, default=None)
    choice.add_argument("--target-fmr", type=float, default=None)
    parser.add_argument("--cohort", type=Path, default=None,
                        help="file listing cohort audio paths; enables s-norm")
    parser.add_argument("--device", choices=("cpu", "auto", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.target_fmr is not None and not 0.0 <= args.target_fmr <= 1.0:
        parser.error("--target-fmr must be in [0, 1]")
    if args.threshold is not None and not math.isfinite(args.threshold):
        parser.error("--threshold must be finite")
    return args


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by parsed arguments; returns the JSON object."""
    from voiceprint.embedding import EmbedderOptions, load_embedder

    audio_root = args.audio_root or args.trials.parent
    try:
        trials = parse_trials(args.trials, audio_root)
        cohort = parse_cohort(args.cohort, audio_root) if args.cohort else []
    except OSError as exc:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    targets = sum(trial.target for trial in trials)
    if targets in (0, len(trials)):
        raise InputError(f"{args.trials}: need both target (1) and impostor (0) trials")
    embedder = load_embedder(EmbedderOptions(args.model_dir, device=args.device))
    try:
        log.info("model loaded", extra={"model_id": embedder.model_id, "device": embedder.device})
        files = [path for trial in trials for path in (trial.enroll, trial.test)]
        embeddings = embed_files(embedder, files, args.telephone, args.batch_size)
        log.info("trial audio embedded", extra={"files": len(embeddings)})
        normaliser = None
        if cohort:
            cohort_rows = embed_files(embedder, cohort, args.telephone, args.batch_size)
            normaliser = CohortNormaliser(np.stack(list(cohort_rows.values())))
        identity = {"id": embedder.model_id, "version": embedder.model_version,
                    "device": embedder.device, "dim": embedder.dim}
    finally:
        embedder.close()
    target_scores, impostor_scores = score_trials(trials, embeddings, normaliser)
    summary = summarise_scores(target_scores, impostor_scores, args.threshold, args.target_fmr)
    return {
        "trials": len(trials), "targets": len(target_scores), "impostors": len(impostor_scores),
        "telephone": bool(args.telephone), "model": identity,
        "eer": summary.eer, "eer_threshold": summary.eer_threshold, "min_dcf": summary.min_dcf,
        "threshold": summary.threshold, "threshold_source": summary.threshold_source,
        "fmr": summary.fmr, "fnmr": summary.fnmr,
        "score_normalisation": "s-norm" if normaliser is not None else "none",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    from voiceprint.errors import EmbeddingModelError

    try:
        result = evaluate(args)
    except InputError as exc:
        print(f"eval_voiceprint: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except EmbeddingModelError as exc:
        print(f"eval_voiceprint: model error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
