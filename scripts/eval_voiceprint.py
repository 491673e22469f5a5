#!/usr/bin/env python3
"""Evaluate a speaker-embedding model on real speakers or a trials list; prints one JSON object.

``--corpus system`` (the evaluation behind the shipped thresholds) builds the trials from the
real speakers this machine's Debian packages carry, enrolls each with three utterances as a
caller would, and scores every other utterance of every speaker against every template, in
three channels: ``clean`` (16 kHz), ``g711`` (8 kHz mu-law) and ``g711-loss2`` (and 2 % of
20 ms packets lost, filled with silence). Enrollment goes through the same channel as the test,
as it does on a phone. Speakers: Asterisk's prompts (Allison Smith in English, her Spanish
prompts as more test audio; June Wallack, French; Carlo Flora, Italian; the Russian ivrvoice.ru
voice), the LibriVox reader of pocketsphinx-testdata, and flite's four voices (kal, awb, rms,
slt); impostor-only audio: five unnamed pocketsphinx speakers and eleven espeak-ng voices. Test
utterances are cut to ``--test-seconds`` (4 s: about a spoken six-digit challenge). For each
channel it reports EER, minDCF and FMR/FNMR at the model's shipped thresholds, for raw cosine and
for s-norm against the other enrolled speakers' templates. ``--write-calibration`` stores the
thresholds for ``--target-fmr`` chosen on the ``g711`` channel, with its impostor scores
(``voiceprint/calibration/<model>.json``). Needs: asterisk-core-sounds-{en,es,fr,it,ru}-wav,
pocketsphinx-testdata, flite, espeak-ng, sox (missing sources are skipped and listed).

With ``--trials``:

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

Usage: .venv/bin/python scripts/eval_voiceprint.py --corpus system [--model dvector|ecapa]
       [--model-dir DIR] [--per-speaker 30] [--test-seconds 4] [--channels clean,g711,...]
       [--target-fmr 0.001] [--write-calibration]
   or: .venv/bin/python scripts/eval_voiceprint.py --trials TRIALS [--model ...] [--model-dir DIR]
       [--audio-root DIR] [--telephone] [--threshold T | --target-fmr 0.01]
       [--cohort LIST] [--device cpu|auto|cuda] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
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


# ---- the corpus of real speakers on this machine ------------------------------------------

SOUNDS = Path("/usr/share/asterisk/sounds")
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
# One real person per folder; Allison Smith recorded both the English and the Spanish prompts.
ASTERISK_SPEAKERS = {
    "allison": ("en_US_f_Allison", "es_MX_f_Allison"),
    "june": ("fr_CA_f_June",),
    "carlo": ("it_IT_m_Carlo",),
    "ivrvoice-ru": ("ru_RU_f_IvrvoiceRU",),
}
ENROLL_PROMPTS = ("agent-user.wav", "dir-instr.wav", "vm-rec-name.wav")  # 3.7-7.8 s, every language
NOT_SPEECH = ("silence/", "tt-monkeys", "beep", "tone", "vm-intro")
LIBRIVOX = ("0870", "0890", "0920", "0880", "0930")  # first three enroll
IMPOSTOR_FILES = ("cards/005.wav", "goforward.raw", "numbers.raw", "something.raw",
                  "tidigits/dhd.2934z.raw")  # unnamed pocketsphinx speakers
FLITE_VOICES = ("kal", "awb", "rms", "slt")
ESPEAK_VOICES = tuple(f"en-us+{v}" for v in ("m1", "m2", "m3", "m4", "m5", "m6", "m7",
                                               "f1", "f2", "f3", "f4"))
SENTENCES = (
    "Please tell me the reason for your call today in a few words.",
    "I would like to check the balance on my account and my last payment.",
    "The weather in the mountains was cold and windy all weekend.",
    "My order arrived yesterday but the box was damaged and one item is missing.",
    "Could you transfer me to someone who can help with a billing question?",
    "She planted tomatoes, beans and sunflowers along the garden fence.",
    "I moved to a new address last month and need to update my details.",
    "The train to the airport leaves every twenty minutes from platform four.",
    "Yesterday I tried to reset my password three times without success.",
    "Our team meeting has been moved from Tuesday morning to Thursday afternoon.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Thank you for your patience, I will wait on the line until an agent answers.",
)
CHANNELS = ("clean", "g711", "g711-loss2")
PACKET = MODEL_RATE // 50  # 20 ms


@dataclass
class Speaker:
    """One voice of the corpus: enrollment audio (none: impostor only) and test audio."""

    name: str
    source: str
    enroll: list[FloatArray]
    tests: list[FloatArray]


def _wav_seconds(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (OSError, wave.Error, EOFError):
        return 0.0


def _load_any(path: Path) -> FloatArray:
    """A WAV, or headerless 16 kHz 16-bit little-endian ``.raw``, as 16 kHz float32."""
    if path.suffix == ".raw":
        return (np.frombuffer(path.read_bytes(), "<i2").astype(np.float32) / 32768.0)
    samples, rate = read_wav(path)
    return resample(samples, rate, MODEL_RATE)


def _spread(items: Sequence[Path], count: int) -> list[Path]:
    """``count`` items spread evenly over a sorted list (not just its first letters)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _synth(command: list[str], out: Path) -> FloatArray | None:
    """Run a synthesiser whose output file is the ``{out}`` argument (cached by name)."""
    if not out.exists():
        argv = [str(out) if part == "{out}" else part for part in command]
        done = subprocess.run(argv, capture_output=True, check=False)
        if done.returncode != 0 or not out.exists():
            return None
    return _load_any(out)


