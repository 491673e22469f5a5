"""The tiny random ECAPA: built offline, loaded through SpeechBrain, embedding real espeak audio."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from asr.default_model import TEST_MODEL_MARK
from voiceprint.audio_checks import check_sample, require_usable
from voiceprint.embedding import Embedder, EmbedderOptions, load_embedder
from voiceprint.errors import AudioRejected, EmbeddingModelError
from voiceprint.testing.tiny_ecapa import (
    CHECKPOINT_NAME,
    EMBEDDING_DIM,
    HPARAMS_NAME,
    build_tiny_ecapa,
)

pytestmark = pytest.mark.model

SENTENCES = (
    "Yes.",
    "Hello, thank you for calling the hotline.",
    "Please say your account number after the tone, then press the pound key.",
)


@pytest.fixture(scope="session")
def tiny_ecapa() -> Path:
    """The tiny random ECAPA, built once and cached under ~/.cache/ivr."""
    return build_tiny_ecapa()


@pytest.fixture(scope="session")
def embedder(tiny_ecapa: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    """One CPU embedder for the session."""
    loaded = load_embedder(EmbedderOptions(tiny_ecapa, device="cpu",
                                           savedir=tmp_path_factory.mktemp("sb-save")))
    yield loaded
    loaded.close()


def _read_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


@pytest.fixture(scope="session")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list[npt.NDArray[np.float32]]:
    """espeak-ng English of three different lengths, 16 kHz mono, as float32."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed for test speech")
    folder = tmp_path_factory.mktemp("speech")
    waves = []
    for index, sentence in enumerate(SENTENCES):
        raw, wav = folder / f"raw{index}.wav", folder / f"u{index}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), sentence], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)],
                       check=True)
        waves.append(_read_wav(wav))
    assert len({len(w) for w in waves}) == len(waves)
    return waves


def _broken_copy(tiny_ecapa: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ecapa-broken"
    shutil.copytree(tiny_ecapa, folder)
    return folder


def test_build_is_seeded_and_idempotent(tiny_ecapa: Path, tmp_path: Path) -> None:
    target = tmp_path / "ecapa"
    assert build_tiny_ecapa(target) == target.resolve()
    # The weights, the recipe, and the label that says they are random (for /ready).
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [CHECKPOINT_NAME, HPARAMS_NAME, TEST_MODEL_MARK])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging renamed away
    stamp = (target / CHECKPOINT_NAME).stat().st_mtime_ns
    assert build_tiny_ecapa(target) == target.resolve()
    assert (target / CHECKPOINT_NAME).stat().st_mtime_ns == stamp  # not rebuilt
    fresh = torch.load(target / CHECKPOINT_NAME, weights_only=True)
    cached = torch.load(tiny_ecapa / CHECKPOINT_NAME, weights_only=True)
    assert fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[key], cached[key]) for key in fresh)
    assert str(target.resolve()) in (target / HPARAMS_NAME).read_text()


def test_loads_on_cpu_with_identity(embedder: Embedder, tiny_ecapa: Path) -> None:
    assert embedder.device == "cpu"
    assert embedder.dim == EMBEDDING_DIM
    assert embedder.model_id == "ecapa"
    digest = hashlib.sha256((tiny_ecapa / CHECKPOINT_NAME).read_bytes()[: 1 << 20]).hexdigest()
    assert embedder.model_version == f"sha256:{digest}"


def test_auto_device_and_moved_folder(tiny_ecapa: Path, tmp_path: Path,
                                      utterances: list[npt.NDArray[np.float32]],
                                      embedder: Embedder) -> None:
    # A copy elsewhere still loads its own checkpoint: the loader overrides pretrained_path.
    moved = shutil.copytree(tiny_ecapa, tmp_path / "moved")
    auto = load_embedder(EmbedderOptions(moved, savedir=tmp_path / "save"))
    try:
        assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu")
        linked = (tmp_path / "save" / CHECKPOINT_NAME).resolve()
        assert linked == (moved / CHECKPOINT_NAME).resolve()
        # Loose tolerance: auto may be a GPU, whose kernels round differently.
        np.testing.assert_allclose(auto.embed(utterances[:1]), embedder.embed(utterances[:1]),
                                   atol=1e-3)
    finally:
        auto.close()


