"""scripts/eval_voiceprint.py: end to end on the tiny random ECAPA and espeak-ng speech."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "eval_voiceprint.py"
# "Speakers" are espeak-ng voices and pitches; the random model cannot tell them apart, but the
# harness must still count, score and report every trial.
SPEAKERS = {
    "us-low": ["-v", "en-us", "-p", "30"],
    "us-high": ["-v", "en-us+f3", "-p", "70"],
    "gb": ["-v", "en-gb"],
}
COHORT_VOICES = {"rp": ["-v", "en-gb-x-rp", "-p", "45"], "scot": ["-v", "en-gb-scotland"]}
SENTENCES = (
    "Hello, thank you for calling the hotline.",
    "Please say your account number after the tone.",
    "My order has not arrived yet.",
)
FIELDS = {"trials", "targets", "impostors", "telephone", "model", "eer", "eer_threshold",
          "min_dcf", "threshold", "threshold_source", "fmr", "fnmr", "score_normalisation"}


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_voiceprint", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


evaluation = _load_script()


def _speak(voice: list[str], sentence: str, out: Path, to_16k: bool) -> None:
    raw = out.with_suffix(".raw.wav") if to_16k else out
    subprocess.run(["espeak-ng", *voice, "-w", str(raw), sentence], check=True)
    if to_16k:
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)],
                       check=True)
        raw.unlink()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trials over 3 voices x 3 sentences (16 kHz), plus a 22.05 kHz cohort list."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed for test speech")
    folder = tmp_path_factory.mktemp("eval-corpus")
    for name, voice in SPEAKERS.items():
        for index, sentence in enumerate(SENTENCES):
            _speak(voice, sentence, folder / f"{name}-{index}.wav", to_16k=True)
    # espeak's own 22.05 kHz output, so the script's resampler runs too.
    (folder / "cohort").mkdir()
    for name, voice in COHORT_VOICES.items():
        for index, sentence in enumerate(SENTENCES[:2]):
            _speak(voice, sentence, folder / "cohort" / f"{name}-{index}.wav", to_16k=False)
    lines = ["# label enroll test", ""]
    names = list(SPEAKERS)
    for name in names:  # targets: every pair of one voice's sentences
        for first in range(len(SENTENCES)):
            for second in range(first + 1, len(SENTENCES)):
                lines.append(f"1 {name}-{first}.wav {name}-{second}.wav")
    for left in range(len(names)):  # impostors: every sentence pair across two voices
        for right in range(left + 1, len(names)):
            for first in range(len(SENTENCES)):
                for second in range(len(SENTENCES)):
                    lines.append(f"0 {names[left]}-{first}.wav {names[right]}-{second}.wav")
    lines[-1] = lines[-1].replace(f"{names[-1]}-", f"{folder}/{names[-1]}-")  # an absolute path
    lines.append("0 us-low-0.wav gb-2.wav  # trailing comment")
    (folder / "trials.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cohort = sorted(str(p.relative_to(folder)) for p in (folder / "cohort").iterdir())
    (folder / "cohort.txt").write_text("\n".join(cohort) + "\n", encoding="utf-8")
    return folder


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def _evaluate(corpus: Path, model: Path, *extra: str | Path) -> dict[str, Any]:
    done = _run("--trials", corpus / "trials.txt", "--model", "ecapa", "--model-dir", model,
                "--device", "cpu", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)  # exactly one JSON object, logs elsewhere
    assert set(result) == FIELDS
    assert (result["trials"], result["targets"], result["impostors"]) == (37, 9, 28)
    assert result["model"]["id"] == "ecapa"
    assert result["model"]["version"].startswith("sha256:")
    for rate in ("eer", "min_dcf", "fmr", "fnmr"):
        assert 0.0 <= result[rate] <= 1.0, (rate, result)
    return result


def test_end_to_end_on_tiny_model(corpus: Path) -> None:
    model = build_tiny_ecapa()
    plain = _evaluate(corpus, model)
    assert (plain["telephone"], plain["threshold_source"]) == (False, "eer")
    assert plain["score_normalisation"] == "none"
    assert plain["threshold"] == plain["eer_threshold"]
    assert -1.0 <= plain["eer_threshold"] <= 1.0  # a cosine

    phone = _evaluate(corpus, model, "--telephone", "--threshold", "0.5")
    assert (phone["telephone"], phone["threshold_source"], phone["threshold"]) == (
        True, "given", 0.5)
    # The G.711 channel changes the audio, so the scores and their EER threshold move.
    assert phone["eer_threshold"] != plain["eer_threshold"]

    normed = _evaluate(corpus, model, "--telephone", "--target-fmr", "0.1",
                       "--cohort", corpus / "cohort.txt")
    assert (normed["threshold_source"], normed["score_normalisation"]) == ("target_fmr", "s-norm")
    assert normed["fmr"] <= 0.1


def test_scores_match_hand_computed_eer() -> None:
    targets, impostors = [0.9, 0.8, 0.7, 0.4], [0.1, 0.3, 0.5, 0.6]
    # Accepting at >= 0.6: impostors accepted {0.6} -> FMR 1/4; targets rejected {0.4} -> FNMR
    # 1/4. At 0.5 FMR is 2/4 > FNMR 1/4, at 0.7 FMR 0 < FNMR 1/4: they meet at 0.6, EER 0.25.
    summary = evaluation.summarise_scores(targets, impostors)
    assert (summary.eer, summary.eer_threshold) == pytest.approx((0.25, 0.6))
    assert (summary.threshold, summary.threshold_source) == (summary.eer_threshold, "eer")
    assert (summary.fmr, summary.fnmr) == pytest.approx((0.25, 0.25))
    # minDCF at p_target 0.01: cost 0.01 FNMR + 0.99 FMR, over the best fixed answer's 0.01.
    # Best is accepting at >= 0.7 (FMR 0, FNMR 1/4): 0.0025 / 0.01 = 0.25.
    assert summary.min_dcf == pytest.approx(0.25)

    given = evaluation.summarise_scores(targets, impostors, threshold=0.65)
    assert (given.threshold_source, given.fmr, given.fnmr) == ("given", 0.0, 0.25)
    # FMR <= 1/4 allows one false accept (0.6): the threshold sits just above 0.5.
    by_fmr = evaluation.summarise_scores(targets, impostors, target_fmr=0.25)
    assert by_fmr.threshold_source == "target_fmr"
    assert 0.5 < by_fmr.threshold <= 0.6
    assert (by_fmr.fmr, by_fmr.fnmr) == (0.25, 0.25)


def _tone(frequency: float, rate: int = 16000, seconds: float = 1.0) -> np.ndarray[Any, Any]:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)).astype(
        np.float32)


def _rms(signal: np.ndarray[Any, Any]) -> float:
    middle = signal[len(signal) // 10: -len(signal) // 10]  # skip the resampler's edges
    return float(np.sqrt(np.mean(np.square(middle, dtype=np.float64))))


def test_mu_law_channel_keeps_speech_band_and_drops_above_4khz() -> None:
    tone = _tone(1000.0)
    codes = evaluation.mu_law_encode(tone)
    assert codes.dtype == np.uint8 and len(np.unique(codes)) <= 256
    # Companding keeps the error relative to the amplitude (well under 1/64 of full scale here).
    assert np.max(np.abs(evaluation.mu_law_decode(codes) - tone)) < 0.5 / 32

    heard = evaluation.telephone_channel(tone)
    assert heard.dtype == np.float32 and len(heard) == len(tone)
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(len(heard))))
    assert np.argmax(spectrum) * 16000 / len(heard) == pytest.approx(1000.0, abs=2.0)
    assert _rms(heard) == pytest.approx(_rms(tone), rel=0.05)
    # Above the 4 kHz Nyquist of the 8 kHz channel: gone (over 40 dB down).
    assert _rms(evaluation.telephone_channel(_tone(6000.0))) < 0.01 * _rms(_tone(6000.0))


@pytest.mark.parametrize("bad_line", ["2 a.wav b.wav", "1 a.wav", "yes a.wav b.wav c.wav"])
def test_malformed_trials_line_exits_2(tmp_path: Path, bad_line: str) -> None:
    trials = tmp_path / "trials.txt"
    trials.write_text(f"# header\n1 a.wav b.wav\n\n{bad_line}\n0 a.wav c.wav\n", encoding="utf-8")
    done = _run("--trials", trials, "--model", "ecapa", "--model-dir", tmp_path / "no-model")
    assert done.returncode == 2
    assert f"{trials}:4:" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_real_speaker_corpus_on_the_shipped_model(tmp_path: Path) -> None:
    """``--corpus system`` on a small slice: every installed real speaker is enrolled and
    scored through the phone channel against the shipped thresholds; nothing is written."""
    from voiceprint import calibration, dvector

    if not (dvector.installed_dir() / dvector.VERIFIED_MARK).is_file():
        pytest.skip("d-vector weights not installed; run make models")
    shipped = calibration.load("dvector")
    before = (calibration.FOLDER / "dvector.json").read_bytes()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--corpus", "system", "--per-speaker", "4",
         "--channels", "g711", "--work", str(tmp_path), "--device", "cpu"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (calibration.FOLDER / "dvector.json").read_bytes() == before
    assert result["shipped"]["accept"] == shipped.accept
    enrolled = [n for n, s in result["speakers"].items() if s["enroll"]]
    assert {"flite-kal", "flite-awb", "flite-rms", "flite-slt", "allison"} <= set(enrolled), \
        result["skipped"]
    raw = result["channels"]["g711"]["raw"]
    assert raw["impostor_trials"] > 10 * raw["target_trials"] > 0
    # A trained model separates these voices far better than chance.
    assert raw["eer"] < 0.15 and raw["target_min"] > 0.5, raw
    assert set(result["channels"]["g711"]) == {"raw", "snorm"}
