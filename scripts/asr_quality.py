"""Sections of scripts/bench_asr.py that need a trained model: WER, spoken-intent accuracy
under several engine settings, and end of speech -> intent with several callers at once.

Audio: Asterisk's real English prompts (asterisk-core-sounds-en-wav, transcripts in
asterisk-core-sounds-en) and the labelled spoken requests (tests/data/spoken_requests.yaml,
asr/testing/speech.py), all through the G.711 telephone channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.engine import AsrEngine, EngineOptions, load_engine
from asr.frames import Utterance
from asr.intent import IntentClassifier
from asr.testing.speech import (
    SpokenRequest,
    build_set,
    cache_root,
    read_wav_16k,
    telephone,
)
from asr.vad import TurnDetector, VadOptions
from voiceprint.service import edit_distance

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
RATE = 16000


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (digits kept), for WER."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def prompt_pairs(limit: int) -> list[tuple[Path, str]]:
    """Asterisk prompts with plain-sentence transcripts (no [sound] descriptions, no digits)."""
    if not TRANSCRIPTS.is_file():
        raise SystemExit("asterisk-core-sounds-en(-wav) not installed (make setup installs it)")
    pairs = []
    for line in gzip.open(TRANSCRIPTS, "rt", encoding="utf-8"):
        name, sep, text = line.partition(":")
        if sep and "[" not in text and "/" not in name and (PROMPTS / f"{name}.wav").is_file() \
                and len(words(text)) >= 2 and not re.search(r"\d", text):
            pairs.append((PROMPTS / f"{name}.wav", text.strip()))
    return pairs[:: max(1, len(pairs) // limit)][:limit] if limit else pairs


POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")


def pocketsphinx_pairs() -> list[tuple[Path, str]]:
    """pocketsphinx-testdata's two real speakers: a LibriVox reader and the 'cards' talker."""
    pairs = []
    for folder in ("librivox", "cards"):
        listing = POCKETSPHINX / folder / ("transcription" if folder == "librivox"
                                           else "cards.transcription")
        if not listing.is_file():
            continue
        ids = (POCKETSPHINX / folder / ("fileids" if folder == "librivox" else "cards.fileids")
               ).read_text().split()
        texts = [re.sub(r"</?s>|\(.*\)", "", line).strip()
                 for line in listing.read_text().splitlines() if line.strip()]
        for file_id, text in zip(ids, texts, strict=False):
            wav = POCKETSPHINX / folder / f"{Path(file_id).name}.wav"
            if wav.is_file():
                pairs.append((wav, text))
    return pairs


async def _transcribe_all(engine: AsrEngine, audios: Sequence[Any],
                          languages: Sequence[str | None],
                          concurrency: int = 8) -> list[Any]:
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with slots:
            return await engine.transcribe(audios[i], call_id=str(i), language=languages[i])

    return list(await asyncio.gather(*(one(i) for i in range(len(audios)))))


async def bench_wer(options: EngineOptions, limit: int) -> dict[str, Any]:
    """English WER through G.711: Asterisk's prompts, and pocketsphinx-testdata's speakers."""
    out = {"asterisk_prompts": await _wer_of(options, prompt_pairs(limit))}
    pairs = pocketsphinx_pairs()
    if pairs:
        out["pocketsphinx_testdata"] = await _wer_of(options, pairs)
    return out


