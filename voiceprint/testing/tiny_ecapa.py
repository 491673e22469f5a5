"""A tiny random-weight ECAPA-TDNN in the folder layout of ``speechbrain/spkrec-ecapa-voxceleb``.

The recipe: a hand-written ``hyperparams.yaml`` describes an Fbank
front end, sentence-level mean normalisation and a small ``ECAPA_TDNN``; a ``Pretrainer`` in it
points at ``<pretrained_path>/embedding_model.ckpt``, next to which the seeded random
``state_dict`` is saved. ``EncoderClassifier.from_hparams(source=folder, savedir=...)`` loads it
like the real model, so every loading and inference path runs for real, on CPU, in seconds.
The real model's classifier, label encoder and ``mean_var_norm_emb`` are left out: embedding
does not use them, and the yaml does not reference them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from asr.default_model import mark_test_model

N_MELS = 80
CHANNELS = (64, 64, 64, 64, 192)
KERNEL_SIZES = (5, 3, 3, 3, 1)
DILATIONS = (1, 2, 3, 4, 1)
ATTENTION_CHANNELS = 16
LIN_NEURONS = 64
SEED = 0
# Bump the leading "v" when the yaml below changes, so cached folders of the old recipe are not
# reused.
RECIPE = f"v1-c{CHANNELS[0]}x{len(CHANNELS) - 1}-{CHANNELS[-1]}-e{LIN_NEURONS}-s{SEED}"
EMBEDDING_DIM = LIN_NEURONS
CHECKPOINT_NAME = "embedding_model.ckpt"
HPARAMS_NAME = "hyperparams.yaml"

_HPARAMS_TEMPLATE = """\
# Tiny random-weight ECAPA-TDNN for tests; layout of speechbrain/spkrec-ecapa-voxceleb.
# Built by voiceprint.testing.tiny_ecapa (recipe {recipe}). The weights are random:
# embeddings are deterministic but carry no speaker information.

n_mels: {n_mels}
sample_rate: 16000
# Loaders override this with the folder they were given, so the folder may be moved.
pretrained_path: {folder}

compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
    sample_rate: !ref <sample_rate>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: {kernel_sizes}
    dilations: {dilations}
    attention_channels: {attention_channels}
    lin_neurons: {lin_neurons}

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: !ref <pretrained_path>/{checkpoint}
"""


def cache_root() -> Path:
    """Root of this project's user cache (``$IVR_CACHE_DIR`` or ``~/.cache/ivr``)."""
    env = os.environ.get("IVR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ivr"


def default_model_dir(recipe: str = RECIPE) -> Path:
    """Where the tiny ECAPA of ``recipe`` is cached by default."""
    return cache_root() / "models" / f"ecapa-tiny-random-{recipe}"


def hyperparams_yaml(folder: Path) -> str:
    """The hand-written ``hyperparams.yaml`` of the tiny model that will live in ``folder``."""
    return _HPARAMS_TEMPLATE.format(
        recipe=RECIPE, n_mels=N_MELS, folder=folder, channels=list(CHANNELS),
        kernel_sizes=list(KERNEL_SIZES), dilations=list(DILATIONS),
        attention_channels=ATTENTION_CHANNELS, lin_neurons=LIN_NEURONS, checkpoint=CHECKPOINT_NAME)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive file lock so parallel test workers build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_tiny_ecapa(out_dir: Path | None = None) -> Path:
    """Build the tiny random ECAPA folder (once; later calls return it at once) and return it."""
    import torch  # build-time only: keeps importing this module cheap
    from hyperpyyaml import load_hyperpyyaml  # type: ignore[import-untyped]  # no stubs

    final = (out_dir or default_model_dir()).expanduser().resolve()
    if (final / CHECKPOINT_NAME).is_file():
        mark_test_model(final)  # folders cached before the label existed get it now
        return final
    with _locked(final.with_name(final.name + ".lock")):
        if (final / CHECKPOINT_NAME).is_file():
            mark_test_model(final)
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is not secret
        try:
            text = hyperparams_yaml(final)
            (staging / HPARAMS_NAME).write_text(text, encoding="utf-8")
            # Instantiate from the yaml itself so the saved weights fit it by construction.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                hparams = load_hyperpyyaml(text)
            model: torch.nn.Module = hparams["embedding_model"]
            torch.save(model.state_dict(), staging / CHECKPOINT_NAME)
            mark_test_model(staging)
            if final.exists():  # an incomplete folder left by something else; replace it
                shutil.rmtree(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final
