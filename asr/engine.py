"""The Whisper engine of the speech path: one per process, shared by every call.

``load_engine`` opens a CTranslate2 Whisper folder with faster-whisper; ``AsrEngine.transcribe``
queues an utterance in the cross-call :class:`~asr.batcher.Batcher`, whose single worker thread
encodes and decodes all queued utterances as one CTranslate2 batch (``Whisper.generate`` with one
prompt per utterance). Hallucination guards run on every result: no-speech, compression ratio,
log-probability and known phantom phrases (subtitle credits Whisper learnt from video subtitles).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ctranslate2
import numpy as np
import numpy.typing as npt

from asr.batcher import Batcher, BatcherStats
from asr.errors import (
    ModelCorrupt,
    ModelDeviceUnavailable,
    ModelFilesMissing,
    ModelNotFound,
)
from asr.text import echoes_prompt, to_simplified

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window; longer audio is decoded as several items
FULL_WINDOW_FRAMES = 3000  # mel frames of 10 ms in Whisper's 30 s window
DropReason = Literal["no_speech", "compression_ratio", "log_prob", "phantom", "prompt_echo"]
Device = Literal["auto", "cuda", "cpu"]
FloatAudio = npt.NDArray[np.float32]

DEFAULT_PHANTOM_PHRASES: tuple[str, ...] = (
    "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目",
    "字幕由Amara.org社区提供",
    "Thanks for watching!",
    "Subtitles by the Amara.org community",
    # Whisper base on music and line noise (bench_turns.py clips; a caller's "you" alone
    # carries no request either).
    "you",
    "谢谢观看",
)


@dataclass(frozen=True)
class EngineOptions:
    """How the engine loads and decodes; thresholds set to None disable that guard."""

    model_dir: Path
    device: Device = "auto"
    compute_type: str | None = None  # None: float16 on cuda, int8 on cpu
    language: str | None = "zh"  # None: detect per utterance
    # A request's language is forced (the call's menu language) unless language detection gives
    # another of ``switch_languages`` at least this probability (None: always forced).
    language_switch_floor: float | None = 0.6
    switch_languages: tuple[str, ...] = ("zh", "en")
    # Detection on a word or two is a guess ("a" for 二): shorter requests keep their language,
    # as do requests with their own prompt (what the caller was asked to say, in that language).
    min_switch_s: float = 1.0
    beam_size: int = 5
    initial_prompt: str | None = None
    # Domain words biased through Whisper's previous-text prompt; per language (a Chinese word
    # list in front of English audio pulls the decoder towards Chinese), ``hotwords`` for all.
    hotwords: str | None = None
    hotwords_by_language: tuple[tuple[str, str], ...] = ()
    batch: bool = True  # False: one utterance per decode, for side-by-side benchmarks
    batch_window_ms: float = 10.0
    max_batch_size: int = 16
    max_pending: int = 64
    max_new_tokens: int | None = None
    # A caller says at most a few tokens a second; a decode that runs past this many per second
    # of the longest utterance in the batch is a repetition loop (Whisper on unclear audio),
    # which otherwise costs seconds of beam search before the guards drop it. None: no cap.
    max_tokens_per_s: float | None = 15.0
    no_speech_threshold: float | None = 0.6
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    phantom_phrases: tuple[str, ...] = DEFAULT_PHANTOM_PHRASES
    cpu_threads: int = 0
    device_index: int = 0
    # Shorter encoder windows: None pads every utterance to Whisper's 30 s (what it was trained
    # on); a number pads a batch only to its longest utterance plus this many seconds. The
    # encoder's cost grows with the window, so short turns get much cheaper on a CPU.
    window_margin_s: float | None = None

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}")
        if self.beam_size < 1 or self.max_batch_size < 1 or self.max_pending < 1:
            raise ValueError("beam_size, max_batch_size and max_pending must be >= 1")
        if self.batch_window_ms < 0:
            raise ValueError("batch_window_ms must be >= 0")

    @property
    def effective_batch_size(self) -> int:
        """Largest batch the worker forms (1 when batching is off)."""
        return self.max_batch_size if self.batch else 1


@dataclass(frozen=True)
class Transcript:
    """What the recogniser heard in one utterance; ``text`` is empty when it was dropped."""

    call_id: str
    text: str
    language: str
    confidence: float  # exp(avg_logprob), 0..1
    avg_logprob: float
    no_speech_prob: float
    start_s: float
    end_s: float
    model: str
    segments: int
    dropped_reason: DropReason | None = None
    partial: bool = False

    @property
    def dropped(self) -> bool:
        """True when a guard rejected the recognition."""
        return self.dropped_reason is not None


@dataclass(frozen=True)
class DecodedSegment:
    """One decoded Whisper window before the guards."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    prompt_echo: bool = False  # the text only repeats the prompt/hotwords (unintelligible audio)