def system_corpus(work: Path, per_speaker: int, test_seconds: float,
                  skipped: list[str]) -> list[Speaker]:
    """The speakers available on this machine (see the module docstring); sources that are
    not installed are named in ``skipped``."""
    cut = int(test_seconds * MODEL_RATE)
    speakers: list[Speaker] = []
    for name, folders in ASTERISK_SPEAKERS.items():
        present = [SOUNDS / f for f in folders if (SOUNDS / f).is_dir()]
        if not present:
            skipped.append(f"{name}: {SOUNDS}/{folders[0]} (asterisk-core-sounds-*-wav)")
            continue
        first = present[0]
        enroll = [_load_any(first / prompt) for prompt in ENROLL_PROMPTS]
        tests: list[Path] = []
        for folder in present:
            usable = sorted(
                p for p in folder.rglob("*.wav")
                if p.name not in ENROLL_PROMPTS and _wav_seconds(p) >= 2.5
                and not any(mark in str(p.relative_to(folder)) for mark in NOT_SPEECH))
            tests += _spread(usable, per_speaker // len(present))
        speakers.append(Speaker(name, "asterisk-core-sounds", enroll,
                                [_load_any(p)[:cut] for p in tests]))
    reader = [POCKETSPHINX / "librivox" / f"sense_and_sensibility_01_austen_64kb-{n}.wav"
              for n in LIBRIVOX]
    if all(p.is_file() for p in reader):
        speakers.append(Speaker("librivox-reader", "pocketsphinx-testdata",
                                [_load_any(p) for p in reader[:3]],
                                [_load_any(p)[:cut] for p in reader[3:]]))
        unnamed = [_load_any(POCKETSPHINX / f)[:cut] for f in IMPOSTOR_FILES
                   if (POCKETSPHINX / f).is_file()]
        speakers.append(Speaker("pocketsphinx-unnamed", "pocketsphinx-testdata", [], unnamed))
    else:
        skipped.append(f"librivox reader and unnamed speakers: {POCKETSPHINX} "
                       "(pocketsphinx-testdata)")
    work.mkdir(parents=True, exist_ok=True)
    for voice in FLITE_VOICES:
        clips = [_synth(["flite", "-voice", voice, "-t", text, "-o", "{out}"],
                        work / f"flite-{voice}-{n}.wav") for n, text in enumerate(SENTENCES)]
        if any(clip is None for clip in clips):
            skipped.append(f"flite voice {voice} (flite)")
            continue
        audio = [clip for clip in clips if clip is not None]
        speakers.append(Speaker(f"flite-{voice}", "flite", audio[:3],
                                [clip[:cut] for clip in audio[3:]]))
    synthetic: list[FloatArray] = []
    for voice in ESPEAK_VOICES:
        for n, text in enumerate(SENTENCES[:2]):
            clip = _synth(["espeak-ng", "-v", voice, "-w", "{out}", text],
                          work / f"espeak-{voice}-{n}.wav")
            if clip is not None:
                synthetic.append(clip[:cut])
    if synthetic:
        speakers.append(Speaker("espeak-ng", "espeak-ng", [], synthetic))
    else:
        skipped.append("espeak-ng voices (espeak-ng)")
    return speakers


def through_channel(audio: FloatArray, channel: str, rng: np.random.Generator) -> FloatArray:
    """``audio`` (16 kHz) as the model hears it through ``channel``."""
    if channel == "clean":
        return audio
    heard = telephone_channel(audio)
    if channel == "g711-loss2":
        heard = heard.copy()
        for start in range(0, len(heard), PACKET):
            if rng.random() < 0.02:
                heard[start:start + PACKET] = 0.0
    return heard


def _template(rows: FloatArray) -> FloatArray:
    mean = rows.mean(axis=0)
    out: FloatArray = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    return out


def corpus_scores(embedder: Embedder, speakers: Sequence[Speaker], channel: str,
                  batch_size: int, seed: int = 7) -> dict[str, tuple[list[float], list[float]]]:
    """(target, impostor) scores per score kind ("raw", "snorm") for one channel."""
    rng = np.random.default_rng(seed)

    def embed(clips: Sequence[FloatArray]) -> FloatArray:
        heard = [through_channel(clip, channel, rng) for clip in clips]
        rows = [embedder.embed(heard[i:i + batch_size])
                for i in range(0, len(heard), batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)

    templates = {s.name: _template(embed(s.enroll)) for s in speakers if s.enroll}
    tests = {s.name: embed(s.tests) for s in speakers}
    out: dict[str, tuple[list[float], list[float]]] = {"raw": ([], []), "snorm": ([], [])}
    for name, template in templates.items():
        others = np.stack([t for n, t in templates.items() if n != name])
        normaliser = CohortNormaliser(others) if len(others) >= 2 else None
        for owner, rows in tests.items():
            for row in rows:
                raw = cosine(template, row)
                out["raw"][0 if owner == name else 1].append(raw)
                if normaliser is not None:
                    out["snorm"][0 if owner == name else 1].append(
                        normaliser.score(template, row))
    return out


def _rates(targets: Sequence[float], impostors: Sequence[float],
           shipped: tuple[float, float] | None) -> dict[str, Any]:
    """EER and minDCF; with the shipped (accept, reject) thresholds also the rates at them."""
    rate, eer_threshold = eer(targets, impostors)
    out: dict[str, Any] = {
        "target_trials": len(targets), "impostor_trials": len(impostors),
        "eer": round(rate, 4), "eer_threshold": round(eer_threshold, 4),
        "min_dcf": round(min_dcf(targets, impostors, p_target=P_TARGET), 4),
        "impostor_max": round(float(max(impostors)), 4),
        "target_min": round(float(min(targets)), 4)}
    if shipped is not None:
        accept, reject = shipped
        fmr, fnmr = rates_at(accept, targets, impostors)
        out.update(fmr_at_accept=round(fmr, 5), fnmr_at_accept=round(fnmr, 4),
                   fnmr_below_reject=round(float(np.mean(np.asarray(targets) < reject)), 4),
                   fmr_above_reject=round(float(np.mean(np.asarray(impostors) >= reject)), 4))
    return out


def evaluate_corpus(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--corpus system`` evaluation; returns the JSON object."""
    from voiceprint import calibration

    skipped: list[str] = []
    work = args.work or Path(tempfile.mkdtemp(prefix="eval-voiceprint-"))
    speakers = system_corpus(work, args.per_speaker, args.test_seconds, skipped)
    enrolled = [s for s in speakers if s.enroll]
    if len(enrolled) < 3:
        raise InputError("fewer than 3 speakers to enroll on this machine; install "
                         "asterisk-core-sounds-*-wav, pocketsphinx-testdata, flite")
    embedder = load_model(args)
    try:
        try:
            shipped = None if args.write_calibration else calibration.load(embedder.model_id)
        except ValueError as exc:
            raise InputError(f"{exc}: run with --write-calibration first") from exc
        identity: dict[str, Any] = {"id": embedder.model_id, "version": embedder.model_version,
                                    "device": embedder.device, "dim": embedder.dim}
        channels = {channel: corpus_scores(embedder, speakers, channel, args.batch_size)
                    for channel in args.channels}
    finally:
        embedder.close()
    if shipped is None:  # choose on the phone channel, then report everything against it
        basis = channels["g711"] if "g711" in channels else next(iter(channels.values()))
        kind = args.score
        targets, impostors = basis[kind]
        accept = threshold_for_fmr(impostors, args.target_fmr)
        reject = threshold_for_fmr(impostors, args.reject_fmr)
        shipped = calibration.Calibration(
            str(identity["id"]), kind, accept=round(accept, 4),
            reject=round(min(reject, accept), 4),
            target_fmr=args.target_fmr, impostor_scores=tuple(sorted(impostors)),
            basis={"speakers": len(enrolled), "channel": "g711" if "g711" in channels else
                   args.channels[0], "impostor_trials": len(impostors),
                   "target_trials": len(targets), "reject_fmr": args.reject_fmr,
                   "test_seconds": args.test_seconds, "model_version": identity["version"],
                   "command": "scripts/eval_voiceprint.py --corpus system --write-calibration"})
        calibration.save(shipped)
    # The shipped score kind at its thresholds; the other kind next to it at the EER only.
    table = {channel: {kind: _rates(t, i, (shipped.accept, shipped.reject)
                                    if kind == shipped.score else None)
                       for kind, (t, i) in scores.items() if t and i}
             for channel, scores in channels.items()}
    return {"corpus": "system", "model": identity,
            "speakers": {s.name: {"source": s.source, "enroll": len(s.enroll),
                                  "tests": len(s.tests)} for s in speakers},
            "enrolled_speakers": len(enrolled), "skipped": skipped,
            "test_seconds": args.test_seconds,
            "shipped": {"score": shipped.score, "accept": shipped.accept,
                        "reject": shipped.reject, "target_fmr": shipped.target_fmr},
            "channels": table}


def load_model(args: argparse.Namespace) -> Embedder:
    """The model named by ``--model`` (and ``--model-dir``)."""
    if args.model == "dvector":
        from voiceprint import dvector

        return dvector.load_dvector(args.model_dir or dvector.install(), args.device)
    from voiceprint.embedding import EmbedderOptions, load_embedder

    if args.model_dir is None:
        raise InputError("--model ecapa needs --model-dir (a SpeechBrain ECAPA folder)")
    return load_embedder(EmbedderOptions(args.model_dir, device=args.device))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trials", type=Path)
    source.add_argument("--corpus", choices=("system",),
                        help="the real speakers of this machine's Debian packages")
    parser.add_argument("--model", choices=("dvector", "ecapa"), default="dvector")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="default: the installed d-vector weights (ecapa: required)")
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
    corpus = parser.add_argument_group("--corpus")
    corpus.add_argument("--per-speaker", type=int, default=30,
                        help="test utterances per Asterisk speaker")
    corpus.add_argument("--test-seconds", type=float, default=4.0)
    corpus.add_argument("--channels", type=lambda text: text.split(","),
                        default=list(CHANNELS))
    corpus.add_argument("--score", choices=("raw", "snorm"), default="raw",
                        help="score kind the written thresholds apply to")
    corpus.add_argument("--reject-fmr", type=float, default=0.05,
                        help="reject below the score this share of impostors reaches")
    corpus.add_argument("--write-calibration", action="store_true",
                        help="choose thresholds for --target-fmr (default 0.001) on g711 and "
                             "write voiceprint/calibration/<model>.json")
    corpus.add_argument("--work", type=Path, default=None,
                        help="folder for synthesised speech (default: a new temp folder)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.target_fmr is not None and not 0.0 <= args.target_fmr <= 1.0:
        parser.error("--target-fmr must be in [0, 1]")
    if args.threshold is not None and not math.isfinite(args.threshold):
        parser.error("--threshold must be finite")
    if args.corpus:
        unknown = [c for c in args.channels if c not in CHANNELS]
        if unknown or not args.channels:
            parser.error(f"--channels: choose from {', '.join(CHANNELS)}")
        if args.target_fmr is None:
            args.target_fmr = 0.001
        if args.per_speaker < 2 or not 1.0 <= args.test_seconds <= 30.0:
            parser.error("--per-speaker must be >= 2 and --test-seconds in [1, 30]")
    return args


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by parsed arguments; returns the JSON object."""
    if args.corpus:
        return evaluate_corpus(args)
    audio_root = args.audio_root or args.trials.parent
    try:
        trials = parse_trials(args.trials, audio_root)
        cohort = parse_cohort(args.cohort, audio_root) if args.cohort else []
    except OSError as exc:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    targets = sum(trial.target for trial in trials)
    if targets in (0, len(trials)):
        raise InputError(f"{args.trials}: need both target (1) and impostor (0) trials")
    embedder = load_model(args)
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