async def _wer_of(options: EngineOptions, pairs: Sequence[tuple[Path, str]]) -> dict[str, Any]:
    audios = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (wav, _) in enumerate(pairs):
            line = Path(tmp) / f"{n}.wav"
            telephone(wav, line, snr_db=None, seed=n)
            audios.append(read_wav_16k(line))
    engine = load_engine(options)
    started = time.perf_counter()
    try:
        results = await _transcribe_all(engine, audios, ["en"] * len(audios))
    finally:
        await engine.aclose()
    per = [(edit_distance(words(ref), words(r.text)), ref, r.text)
           for (_, ref), r in zip(pairs, results, strict=True)]
    errors = sum(e for e, _, _ in per)
    total = sum(len(words(ref)) for _, ref in pairs)
    worst = sorted(((e / max(1, len(words(ref))), ref, hyp) for e, ref, hyp in per),
                   reverse=True)[:5]
    return {"utterances": len(pairs), "words": total, "wer": round(errors / max(1, total), 4),
            "channel": "G.711 mu-law 8 kHz, upsampled to 16 kHz",
            "seconds": round(time.perf_counter() - started, 1),
            "worst": [{"wer": round(w, 2), "ref": ref, "hyp": hyp} for w, ref, hyp in worst]}


def spoken_requests() -> tuple[Path, list[SpokenRequest]]:
    """The labelled spoken set (built once into the cache)."""
    folder = cache_root() / "spoken-requests"
    return folder, build_set(ROOT / "tests" / "data" / "spoken_requests.yaml", folder)


async def accuracy_of(options: EngineOptions, items: Sequence[SpokenRequest], folder: Path,
                      classifier: IntentClassifier, menu: str | None,
                      detect: bool = False) -> dict[str, Any]:
    """Intent accuracy by language of one engine configuration: each request in its own
    language, in ``menu`` when given, or in the language Whisper detects (``detect``)."""
    engine = load_engine(options)
    audios = [read_wav_16k(folder / item.wav) for item in items]
    languages: list[str | None] = [None if detect else menu or item.language for item in items]
    started = time.perf_counter()
    try:
        results = await _transcribe_all(engine, audios, languages)
    finally:
        await engine.aclose()
    seconds = time.perf_counter() - started
    got = [classifier.classify(r.text).intent if not r.dropped else "unknown" for r in results]
    out: dict[str, Any] = {"utterances": len(items), "s_per_utterance":
                           round(seconds / max(1, len(items)), 3)}
    for language in ("zh", "en"):
        mine = [(item, g, r) for item, g, r in zip(items, got, results, strict=True)
                if item.language == language]
        if not mine:
            continue
        out[language] = {
            "accuracy": round(sum(item.intent == g for item, g, _ in mine) / len(mine), 3),
            "dropped": sum(r.dropped for _, _, r in mine),
            "heard_as_other_language": sum(r.language != language for _, _, r in mine),
            "confusions": dict(Counter(f"{item.intent}->{g}" for item, g, _ in mine
                                       if item.intent != g).most_common(6))}
    return out


ZH_HOTWORDS = "账单 发票 扣费 账号 密码 被盗 登录 宕机 故障 工单 进度 扩容 带宽 投诉 人工客服 套餐"


def variants(base: EngineOptions) -> dict[str, tuple[EngineOptions, bool]]:
    """Engine settings compared on the spoken set: name -> (options, menu language forced)."""
    r = dataclasses.replace
    return {
        "shipped": (base, True),
        "detect_language": (r(base, language=None, language_switch_floor=None), False),
        "forced_no_switch": (r(base, language_switch_floor=None), True),
        "zh_hotwords": (r(base, hotwords_by_language=(("zh", ZH_HOTWORDS),)), True),
        "zh_initial_prompt": (r(base, initial_prompt="您好，这里是客服热线，请问有什么可以帮您？"),
                              True),
        "greedy": (r(base, beam_size=1), True),
        "log_prob_-1.0": (r(base, log_prob_threshold=-1.0), True),
        "float32": (r(base, compute_type="float32"), True),
        "cpu_threads_1": (r(base, cpu_threads=1), True),
        "window_margin_2s": (r(base, window_margin_s=2.0), True),
        "window_30s": (r(base, window_margin_s=None), True),
    }


