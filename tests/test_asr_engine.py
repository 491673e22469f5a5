"""The Whisper engine and its model tooling, on a tiny random-weight model built offline."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from asr.engine import (
    AsrEngine,
    DecodedSegment,
    EngineOptions,
    Transcript,
    drop_reason,
    is_phantom,
    load_engine,
    resolve_device,
)
from asr.errors import (
    AsrOverloaded,
    EngineClosed,
    ModelCorrupt,
    ModelError,
    ModelFilesMissing,
    ModelNotFound,
)

pytestmark = [pytest.mark.model]

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "Hello, I would like to check my bill for last month, and talk to an agent please."


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> npt.NDArray[np.int16]:
    """About 5 s of espeak-ng English at 16 kHz mono 16-bit."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed for test speech")
    folder = tmp_path_factory.mktemp("speech")
    raw, wav = folder / "raw.wav", folder / "speech16k.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), SENTENCE], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    with wave.open(str(wav)) as handle:
        assert handle.getframerate() == 16000 and handle.getnchannels() == 1
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").copy()


def cut(audio: npt.NDArray[np.int16], seconds: float) -> npt.NDArray[np.int16]:
    """Exactly ``seconds`` of ``audio`` (zero-padded when it is shorter)."""
    n = int(seconds * 16000)
    return np.pad(audio[:n], (0, max(0, n - len(audio))))


def options(folder: Path, **overrides: object) -> EngineOptions:
    """Fast decoding; guards off so the random model's gibberish comes back as text."""
    values: dict[str, object] = dict(
        model_dir=folder, device="cpu", beam_size=1, max_new_tokens=12, language="en",
        no_speech_threshold=None, compression_ratio_threshold=None, log_prob_threshold=None)
    values.update(overrides)
    return EngineOptions(**values)  # type: ignore[arg-type]


@pytest.fixture
async def engine(tiny_whisper: Path) -> AsyncIterator[AsrEngine]:
    """A CPU engine with a 200 ms window so concurrent requests reliably share a batch."""
    eng = load_engine(options(tiny_whisper, batch_window_ms=200))
    try:
        yield eng
    finally:
        await eng.aclose()


async def test_a_batch_mixing_prompted_and_plain_requests_is_decoded(
        engine: AsrEngine, speech: npt.NDArray[np.int16]) -> None:
    # A caller answering a challenge (digits prompt) shares a batch with callers who have
    # none; CTranslate2 refuses prompts of different lengths in one generate call.
    audio = cut(speech, 1.0).tobytes()
    results = await asyncio.gather(
        engine.transcribe(audio, call_id="plain-1"),
        engine.transcribe(audio, call_id="digits", prompt="一二三四五六七八九零"),
        engine.transcribe(audio, call_id="plain-2"),
        engine.transcribe(audio, call_id="short", prompt="1 2 3"))
    assert [r.call_id for r in results] == ["plain-1", "digits", "plain-2", "short"]
    assert all(r.text for r in results)
    assert engine.stats.largest_batch > 1


def test_shorter_encoder_windows_cover_the_longest_utterance(
        tiny_whisper: Path, speech: npt.NDArray[np.int16]) -> None:
    async def run() -> list[Transcript]:
        eng = load_engine(options(tiny_whisper, window_margin_s=0.5, batch_window_ms=200))
        try:
            return list(await asyncio.gather(*(
                eng.transcribe(cut(speech, seconds).tobytes(), call_id=str(seconds))
                for seconds in (0.5, 3.0, 31.0))))
        finally:
            await eng.aclose()

    results = asyncio.run(run())
    assert [r.call_id for r in results] == ["0.5", "3.0", "31.0"]
    assert results[2].end_s == pytest.approx(31.0)  # past 30 s: two windows, both decoded


