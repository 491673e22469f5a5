"""Tiny random-weight Whisper models in CTranslate2 format, built offline for tests.

The recipe: Whisper's real multilingual tokenizer comes from the
``openai-whisper`` sdist on PyPI (MIT, ``whisper/assets/multilingual.tiktoken``); transformers'
``TikTokenConverter`` turns it into the ``tokenizer.json`` faster-whisper needs (otherwise it would
fetch one from the hub); a 2-layer random ``WhisperForConditionalGeneration`` saved next to it is
converted with CTranslate2's ``TransformersConverter``. The weights are seeded, so every build of a
recipe is the same model. transformers and torch are needed only here, at build time.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.default_model import mark_test_model

WHISPER_SDIST_VERSION = "20250625"
D_MODEL = 64
LAYERS = 2
HEADS = 4
SEED = 0
RECIPE = f"w{WHISPER_SDIST_VERSION}-d{D_MODEL}-l{LAYERS}-s{SEED}"
VOCAB_SIZE = 51865
N_LANGUAGES = 99  # multilingual v1/v2 layout; large-v3 adds "yue" and has 51866 tokens
N_TIMESTAMPS = 1501
N_MELS = 80
# GPT-2's pre-tokenizer split; Whisper's tiktoken encodings use it.
GPT2_SPLIT_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                      r"""|\s+(?!\S)|\s+""")
_COMPLETE_MARKER = ".complete"
_ASSET_MEMBERS = ("whisper/assets/multilingual.tiktoken", "whisper/assets/mel_filters.npz",
                  "whisper/tokenizer.py")


class TinyModelUnavailable(RuntimeError):
    """A build input (the openai-whisper sdist, transformers, torch) cannot be obtained."""


@dataclass(frozen=True)
class WhisperAssets:
    """Files taken from the openai-whisper sdist."""

    tiktoken: Path
    mel_filters: Path
    languages: tuple[str, ...]


def cache_root() -> Path:
    """Root of this project's user cache (``$IVR_CACHE_DIR`` or ``~/.cache/ivr``)."""
    env = os.environ.get("IVR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ivr"


def default_model_dir(recipe: str = RECIPE) -> Path:
    """Where the tiny model of ``recipe`` is cached by default."""
    return cache_root() / "models" / f"whisper-tiny-random-{recipe}"


def special_tokens(languages: tuple[str, ...]) -> list[str]:
    """Whisper's special tokens in id order, starting right after the BPE ranks."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in languages[:N_LANGUAGES]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)],
    ]


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


def _sdist(download_dir: Path) -> Path:
    """The pinned openai-whisper sdist, downloaded with pip once."""
    name = f"openai_whisper-{WHISPER_SDIST_VERSION}.tar.gz"
    target = download_dir / name
    if target.is_file():
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", f"openai-whisper=={WHISPER_SDIST_VERSION}",
           "-d", str(download_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TinyModelUnavailable(f"pip download of openai-whisper failed: {exc}") from exc
    if proc.returncode != 0 or not target.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TinyModelUnavailable(
            f"cannot download the openai-whisper {WHISPER_SDIST_VERSION} sdist: {tail[0]}")
    return target


def whisper_assets(cache: Path | None = None) -> WhisperAssets:
    """Extract the tokenizer ranks, mel filters and language order from the sdist (cached)."""
    root = (cache or cache_root()) / "whisper-assets" / WHISPER_SDIST_VERSION
    with _locked(root.with_name(root.name + ".lock")):
        if not (root / _COMPLETE_MARKER).is_file():
            sdist = _sdist((cache or cache_root()) / "downloads")
            root.mkdir(parents=True, exist_ok=True)
            prefix = f"openai_whisper-{WHISPER_SDIST_VERSION}/"
            with tarfile.open(sdist, "r:gz") as tar:
                for member in _ASSET_MEMBERS:
                    source = tar.extractfile(prefix + member)
                    if source is None:
                        raise TinyModelUnavailable(f"{member} missing from {sdist}")
                    (root / Path(member).name).write_bytes(source.read())
            (root / _COMPLETE_MARKER).write_text("ok\n")
    return WhisperAssets(root / "multilingual.tiktoken", root / "mel_filters.npz",
                         _languages(root / "tokenizer.py"))


def _languages(tokenizer_py: Path) -> tuple[str, ...]:
    """Whisper's language codes in token order, read from the sdist's ``LANGUAGES`` literal."""
    tree = ast.parse(tokenizer_py.read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "LANGUAGES"):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return tuple(str(code) for code in value)
    raise TinyModelUnavailable(f"no LANGUAGES table in {tokenizer_py}")


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (base64 token, rank per line) without needing tiktoken."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def write_tokenizer_json(assets: WhisperAssets, target: Path) -> int:
    """Write Whisper's multilingual ``tokenizer.json``; returns its vocabulary size."""
    converters = _import("transformers.convert_slow_tokenizer")
    ranks = _read_ranks(assets.tiktoken)
    converter: Any = converters.TikTokenConverter(
        vocab_file=str(assets.tiktoken), pattern=GPT2_SPLIT_PATTERN,
        extra_special_tokens=special_tokens(assets.languages))
    # The stock loader needs the tiktoken package; the ranks are already parsed here.
    converter.load_tiktoken_bpe = lambda _path: ranks
    tokenizer = converter.converted()
    size = int(tokenizer.get_vocab_size(with_added_tokens=True))
    if size != VOCAB_SIZE or tokenizer.token_to_id("<|endoftext|>") != len(ranks):
        raise TinyModelUnavailable(f"unexpected Whisper vocabulary of {size} entries")
    tokenizer.save(str(target))
    return size


def _import(name: str) -> Any:
    """Import a build-only dependency (transformers, torch) untyped, or explain its absence."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise TinyModelUnavailable(f"{name} is not importable ({exc}); "
                                   "install the dev extras (transformers)") from exc


def _token_ids(tokenizer_json: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids: dict[str, int] = {}
    for name in ("<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|translate|>",
                 "<|startofprev|>", "<|notimestamps|>", "<|en|>"):
        value = tok.token_to_id(name)
        if value is None:
            raise TinyModelUnavailable(f"{name} missing from {tokenizer_json}")
        ids[name] = int(value)
    return ids


def _save_random_whisper(folder: Path, assets: WhisperAssets) -> None:
    """Save a seeded 2-layer random Whisper in transformers format next to tokenizer.json."""
    torch, transformers = _import("torch"), _import("transformers")
    WhisperConfig = transformers.WhisperConfig
    GenerationConfig = transformers.GenerationConfig
    WhisperForConditionalGeneration = transformers.WhisperForConditionalGeneration

    ids = _token_ids(folder / "tokenizer.json")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    lang_to_id = {f"<|{code}|>": sot + 1 + i
                  for i, code in enumerate(assets.languages[:N_LANGUAGES])}
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=N_MELS, d_model=D_MODEL,
        encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=4 * D_MODEL, decoder_ffn_dim=4 * D_MODEL,
        max_source_positions=1500, max_target_positions=448,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        begin_suppress_tokens=[220, eot], suppress_tokens=[],
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config).eval()
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=448, begin_suppress_tokens=[220, eot], suppress_tokens=[],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"], is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        alignment_heads=[[LAYERS - 1, h] for h in range(HEADS)],
    )
    model.generation_config = generation
    model.save_pretrained(str(folder))
    preprocessor = {"feature_size": N_MELS, "sampling_rate": 16000, "hop_length": 160,
                    "chunk_length": 30, "n_fft": 400}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")


def build_tiny_whisper(out_dir: Path | None = None, *, cache: Path | None = None,
                       force: bool = False) -> Path:
    """Build (or reuse) the tiny random Whisper in CTranslate2 format; returns its folder.

    Idempotent and atomic: the model is converted into a temporary sibling folder and renamed
    into place, so a reader never sees a half-written model; a lock serialises parallel builds.
    """
    target = (out_dir or default_model_dir()).expanduser().resolve()
    if not force and (target / _COMPLETE_MARKER).is_file():
        mark_test_model(target)  # folders cached before the label existed get it now
        return target
    assets = whisper_assets(cache)
    with _locked(target.with_name(target.name + ".lock")):
        if not force and (target / _COMPLETE_MARKER).is_file():
            mark_test_model(target)
            return target
        try:
            from ctranslate2.converters import TransformersConverter
        except ImportError as exc:  # pragma: no cover - ctranslate2 is a runtime dependency
            raise TinyModelUnavailable(f"ctranslate2 converter unavailable: {exc}") from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
            hf_dir, ct2_dir = Path(tmp) / "hf", Path(tmp) / "ct2"
            hf_dir.mkdir()
            write_tokenizer_json(assets, hf_dir / "tokenizer.json")
            _save_random_whisper(hf_dir, assets)
            TransformersConverter(str(hf_dir), copy_files=["tokenizer.json",
                                                           "preprocessor_config.json"]
                                  ).convert(str(ct2_dir), force=True)
            (ct2_dir / "RECIPE").write_text(RECIPE + "\n")
            mark_test_model(ct2_dir)
            (ct2_dir / _COMPLETE_MARKER).write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(ct2_dir, target)
    return target