@dataclass(frozen=True)
class DecodeRequest:
    """One utterance waiting in the batcher."""

    audio: FloatAudio = field(repr=False)
    call_id: str
    language: str | None
    offset_s: float
    partial: bool = False
    # What the caller is expected to say (e.g. the digits of a challenge), in place of the
    # configured prompt and hotwords; None: those.
    prompt: str | None = None

    @property
    def duration_s(self) -> float:
        """Audio length in seconds."""
        return len(self.audio) / SAMPLE_RATE


_PUNCT_SPACE = re.compile(r"[\s\W_]+", re.UNICODE)


def _normalise(text: str) -> str:
    return _PUNCT_SPACE.sub("", unicodedata.normalize("NFKC", text).casefold())


def is_phantom(text: str, phrases: Sequence[str]) -> bool:
    """True when ``text`` consists only of phantom phrases (ignoring case, spaces, punctuation)."""
    rest = _normalise(text)
    if not rest:
        return False
    for phrase in sorted((_normalise(p) for p in phrases), key=len, reverse=True):
        if phrase:
            rest = rest.replace(phrase, "")
    return not rest


def drop_reason(segment: DecodedSegment, options: EngineOptions) -> DropReason | None:
    """Which guard rejects ``segment`` (Whisper's own rules, plus phantom phrases), or None."""
    low_logprob = (options.log_prob_threshold is not None
                   and segment.avg_logprob < options.log_prob_threshold)
    if options.no_speech_threshold is not None and segment.no_speech_prob > \
            options.no_speech_threshold and (options.log_prob_threshold is None or low_logprob):
        return "no_speech"
    if not segment.text.strip():
        return "no_speech"
    if (options.compression_ratio_threshold is not None
            and segment.compression_ratio > options.compression_ratio_threshold):
        return "compression_ratio"
    if low_logprob:
        return "log_prob"
    if is_phantom(segment.text, options.phantom_phrases):
        return "phantom"
    if segment.prompt_echo:
        return "prompt_echo"
    return None


