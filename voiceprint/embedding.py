"""Speaker embeddings: the encoder interface tier 2 uses, and the SpeechBrain ECAPA model.

Two encoders sit behind :class:`Embedder`: ``ecapa`` (an ECAPA-TDNN in the layout of
``speechbrain/spkrec-ecapa-voxceleb``, for operators who bring its weights, loaded here by
``load_embedder``) and ``dvector`` (the trained GE2E d-vector encoder, ``voiceprint.dvector``,
the default). Every loader checks its folder and runs one warm-up utterance, so a broken model
fails at start-up rather than on the first caller. ``embed`` is blocking; ``embed_async`` runs
it on the embedder's own single worker thread, never on the event loop, so calls queue instead
of competing for the CPU/GPU. ``model_id`` and ``model_version`` name the weights in every
template and decision: a template is only ever scored against an embedding of the same model.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from voiceprint.errors import EmbeddingModelError

Device = Literal["auto", "cuda", "cpu"]
HPARAMS_NAME = "hyperparams.yaml"
CHECKPOINT_NAME = "embedding_model.ckpt"
# Fbank needs whole 25 ms frames and the TDNN's dilated convolutions need some context.
MIN_EMBED_SECONDS = 0.1
_VERSION_BYTES = 1 << 20
_PRETRAINED_PATH_KEY = re.compile(r"^pretrained_path\s*:", re.MULTILINE)

FloatArray = npt.NDArray[np.float32]


def default_savedir(model_dir: Path) -> Path:
    """SpeechBrain's link folder for ``model_dir``: ``~/.cache/ivr/speechbrain/<hash>``."""
    from voiceprint.testing.tiny_ecapa import cache_root

    digest = hashlib.sha256(str(model_dir.expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_root() / "speechbrain" / digest


@dataclass(frozen=True)
class EmbedderOptions:
    """Where the model is and where it runs."""

    model_dir: Path
    device: Device = "auto"
    savedir: Path | None = None  # None: default_savedir(model_dir)
    sample_rate: int = 16000  # the rate of the audio given to embed(); the model's own rate


class Embedder:
    """A loaded speaker-embedding model; ``embed`` returns L2-normalised rows.

    Subclasses implement ``_embed_waves`` (a list of validated float32 waveforms at
    ``sample_rate`` to an (n, dim) array) and set ``model_id`` (which encoder: ``ecapa``,
    ``dvector``...) and ``model_version`` (which weights: a digest of the checkpoint).
    """

    def __init__(self, model_id: str, device: str, sample_rate: int,
                 model_version: str) -> None:
        self._model_id = model_id
        self._device = device
        self._sample_rate = sample_rate
        self._model_version = model_version
        self._lock = threading.Lock()  # embed() may also be called from other threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voiceprint-embed")
        self._closed = False
        self._dim = 0
        self._dim = int(self.embed([np.zeros(sample_rate, dtype=np.float32)]).shape[1])

    @property
    def model_id(self) -> str:
        """Which encoder (``ecapa``, ``dvector``), for templates and the decision log."""
        return self._model_id

    @property
    def model_version(self) -> str:
        """``sha256:<hex>`` of the weights, for templates and the decision log."""
        return self._model_version

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda`` (what ``auto`` resolved to)."""
        return self._device

    @property
    def dim(self) -> int:
        """Length of one embedding."""
        return self._dim

    @property
    def sample_rate(self) -> int:
        """Sample rate the audio passed to ``embed`` must have."""
        return self._sample_rate

    def embed(self, batch: Sequence[npt.NDArray[np.floating[Any]]]) -> FloatArray:
        """Embed mono float waveforms in [-1, 1] (blocking); returns (n, dim) unit rows."""
        if self._closed:
            raise RuntimeError("embedder is closed")
        waves = [_as_waveform(pcm, self._sample_rate, index) for index, pcm in enumerate(batch)]
        if not waves:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock, torch.inference_mode():
            rows = self._embed_waves(waves)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        result: FloatArray = (rows / np.maximum(norms, 1e-12)).astype(np.float32)
        return result

    def _embed_waves(self, waves: list[FloatArray]) -> npt.NDArray[np.float32]:
        raise NotImplementedError

    async def embed_async(self, batch: Sequence[npt.NDArray[np.floating[Any]]]) -> FloatArray:
        """``embed`` on the embedder's worker thread; the event loop keeps running."""
        if self._closed:
            raise RuntimeError("embedder is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, list(batch))

    def close(self) -> None:
        """Stop the worker thread after the queued calls; later calls raise."""
        self._closed = True
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)


class EcapaEmbedder(Embedder):
    """SpeechBrain's ECAPA-TDNN ``EncoderClassifier`` (``model_id`` ``ecapa``)."""

    def __init__(self, encoder: Any, device: str, sample_rate: int, model_version: str) -> None:
        self._encoder = encoder
        super().__init__("ecapa", device, sample_rate, model_version)

    def _embed_waves(self, waves: list[FloatArray]) -> npt.NDArray[np.float32]:
        longest = max(len(wave) for wave in waves)
        padded = np.zeros((len(waves), longest), dtype=np.float32)
        for row, wave in enumerate(waves):
            padded[row, : len(wave)] = wave
        rel_lens = np.array([len(wave) / longest for wave in waves], dtype=np.float32)
        out = self._encoder.encode_batch(torch.from_numpy(padded), torch.from_numpy(rel_lens))
        rows: npt.NDArray[np.float32] = out.reshape(len(waves), -1).to(
            "cpu", torch.float32).numpy()
        return rows


def _as_waveform(pcm: npt.NDArray[np.floating[Any]], rate: int, index: int) -> FloatArray:
    """Validate one input of ``embed`` and return it as contiguous float32."""
    array = np.asarray(pcm)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"batch[{index}] has dtype {array.dtype}; give float samples in [-1, 1]")
    if array.ndim != 1:
        raise ValueError(f"batch[{index}] must be mono (1-D), got shape {array.shape}")
    if len(array) < MIN_EMBED_SECONDS * rate:
        raise ValueError(f"batch[{index}] is {len(array)} samples; at least "
                         f"{MIN_EMBED_SECONDS} s is needed")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"batch[{index}] contains NaN or infinite samples")
    return np.ascontiguousarray(array, dtype=np.float32)