def test_decoding_is_capped_by_the_length_of_the_audio(
        tiny_whisper: Path, speech: npt.NDArray[np.int16]) -> None:
    # The random model never stops by itself: it is the runaway repetition loop to cap.
    async def run(per_s: float | None) -> str:
        eng = load_engine(options(tiny_whisper, max_new_tokens=None, max_tokens_per_s=per_s))
        try:
            return (await eng.transcribe(cut(speech, 1.0).tobytes(), call_id="c")).text
        finally:
            await eng.aclose()

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_whisper / "tokenizer.json"))
    capped = len(tokenizer.encode(asyncio.run(run(4.0))).ids)
    uncapped = len(tokenizer.encode(asyncio.run(run(None))).ids)
    assert capped <= 4 + 8 + 2 < uncapped, (capped, uncapped)


def test_tiny_model_is_cached_and_complete(tiny_whisper: Path) -> None:
    from tokenizers import Tokenizer

    from asr.testing.tiny_models import VOCAB_SIZE, build_tiny_whisper

    started = time.monotonic()
    assert build_tiny_whisper() == tiny_whisper
    assert time.monotonic() - started < 1.0
    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (tiny_whisper / name).is_file(), name
    tok = Tokenizer.from_file(str(tiny_whisper / "tokenizer.json"))
    assert tok.get_vocab_size() == VOCAB_SIZE
    assert tok.token_to_id("<|startoftranscript|>") == 50258
    assert tok.token_to_id("<|zh|>") == 50260
    assert tok.token_to_id("<|notimestamps|>") == 50363
    assert tok.token_to_id("<|30.00|>") == VOCAB_SIZE - 1


async def test_loads_on_cpu_and_auto(tiny_whisper: Path, speech: npt.NDArray[np.int16]) -> None:
    devices: tuple[Literal["cpu", "auto"], ...] = ("cpu", "auto")
    for device in devices:
        eng = load_engine(options(tiny_whisper, device=device))
        try:
            assert eng.device == resolve_device(device)
            assert eng.compute_type == ("int8" if eng.device == "cpu" else "float16")
            result = await eng.transcribe(cut(speech, 1.0).tobytes(), call_id="c1")
            assert result.call_id == "c1" and result.model == tiny_whisper.name
        finally:
            await eng.aclose()


async def test_concurrent_calls_are_batched_and_answered_to_the_right_caller(
        engine: AsrEngine, speech: npt.NDArray[np.int16]) -> None:
    lengths = {"call-a": 0.5, "call-b": 2.0, "call-c": 4.0, "call-d": 2.0, "call-e": 0.5}
    offsets = {call: 10.0 * i for i, call in enumerate(lengths)}

    async def one_call(call_id: str) -> tuple[str, Transcript]:
        audio = cut(speech, lengths[call_id])
        pcm: bytes | npt.NDArray[np.int16] = audio.tobytes() if call_id < "call-c" else audio
        return call_id, await engine.transcribe(pcm, call_id=call_id, offset_s=offsets[call_id])

    results = await asyncio.gather(*(one_call(call) for call in lengths))
    for call_id, transcript in results:
        assert transcript.call_id == call_id
        assert transcript.start_s == offsets[call_id]
        assert transcript.end_s - transcript.start_s == pytest.approx(lengths[call_id])
        assert isinstance(transcript.text, str) and transcript.text
        assert transcript.language == "en"
        assert 0.0 <= transcript.confidence <= 1.0
        assert 0.0 <= transcript.no_speech_prob <= 1.0
        assert transcript.segments == 1
        assert transcript.dropped_reason is None
    stats = engine.stats
    assert stats.largest_batch > 1, stats
    assert sum(size * count for size, count in stats.batch_sizes.items()) == len(lengths)


async def test_unbatched_path_decodes_one_at_a_time(
        tiny_whisper: Path, speech: npt.NDArray[np.int16]) -> None:
    eng = load_engine(options(tiny_whisper, batch=False))
    try:
        results = await asyncio.gather(*(
            eng.transcribe(cut(speech, 0.5 + i), call_id=f"c{i}") for i in range(3)))
        assert [r.call_id for r in results] == ["c0", "c1", "c2"]
        assert eng.stats.batch_sizes == {1: 3}
    finally:
        await eng.aclose()