def pcm_to_float(pcm: bytes | npt.NDArray[Any]) -> FloatAudio:
    """16 kHz mono audio as float32 in [-1, 1]; bytes are little-endian 16-bit PCM."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        raw = bytes(pcm)
        if len(raw) % 2:
            raise ValueError("16-bit PCM must have an even number of bytes")
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    array = np.asarray(pcm)
    if array.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise ValueError(f"unsupported audio dtype {array.dtype}")


def resolve_device(device: Device) -> Literal["cuda", "cpu"]:
    """``auto`` picks cuda when CTranslate2 sees a CUDA device, else cpu."""
    cuda_devices = int(ctranslate2.get_cuda_device_count())
    if device == "auto":
        return "cuda" if cuda_devices > 0 else "cpu"
    if device == "cuda" and cuda_devices == 0:
        raise ModelDeviceUnavailable("device 'cuda' requested but CTranslate2 sees no CUDA device")
    return device


def check_model_folder(folder: Path) -> None:
    """Raise the matching ModelError when ``folder`` is not a complete CTranslate2 Whisper."""
    if not folder.is_dir():
        raise ModelNotFound(str(folder))
    missing = tuple(name for name in ("model.bin", "config.json", "tokenizer.json")
                    if not (folder / name).is_file())
    if not any((folder / name).is_file() for name in ("vocabulary.json", "vocabulary.txt")):
        missing += ("vocabulary.json",)
    if missing:
        hint = ("without tokenizer.json faster-whisper would try to download one from the hub"
                if "tokenizer.json" in missing else "copy the complete model folder")
        raise ModelFilesMissing(str(folder), missing, hint)


class WhisperDecoder:
    """Batched Whisper decoding on CTranslate2; only ever called from the batcher's thread."""

    def __init__(self, model: Any, options: EngineOptions, name: str) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self._model = model
        self._options = options
        self.name = name
        self._tokenizer_class = Tokenizer
        self._tokenizers: dict[str, Any] = {}
        self.languages = frozenset(model.supported_languages)

    def _tokenizer(self, language: str) -> Any:
        if language not in self._tokenizers:
            self._tokenizers[language] = self._tokenizer_class(
                self._model.hf_tokenizer, self._model.model.is_multilingual,
                task="transcribe", language=language)
        return self._tokenizers[language]

    def hotwords(self, language: str | None) -> str | None:
        """The hotwords used for ``language``."""
        return dict(self._options.hotwords_by_language).get(language or "",
                                                            self._options.hotwords)

    def _prompt(self, tokenizer: Any, language: str | None, hint: str | None) -> list[int]:
        text = hint if hint is not None else self._options.initial_prompt
        previous: list[int] = tokenizer.encode(" " + text.strip()) if text else []
        prompt: list[int] = self._model.get_prompt(
            tokenizer, previous, without_timestamps=True,
            hotwords=None if hint is not None else self.hotwords(language))
        return prompt

    def _echo_source(self, language: str | None) -> str:
        # A request's own hint is what the caller is expected to say: repeating it is no echo.
        return " ".join(filter(None, (self._options.initial_prompt, self.hotwords(language))))

    def _languages(self, encoder_output: Any, wanted: list[str | None],
                   switchable: list[bool]) -> list[str | None]:
        """Forced languages, switched where detection is confident of another candidate."""
        floor = self._options.language_switch_floor
        # Detection is a decoder pass: skip it when no request of the batch could use it.
        if all(language is not None for language in wanted) and (
                floor is None or not any(switchable)):
            return wanted
        candidates = [c for c in self._options.switch_languages if c in self.languages]
        detected = self._model.model.detect_language(encoder_output)
        chosen: list[str | None] = []
        for language, ranking, may_switch in zip(wanted, detected, switchable, strict=True):
            probs = {token[2:-2]: float(p) for token, p in ranking}
            if language is None:
                chosen.append(ranking[0][0][2:-2])
                continue
            if not may_switch:
                chosen.append(language)
                continue
            best = max(candidates, key=lambda c: probs.get(c, 0.0), default=language)
            if floor is not None and best != language and probs.get(best, 0.0) >= floor:
                chosen.append(best)
            else:
                chosen.append(language)
        return chosen

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Transcript]:
        """Decode all requests as one batch (in slices of the batch size for long audio)."""
        from faster_whisper.audio import pad_or_trim

        items: list[tuple[int, FloatAudio]] = [
            (index, request.audio[start:start + CHUNK_SAMPLES])
            for index, request in enumerate(requests)
            for start in range(0, len(request.audio), CHUNK_SAMPLES)
        ]
        extractor = self._model.feature_extractor
        step = max(self._options.effective_batch_size, 1)
        decoded: list[tuple[int, str, DecodedSegment]] = []
        for first in range(0, len(items), step):
            group = items[first:first + step]
            mels = [extractor(audio)[..., :-1] for _, audio in group]
            frames = self._window_frames(max(mel.shape[-1] for mel in mels))
            features = np.stack([pad_or_trim(mel, frames) for mel in mels])
            languages = [requests[index].language or self._options.language for index, _ in group]
            hints = [requests[index].prompt for index, _ in group]
            switchable = [requests[index].prompt is None
                          and len(audio) >= self._options.min_switch_s * SAMPLE_RATE
                          for index, audio in group]
            decoded.extend(self._decode_group(group, features, languages, hints, switchable))
        return [self._transcript(index, request, decoded)
                for index, request in enumerate(requests)]

    def _window_frames(self, longest: int) -> int:
        """Mel frames the encoder sees (100 per second): 3000, or the longest plus a margin."""
        margin = self._options.window_margin_s
        if margin is None:
            return FULL_WINDOW_FRAMES
        wanted = longest + round(margin * 100)
        return min(FULL_WINDOW_FRAMES, wanted + wanted % 2)  # the encoder halves it

    def _decode_group(self, group: list[tuple[int, FloatAudio]], features: npt.NDArray[Any],
                      languages: list[str | None], hints: list[str | None],
                      switchable: list[bool]) -> list[tuple[int, str, DecodedSegment]]:
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        encoder_output = self._model.encode(features)
        languages = self._languages(encoder_output, languages, switchable)
        tokenizers = [self._tokenizer(language or "en") for language in languages]
        max_length = self._model.max_length
        prompts = [self._prompt(tokenizer, language, hint) for tokenizer, language, hint
                   in zip(tokenizers, languages, hints, strict=True)]
        if self._options.max_new_tokens is not None:
            max_length = min(max_length, max(map(len, prompts)) + self._options.max_new_tokens)
        if self._options.max_tokens_per_s is not None:
            longest_s = max(len(audio) for _, audio in group) / SAMPLE_RATE
            max_length = min(max_length, max(map(len, prompts)) + 8
                             + math.ceil(self._options.max_tokens_per_s * longest_s))
        suppress = list(get_suppressed_tokens(tokenizers[0], [-1]))

        def generate(encoded: Any, batch_prompts: list[list[int]]) -> list[Any]:
            return list(self._model.model.generate(
                encoded, batch_prompts, beam_size=self._options.beam_size, patience=1.0,
                length_penalty=1.0, max_length=max_length, suppress_blank=True,
                suppress_tokens=suppress, return_scores=True, return_no_speech_prob=True))

        lengths = sorted({len(prompt) for prompt in prompts})
        if len(lengths) == 1:
            results = generate(encoder_output, prompts)
        else:
            # CTranslate2 decodes a batch only when every prompt has the same length (a call
            # answering a challenge has a digits prompt, its neighbours none): one generate per
            # length, each on a second encoder pass over its own items. Rare, and it costs
            # one extra encoding of those items, not a failed batch.
            results = [None] * len(prompts)
            for length in lengths:
                members = [i for i, prompt in enumerate(prompts) if len(prompt) == length]
                encoded = self._model.encode(features[members])
                for i, result in zip(members, generate(encoded, [prompts[i] for i in members]),
                                     strict=True):
                    results[i] = result
        out: list[tuple[int, str, DecodedSegment]] = []
        for (index, _), language, tokenizer, hint, result in zip(
                group, languages, tokenizers, hints, results, strict=True):
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            seq_len = len(result.sequences_ids[0])
            # Same normalisation as faster-whisper: cumulative log-prob over length + 1.
            avg_logprob = float(result.scores[0]) * seq_len / (seq_len + 1)
            text = str(tokenizer.decode(tokens)).strip()
            if language == "zh":
                text = to_simplified(text)
            out.append((index, language or "en", DecodedSegment(
                text, avg_logprob, float(result.no_speech_prob),
                get_compression_ratio(text) if text else 0.0,
                hint is None and echoes_prompt(text, self._echo_source(language)))))
        return out

    def _transcript(self, index: int, request: DecodeRequest,
                    decoded: list[tuple[int, str, DecodedSegment]]) -> Transcript:
        mine = [(language, segment) for i, language, segment in decoded if i == index]
        reasons = [drop_reason(segment, self._options) for _, segment in mine]
        kept = [segment for (_, segment), reason in zip(mine, reasons, strict=True)
                if reason is None]
        avg_logprob = float(np.mean([s.avg_logprob for _, s in mine]))
        dropped = None if kept else (reasons[0] or "no_speech")
        return Transcript(
            call_id=request.call_id,
            text="".join(s.text if i == 0 or _is_cjk(s.text[:1]) else " " + s.text
                         for i, s in enumerate(kept)),
            language=mine[0][0],
            confidence=min(1.0, math.exp(avg_logprob)),
            avg_logprob=avg_logprob,
            no_speech_prob=float(np.mean([s.no_speech_prob for _, s in mine])),
            start_s=request.offset_s,
            end_s=request.offset_s + request.duration_s,
            model=self.name,
            segments=len(kept),
            dropped_reason=dropped,
            partial=request.partial,
        )