async def bench_accuracy(base: EngineOptions, names: Sequence[str], every: int
                         ) -> dict[str, Any]:
    """Spoken-intent accuracy of each variant on the same requests (every ``every``-th)."""
    folder, items = spoken_requests()
    chosen = items[::every]
    classifier = IntentClassifier.default()
    out: dict[str, Any] = {"requests": len(chosen), "of": len(items), "variants": {}}
    for name in names:
        options, forced = variants(base)[name]
        # detect_language: Whisper's own detection on every utterance (menu not used).
        result = await accuracy_of(options, chosen, folder, classifier, None,
                                   detect=not forced)
        out["variants"][name] = result
    mixed = dataclasses.replace(base)
    # An English caller who never pressed 9 (Mandarin menu): the shipped switch vs none.
    english = [i for i in chosen if i.language == "en"]
    out["english_in_mandarin_menu"] = {
        "shipped_switch": (await accuracy_of(mixed, english, folder, classifier, "zh"))["en"],
        "no_switch": (await accuracy_of(dataclasses.replace(base, language_switch_floor=None),
                                        english, folder, classifier, "zh"))["en"]}
    return out


def _turn(audio: np.ndarray[Any, Any]) -> tuple[Utterance | None, float]:
    """The VAD's utterance of a clip and its hang-over (event time minus true end of speech)."""
    options = VadOptions()
    pcm = np.clip(audio * 32768, -32768, 32767).astype("<i2")
    loud = np.flatnonzero(np.abs(pcm) > 0.05 * np.abs(pcm).max())
    true_end = (loud[-1] + 1) / RATE if loud.size else 0.0
    detector = TurnDetector(options)
    frame = options.frame_bytes // 2
    padded = np.concatenate([pcm, np.zeros(RATE * 2, "<i2")])
    for k in range(len(padded) // frame):
        for event in detector.process(padded[k * frame:(k + 1) * frame].tobytes(),
                                      k * frame / RATE):
            if isinstance(event, Utterance):
                return event, (k + 1) * frame / RATE - true_end
    return None, 0.0


async def bench_concurrency(options: EngineOptions, levels: Sequence[int], rounds: int,
                            limit_s: float = 1.5) -> dict[str, Any]:
    """End of speech -> intent when N callers finish speaking at the same moment."""
    folder, items = spoken_requests()
    classifier = IntentClassifier.default()
    pool = []
    for item in items[::5]:
        utterance, hangover = _turn(read_wav_16k(folder / item.wav))
        if utterance is not None:
            pool.append((item, utterance, hangover))
    engine = load_engine(options)
    out: dict[str, Any] = {"levels": {}, "rounds": rounds, "limit_p95_s": limit_s}
    try:
        await engine.transcribe(pool[0][1].pcm, call_id="warm", language="zh")
        k = 0
        for level in levels:
            totals: list[float] = []
            waits: list[float] = []
            decodes: list[float] = []
            hangovers: list[float] = []
            classify: list[float] = []
            for _ in range(rounds):
                batch = [pool[(k + i) % len(pool)] for i in range(level)]
                k += level
                before = engine.stats
                started = time.perf_counter()

                walls = await asyncio.gather(*(
                    _decided(engine, classifier, e, n, started, classify)
                    for n, e in enumerate(batch)))
                after = engine.stats
                batches = max(1, sum(after.batch_sizes.values()) - sum(
                    before.batch_sizes.values()))
                decode_per_batch = (after.decode_s - before.decode_s) / batches
                for (_, _, hangover), wall in zip(batch, walls, strict=True):
                    hangovers.append(hangover)
                    decodes.append(min(wall, decode_per_batch))
                    waits.append(max(0.0, wall - decode_per_batch))
                    totals.append(hangover + wall)
            out["levels"][str(level)] = {
                "end_of_speech_to_intent_s": _pcts(totals),
                "vad_hangover_s": _pcts(hangovers), "queueing_s": _pcts(waits),
                "decoding_s": _pcts(decodes), "classification_ms": round(
                    1000 * float(np.median(classify)), 2)}
        fits = [lv for lv in levels
                if out["levels"][str(lv)]["end_of_speech_to_intent_s"]["p95"] <= limit_s]
        out["most_callers_with_p95_under_limit"] = max(fits) if fits else 0
        out["notes"] = ["queueing = time to the result minus the decode time of one batch "
                        "(waiting behind earlier batches and the batch window)",
                        "every caller's utterance ends at the same moment: the worst case"]
    finally:
        await engine.aclose()
    return out


async def _decided(engine: AsrEngine, classifier: IntentClassifier, entry: Any, n: int,
                   started: float, classify: list[float]) -> float:
    """Seconds from ``started`` to this caller's transcript; classification timed apart."""
    item, utterance, _ = entry
    result = await engine.transcribe(utterance.pcm, call_id=f"c{n}", language=item.language)
    done = time.perf_counter()
    classifier.classify(result.text)
    classify.append(time.perf_counter() - done)
    return done - started


def _pcts(values: Sequence[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 3),
            "p95": round(float(np.percentile(values, 95)), 3)}


async def bench_digits(options: EngineOptions, count: int) -> dict[str, Any]:
    """Spoken challenge digits heard (exact, within one edit), Mandarin and English."""
    import random

    from asr.numbers import DIGIT_PROMPTS, spoken_digits
    from asr.testing.speech import synthesise

    words = {"en": "zero one two three four five six seven eight nine".split(),
             "zh": list("零一二三四五六七八九")}
    voices = {"en": ("flite:awb", "flite:slt", "flite:kal", "flite:rms"),
              "zh": ("cmn-latn-pinyin", "cmn-latn-pinyin+f2")}
    engine = load_engine(options)
    out: dict[str, Any] = {"challenges_per_language": count}
    try:
        for language in ("en", "zh"):
            rng = random.Random(5)
            errors = []
            with tempfile.TemporaryDirectory() as tmp:
                for n in range(count):
                    digits = "".join(rng.choice("0123456789") for _ in range(6))
                    spoken = ("。" if language == "zh" else " ").join(
                        words[language][int(d)] for d in digits)
                    raw, line = Path(tmp) / "raw.wav", Path(tmp) / "line.wav"
                    synthesise(spoken, language, voices[language][n % len(voices[language])],
                               (1.0, 0.9)[n // 2 % 2], raw)
                    telephone(raw, line, snr_db=(None, 20.0)[n // 4 % 2], seed=n)
                    heard = await engine.transcribe(read_wav_16k(line), call_id=str(n),
                                                    language=language,
                                                    prompt=DIGIT_PROMPTS.get(language))
                    errors.append(edit_distance(digits, spoken_digits(heard.text)))
            out[language] = {"exact": errors.count(0),
                             "within_one_edit": sum(e <= 1 for e in errors)}
    finally:
        await engine.aclose()
    return out


async def bench_speed(base: EngineOptions, names: Sequence[str], count: int = 24
                      ) -> dict[str, Any]:
    """Each variant's cost on the same utterances: one at a time, and 16 at once."""
    folder, items = spoken_requests()
    chosen = items[::max(1, len(items) // count)][:count]
    audios = [read_wav_16k(folder / item.wav) for item in chosen]
    languages = [item.language for item in chosen]
    out: dict[str, Any] = {"utterances": len(chosen),
                           "audio_s_mean": round(float(np.mean([len(a) for a in audios]))
                                                 / RATE, 2)}
    for name in names:
        options, _ = variants(base)[name]
        engine = load_engine(options)
        try:
            await engine.transcribe(audios[0], call_id="warm", language=languages[0])
            walls = []
            for i, audio in enumerate(audios):
                started = time.perf_counter()
                await engine.transcribe(audio, call_id=str(i), language=languages[i])
                walls.append(time.perf_counter() - started)
            started = time.perf_counter()
            await _transcribe_all(engine, audios, languages, concurrency=16)
            batched = len(audios) / (time.perf_counter() - started)
        finally:
            await engine.aclose()
        out[name] = {"one_at_a_time_s": _pcts(walls),
                     "batched_utterances_per_s": round(batched, 2)}
    return out