async def test_long_audio_and_detection_and_partial(
        engine: AsrEngine, speech: npt.NDArray[np.int16]) -> None:
    long_audio = np.tile(speech, 8)[: 16000 * 33]  # over Whisper's 30 s window: two segments
    detected = await engine.transcribe(long_audio, call_id="long", language=None)
    assert detected.segments == 2 and detected.end_s == pytest.approx(33.0)
    partial = await engine.transcribe_partial(cut(speech, 1.0), call_id="p", language="zh")
    assert partial.partial and partial.language == "zh"
    empty = await engine.transcribe(b"", call_id="e")
    assert empty.dropped_reason == "no_speech" and empty.text == ""
    with pytest.raises(ValueError):
        await engine.transcribe(b"\x00", call_id="odd")
    with pytest.raises(ValueError):
        await engine.transcribe(b"\x00\x00", call_id="x", language="klingon")


async def test_decoding_behind_real_time_is_logged(
        engine: AsrEngine, speech: npt.NDArray[np.int16], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asr.batcher")
    # 1 ms of audio always takes longer to decode: Whisper encodes a full 30 s window.
    await engine.transcribe(cut(speech, 0.001), call_id="short")
    assert engine.stats.behind_realtime == 1
    assert any(r.getMessage() == "asr decoding behind real time" for r in caplog.records)


async def test_aclose_fails_pending_requests(tiny_whisper: Path) -> None:
    eng = load_engine(options(tiny_whisper, batch_window_ms=60_000))
    tasks = [asyncio.create_task(eng.transcribe(np.zeros(8000, np.int16), call_id=f"c{i}"))
             for i in range(3)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await eng.aclose()
    assert time.monotonic() - started < 5
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        assert isinstance(outcome, EngineClosed)
    with pytest.raises(EngineClosed):
        await eng.transcribe(np.zeros(8000, np.int16), call_id="late")


async def test_full_queue_rejects(tiny_whisper: Path) -> None:
    eng = load_engine(options(tiny_whisper, batch_window_ms=60_000, max_pending=2))
    audio = np.zeros(8000, np.int16)
    first = asyncio.create_task(eng.transcribe(audio, call_id="a"))
    await asyncio.sleep(0.01)
    with pytest.raises(AsrOverloaded):  # partials give way at half the bound
        await eng.transcribe_partial(audio, call_id="p")
    second = asyncio.create_task(eng.transcribe(audio, call_id="b"))
    await asyncio.sleep(0.01)
    with pytest.raises(AsrOverloaded):
        await eng.transcribe(audio, call_id="c")
    assert eng.stats.rejected == 2
    await eng.aclose()
    assert all(isinstance(r, EngineClosed)
               for r in await asyncio.gather(first, second, return_exceptions=True))


@pytest.fixture
def model_copy(tiny_whisper: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "whisper-copy"
    shutil.copytree(tiny_whisper, folder)
    return folder


def _load_error(folder: Path) -> ModelError:
    with pytest.raises(ModelError) as info:
        load_engine(options(folder))
    assert str(folder) in str(info.value)
    return info.value


def test_missing_folder(tmp_path: Path) -> None:
    assert isinstance(_load_error(tmp_path / "nowhere"), ModelNotFound)


def test_missing_model_bin(model_copy: Path) -> None:
    (model_copy / "model.bin").unlink()
    error = _load_error(model_copy)
    assert isinstance(error, ModelFilesMissing) and error.missing == ("model.bin",)


def test_missing_tokenizer(model_copy: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    error = _load_error(model_copy)
    assert isinstance(error, ModelFilesMissing) and "tokenizer.json" in str(error)


def test_corrupt_model_bin(model_copy: Path) -> None:
    (model_copy / "model.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    assert isinstance(_load_error(model_copy), ModelCorrupt)


def test_truncated_model_bin(model_copy: Path) -> None:
    data = (model_copy / "model.bin").read_bytes()
    (model_copy / "model.bin").write_bytes(data[: len(data) // 3])
    assert isinstance(_load_error(model_copy), ModelCorrupt)


GUARDS = EngineOptions(model_dir=Path("unused"))


def seg(text: str = "我想查一下账单", logprob: float = -0.3, no_speech: float = 0.05,
        ratio: float = 1.2) -> DecodedSegment:
    return DecodedSegment(text, logprob, no_speech, ratio)


def test_guards_keep_a_good_segment() -> None:
    assert drop_reason(seg(), GUARDS) is None


@pytest.mark.parametrize(("segment", "reason"), [
    (seg(no_speech=0.9, logprob=-1.5), "no_speech"),
    (seg(text="   "), "no_speech"),
    (seg(ratio=3.1), "compression_ratio"),
    (seg(logprob=-1.4), "log_prob"),
    (seg(text="请不吝点赞 订阅 转发 打赏支持明镜与点点栏目"), "phantom"),
    (seg(text="字幕由Amara.org社区提供"), "phantom"),
    (seg(text=" Thanks for watching! "), "phantom"),
    (seg(text="thanks for watching. Thanks for watching!"), "phantom"),
    (seg(text="Subtitles by the Amara.org community"), "phantom"),
])
def test_guards_drop(segment: DecodedSegment, reason: str) -> None:
    assert drop_reason(segment, GUARDS) == reason


def test_guards_keep_confident_speech_despite_no_speech_prob() -> None:
    # Whisper's rule: a high no-speech probability only counts when the text is unlikely too.
    assert drop_reason(seg(no_speech=0.9, logprob=-0.2), GUARDS) is None


def test_guards_can_be_disabled() -> None:
    off = replace(GUARDS, no_speech_threshold=None, log_prob_threshold=None,
                  compression_ratio_threshold=None, phantom_phrases=())
    assert drop_reason(seg(no_speech=0.99, logprob=-5, ratio=9,
                           text="Thanks for watching!"), off) is None


def test_phantom_only_when_nothing_else_is_said() -> None:
    phrases = GUARDS.phantom_phrases
    assert not is_phantom("我的宽带坏了 Thanks for watching!", phrases)
    assert not is_phantom("", phrases)


def _fetch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_models.py"), "--models-dir",
         str(tmp_path), "--manifest", str(ROOT / "models" / "manifest.json"), *args],
        capture_output=True, text=True, timeout=20, env={**os.environ, **env})


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"},
                                 {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}])
def test_fetch_models_fails_fast_offline(tmp_path: Path, env: dict[str, str]) -> None:
    started = time.monotonic()
    proc = _fetch(tmp_path, "--timeout", "2", **env)
    assert time.monotonic() - started < 5
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0], proc.stderr


def test_manifest_names_the_defaults() -> None:
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    by_name = {m["name"]: m for m in manifest["models"]}
    assert by_name["whisper-large-v3-turbo"]["compute_type"] == "float16"
    defaults = {m["name"] for m in manifest["models"] if m["role"] == "default"}
    assert defaults == {"whisper-base", "dvector-ge2e"}
    assert by_name["whisper-base"]["source"]["assemble"] == {"model.bin": ["model.bin.part1",
                                                                           "model.bin.part2"]}
    assert by_name["dvector-ge2e"]["source"]["members"]["pretrained.pt"] == \
        "resemblyzer/pretrained.pt"
    for name in defaults:
        assert all(len(digest) == 64 for digest in by_name[name]["files"].values()), name
    assert by_name["ecapa-voxceleb"]["repo"] == "speechbrain/spkrec-ecapa-voxceleb"
    for model in manifest["models"]:
        assert model["files"], model["name"]


def test_fetch_models_verifies_and_records_checksums(tmp_path: Path) -> None:
    folder = tmp_path / "ecapa"
    folder.mkdir()
    names = ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt",
             "classifier.ckpt", "label_encoder.txt")
    for name in names:
        (folder / name).write_text(name)
    args = ("--only", "ecapa-voxceleb", "--verify-only")
    first = _fetch(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    lock = json.loads((tmp_path / "checksums.lock.json").read_text())
    assert set(lock) == {f"ecapa-voxceleb/{name}" for name in names}
    (folder / "classifier.ckpt").write_text("tampered")
    second = _fetch(tmp_path, *args)
    assert second.returncode == 1 and "classifier.ckpt sha256" in second.stderr
    (folder / "label_encoder.txt").unlink()
    third = _fetch(tmp_path, *args)
    assert third.returncode == 1 and "label_encoder.txt missing" in third.stderr