def _is_cjk(char: str) -> bool:
    return bool(char) and unicodedata.east_asian_width(char) in ("W", "F")


class AsrEngine:
    """The process-wide recogniser: async API in front, one decoding thread behind."""

    def __init__(self, model: Any, options: EngineOptions, device: str, compute_type: str) -> None:
        self.options = options
        self.device = device
        self.compute_type = compute_type
        self.model_name = options.model_dir.name
        self._decoder = WhisperDecoder(model, options, self.model_name)
        self._batcher: Batcher[DecodeRequest, Transcript] = Batcher(
            self._decoder.decode,
            audio_seconds=lambda request: request.duration_s,
            window_s=options.batch_window_ms / 1000.0,
            max_batch_size=options.effective_batch_size,
            max_pending=options.max_pending,
        )

    @property
    def stats(self) -> BatcherStats:
        """Batching counters (batch-size histogram, rejections, time behind real time)."""
        return self._batcher.stats

    async def transcribe(self, pcm16k: bytes | npt.NDArray[Any], *, call_id: str,
                         language: str | None = None, offset_s: float = 0.0,
                         prompt: str | None = None) -> Transcript:
        """Recognise one utterance of 16 kHz mono audio; ``offset_s`` is its start in the call,
        ``prompt`` what the caller is expected to say (instead of the configured prompt)."""
        return await self._submit(pcm16k, call_id, language, offset_s, partial=False,
                                  prompt=prompt)

    async def transcribe_partial(self, pcm16k: bytes | npt.NDArray[Any], *, call_id: str,
                                 language: str | None = None, offset_s: float = 0.0,
                                 prompt: str | None = None) -> Transcript:
        """Best-effort transcript of the audio so far (refused first when the queue fills)."""
        return await self._submit(pcm16k, call_id, language, offset_s, partial=True,
                                  prompt=prompt)

    async def _submit(self, pcm16k: bytes | npt.NDArray[Any], call_id: str,
                      language: str | None, offset_s: float, *, partial: bool,
                      prompt: str | None = None) -> Transcript:
        if language is not None and language not in self._decoder.languages:
            raise ValueError(f"language {language!r} is not supported by {self.model_name}")
        audio = pcm_to_float(pcm16k)
        if audio.size == 0:
            return Transcript(call_id, "", language or self.options.language or "", 0.0,
                              float("-inf"), 1.0, offset_s, offset_s, self.model_name, 0,
                              "no_speech", partial)
        request = DecodeRequest(audio, call_id, language, offset_s, partial, prompt)
        return await self._batcher.submit(request, best_effort=partial)

    async def aclose(self) -> None:
        """Stop the worker; requests still waiting fail with EngineClosed."""
        await self._batcher.aclose()


def load_engine(options: EngineOptions) -> AsrEngine:
    """Open the CTranslate2 Whisper of ``options``; ModelError subclasses say what is wrong."""
    folder = options.model_dir.expanduser().resolve()
    check_model_folder(folder)
    device = resolve_device(options.device)
    compute_type = options.compute_type or ("float16" if device == "cuda" else "int8")
    from faster_whisper import WhisperModel

    try:
        model = WhisperModel(str(folder), device=device, compute_type=compute_type,
                             cpu_threads=options.cpu_threads, device_index=options.device_index,
                             local_files_only=True)
    except Exception as exc:  # CTranslate2 and tokenizers raise plain RuntimeError/Exception
        raise ModelCorrupt(str(folder), f"{type(exc).__name__}: {exc}") from exc
    n_mels = int(model.model.n_mels)
    if int(model.feature_extractor.mel_filters.shape[0]) != n_mels:
        raise ModelCorrupt(str(folder), f"the model expects {n_mels} mel bins but "
                           "preprocessor_config.json is missing or disagrees")
    log.info("asr engine loaded", extra={"model": folder.name, "device": device,
                                         "compute_type": compute_type})
    return AsrEngine(model, options, device, compute_type)