def resolve_device(device: Device, folder: Path) -> str:
    """Turn ``auto`` into ``cuda`` or ``cpu``; refuse ``cuda`` without a CUDA device."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EmbeddingModelError(folder, "device 'cuda' requested but no CUDA device is present")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    return device


def checkpoint_version(checkpoint: Path) -> str:
    """``sha256:<hex>`` of the first MiB: cheap, and changes whenever the weights do."""
    with open(checkpoint, "rb") as handle:
        return "sha256:" + hashlib.sha256(handle.read(_VERSION_BYTES)).hexdigest()


def _read_state_dict(folder: Path, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Load the checkpoint's tensors (weights only), translating failures."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for bad files
        raise EmbeddingModelError(folder, f"{CHECKPOINT_NAME} is corrupt: {exc}") from exc
    if not isinstance(state, dict) or not all(
            isinstance(value, torch.Tensor) for value in state.values()):
        raise EmbeddingModelError(folder, f"{CHECKPOINT_NAME} is not a state_dict of tensors")
    return state


def load_embedder(options: EmbedderOptions) -> Embedder:
    """Load and warm up the model in ``options.model_dir``; raises ``EmbeddingModelError``."""
    from speechbrain.inference.speaker import EncoderClassifier  # slow import; only when loading

    folder = options.model_dir.expanduser().resolve()
    if not folder.is_dir():
        raise EmbeddingModelError(folder, "folder does not exist (scripts/fetch_models.py "
                                  "downloads it; see models/README.md)")
    hparams, checkpoint = folder / HPARAMS_NAME, folder / CHECKPOINT_NAME
    for required in (hparams, checkpoint):
        if not required.is_file():
            raise EmbeddingModelError(folder, f"{required.name} is missing")
    device = resolve_device(options.device, folder)
    state = _read_state_dict(folder, checkpoint)
    savedir = options.savedir or default_savedir(folder)
    # The yaml may name another place (the hub id, or where it was built); use this folder.
    overrides = ({"pretrained_path": str(folder)}
                 if _PRETRAINED_PATH_KEY.search(hparams.read_text(encoding="utf-8")) else {})
    try:
        encoder = EncoderClassifier.from_hparams(
            source=str(folder), savedir=str(savedir), overrides=overrides,
            run_opts={"device": device})
    except Exception as exc:  # yaml, fetch and load_state_dict errors of any kind
        raise EmbeddingModelError(folder, f"cannot be loaded: {exc}") from exc
    if encoder is None or "embedding_model" not in encoder.mods:
        raise EmbeddingModelError(folder, f"{HPARAMS_NAME} defines no embedding_model module")
    # SpeechBrain loads checkpoints non-strictly: missing weights would stay random, silently.
    expected = set(encoder.mods.embedding_model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise EmbeddingModelError(folder, f"{CHECKPOINT_NAME} lacks {len(missing)} of the model's "
                                  f"{len(expected)} tensors (first: {missing[0]})")
    encoder.eval()
    try:
        return EcapaEmbedder(encoder, device, options.sample_rate,
                             checkpoint_version(checkpoint))
    except (RuntimeError, ValueError) as exc:
        raise EmbeddingModelError(folder, f"warm-up embedding failed: {exc}") from exc