def test_batch_shape_norm_and_determinism(embedder: Embedder,
                                          utterances: list[npt.NDArray[np.float32]]) -> None:
    first = embedder.embed(utterances)
    assert first.shape == (len(utterances), EMBEDDING_DIM)
    assert first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed(utterances), first)
    # Random weights carry no speaker information, but different audio must still differ.
    similarity = first @ first.T
    assert np.all(similarity[~np.eye(len(utterances), dtype=bool)] < 0.9999)


def test_alone_equals_in_batch(embedder: Embedder,
                               utterances: list[npt.NDArray[np.float32]]) -> None:
    batch = embedder.embed(utterances)  # the shorter ones are zero-padded to the longest
    for index, wave_ in enumerate(utterances):
        alone = embedder.embed([wave_])[0]
        np.testing.assert_allclose(alone, batch[index], atol=1e-4)
    reordered = embedder.embed(utterances[::-1])
    np.testing.assert_allclose(reordered[::-1], batch, atol=1e-4)


def test_input_validation(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)
    with pytest.raises(TypeError):
        embedder.embed([np.zeros(16000, dtype=np.int16)])
    with pytest.raises(ValueError, match="mono"):
        embedder.embed([np.zeros((2, 16000), dtype=np.float32)])
    with pytest.raises(ValueError, match="at least"):
        embedder.embed([np.zeros(100, dtype=np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        embedder.embed([np.full(16000, np.nan, dtype=np.float32)])


def test_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "no-such-model"
    with pytest.raises(EmbeddingModelError, match="does not exist") as caught:
        load_embedder(EmbedderOptions(folder, device="cpu", savedir=tmp_path / "save"))
    assert caught.value.folder == str(folder.resolve())
    assert str(folder.resolve()) in str(caught.value)


def test_missing_hyperparams(tiny_ecapa: Path, tmp_path: Path) -> None:
    folder = _broken_copy(tiny_ecapa, tmp_path)
    (folder / HPARAMS_NAME).unlink()
    with pytest.raises(EmbeddingModelError, match=HPARAMS_NAME) as caught:
        load_embedder(EmbedderOptions(folder, device="cpu", savedir=tmp_path / "save"))
    assert str(folder.resolve()) in str(caught.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing_tensors", "absent"])
def test_corrupt_checkpoint(tiny_ecapa: Path, tmp_path: Path, damage: str) -> None:
    folder = _broken_copy(tiny_ecapa, tmp_path)
    checkpoint = folder / CHECKPOINT_NAME
    if damage == "garbage":
        checkpoint.write_bytes(b"not a torch checkpoint" * 100)
    elif damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    elif damage == "missing_tensors":  # loads fine, but SpeechBrain would keep random weights
        state = torch.load(checkpoint, weights_only=True)
        torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, checkpoint)
    else:
        checkpoint.unlink()
    with pytest.raises(EmbeddingModelError, match=CHECKPOINT_NAME) as caught:
        load_embedder(EmbedderOptions(folder, device="cpu", savedir=tmp_path / "save"))
    assert str(folder.resolve()) in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a CUDA device here")
def test_cuda_without_device(tiny_ecapa: Path, tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="cuda"):
        load_embedder(EmbedderOptions(tiny_ecapa, device="cuda", savedir=tmp_path / "save"))


async def test_embed_async_runs_off_the_loop(embedder: Embedder,
                                             utterances: list[npt.NDArray[np.float32]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    encoder: Any = embedder._encoder
    original = encoder.encode_batch

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(encoder, "encode_batch", spy)
    results = await asyncio.gather(embedder.embed_async(utterances[:2]),
                                   embedder.embed_async(utterances[2:]))
    assert threads and all(name.startswith("voiceprint-embed") for name in threads)
    assert threading.current_thread().name not in threads
    np.testing.assert_allclose(np.vstack(results), embedder.embed(utterances), atol=1e-4)


def test_real_speech_passes_quality_checks(utterances: list[npt.NDArray[np.float32]]) -> None:
    longest = utterances[-1]
    quality = check_sample(longest, 16000)
    assert 2.0 < quality.speech_s <= quality.duration_s
    require_usable(quality, min_speech_s=2.0)
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, float(np.sqrt(np.mean(longest**2))), len(longest))  # 0 dB SNR
    with pytest.raises(AudioRejected) as caught:
        require_usable(check_sample((longest + noise).astype(np.float32), 16000), 2.0)
    assert caught.value.reason == "noisy"
