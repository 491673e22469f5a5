#!/usr/bin/env python3
"""Benchmark the speech path (RTP ingest, VAD, Whisper, intent); prints one JSON object on stdout.

No Asterisk and no pjsua2: audio is synthesised with espeak-ng (English ``en-us`` and Mandarin
``cmn-latn-pinyin``), converted with sox, and fed to the project's own components:

* ``latency``: end of caller speech -> intent decided over ``--utterances`` utterances, split into
  VAD hang-over (audio timeline: Utterance event time minus the true end of speech), queue and
  hand-off in the batcher, decoding, and classification; p50/p95 of each and of the total.
* ``batching``: the same 32 utterances (0.5-4 s) decoded by an engine with batching on (all
  submitted at once) and by one with ``batch=False`` (submitted one after another).
* ``ingest``: process CPU of ``RtpReceiver`` + ``TurnDetector`` per call at each ``--streams``
  level, fed real-time 20 ms slin16 RTP over UDP on 127.0.0.1 by a generator in a child process
  (whose CPU is not counted).

The default model is the tiny random Whisper from ``asr.testing.tiny_models``: its text is
meaningless, so the classifier then gets the known text of each utterance (the JSON says so).
Everything else (logs, library chatter) goes to stderr.

Usage: .venv/bin/python scripts/bench_asr.py [--utterances 20] [--streams 1,10,50]
       [--ingest-seconds 10] [--model-dir DIR] [--device cpu|cuda|auto]
       [--sections latency,batching,ingest]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asr_quality  # noqa: E402

from asr import default_model  # noqa: E402
from asr.batcher import BatcherStats  # noqa: E402
from asr.engine import AsrEngine, Device, EngineOptions, load_engine  # noqa: E402
from asr.frames import SpeechEnded, Utterance  # noqa: E402
from asr.intent import IntentClassifier  # noqa: E402
from asr.media import PortPool, RtpOptions, RtpReceiver  # noqa: E402
from asr.testing.tiny_models import build_tiny_whisper  # noqa: E402
from asr.vad import TurnDetector, VadOptions, measure_frame_cost_us  # noqa: E402
from ivr.service import engine_options  # noqa: E402
from ivr.settings import AsrSettings  # noqa: E402

log = logging.getLogger("bench_asr")

SAMPLE_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
PAYLOAD_TYPE = 118  # Asterisk's dynamic payload type for slin16 (RtpOptions default)
LEAD_SILENCE_S = 0.5  # longer than the VAD warm-up, so the onset is judged on a settled VAD
TAIL_SILENCE_S = 1.5  # after the hang-over, so every utterance closes on silence
BATCH_UTTERANCES = 32
SECTIONS = ("latency", "batching", "ingest", "wer", "accuracy", "concurrency", "digits",
            "speed")

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Phrase:
    """One caller sentence: what the classifier should read and what espeak-ng says."""

    text: str
    speak: str  # espeak-ng input (pinyin with tone numbers for Mandarin)
    voice: str
    language: str
    intent: str  # expected intent of ``text``


@dataclass(frozen=True)
class Clip:
    """Synthesised speech of one phrase, 16 kHz mono, silence trimmed at both ends."""

    phrase: Phrase
    pcm: Pcm

    @property
    def duration_s(self) -> float:
        """Length of the speech in seconds."""
        return len(self.pcm) / SAMPLE_RATE


EN, ZH = "en-us", "cmn-latn-pinyin"
PHRASES: tuple[Phrase, ...] = (
    Phrase("I want to check my bill for this month",
           "I want to check my bill for this month", EN, "en", "billing"),
    Phrase("我想查一下我的账单", "wo3 xiang3 cha2 yi2 xia4 wo3 de zhang4 dan1", ZH, "zh",
           "billing"),
    Phrase("someone stole my password and logged into my account",
           "someone stole my password and logged into my account", EN, "en",
           "account_security"),
    Phrase("我要转人工", "wo3 yao4 zhuan3 ren2 gong1", ZH, "zh", "human_agent"),
    Phrase("the website is down and the server will not respond",
           "the website is down and the server will not respond", EN, "en", "technical_fault"),
    Phrase("我的账号被盗了", "wo3 de zhang4 hao4 bei4 dao4 le", ZH, "zh", "account_security"),
    Phrase("let me talk to a real person please", "let me talk to a real person please", EN,
           "en", "human_agent"),
    Phrase("网站打不开了 一直报错", "wang3 zhan4 da3 bu4 kai1 le, yi4 zhi2 bao4 cuo4", ZH, "zh",
           "technical_fault"),
    Phrase("what is the status of my support ticket",
           "what is the status of my support ticket", EN, "en", "ticket_status"),
    Phrase("我要投诉你们的服务", "wo3 yao4 tou2 su4 ni3 men de fu2 wu4", ZH, "zh", "complaint"),
)


# -- audio ----------------------------------------------------------------------------------


def _run_tool(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except FileNotFoundError as exc:
        raise SystemExit(f"{cmd[0]} is required (apt-get install espeak-ng sox)") from exc
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{cmd[0]} failed: {exc.stderr.decode(errors='replace')[-300:]}") from exc


def synthesize(phrase: Phrase, index: int, workdir: Path) -> Clip:
    """espeak-ng -> sox 16 kHz mono 16-bit -> int16 samples with silence trimmed."""
    raw, converted = workdir / f"{index}-raw.wav", workdir / f"{index}.wav"
    _run_tool(["espeak-ng", "-v", phrase.voice, "-w", str(raw), phrase.speak])
    _run_tool(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(converted)])
    with wave.open(str(converted), "rb") as handle:
        if (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) != (
                SAMPLE_RATE, 1, 2):
            raise SystemExit(f"sox produced an unexpected format for {converted}")
        samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    # -34 dBFS of the peak marks speech; espeak pads with near-digital silence.
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= 0.02 * np.abs(samples).max())
    if loud.size == 0:
        raise SystemExit(f"espeak-ng produced silence for phrase {index}")
    return Clip(phrase, samples[loud[0]:loud[-1] + 1].astype(np.int16))


def silence(seconds: float) -> Pcm:
    """Digital silence of the given length."""
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)


def fit_length(clip: Clip, seconds: float) -> Pcm:
    """The clip repeated (with short pauses) or cut to exactly ``seconds``."""
    looped = np.concatenate([clip.pcm, silence(0.15)])
    return np.resize(looped, round(seconds * SAMPLE_RATE)).astype(np.int16)


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/mean/max of durations given in seconds, reported in milliseconds."""
    if not values_s:
        return {}
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    return {"p50": round(float(np.percentile(ms, 50)), 2),
            "p95": round(float(np.percentile(ms, 95)), 2),
            "mean": round(float(ms.mean()), 2), "max": round(float(ms.max()), 2)}


def machine_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


# -- model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """Which Whisper the run uses and whether its text means anything."""

    folder: Path
    tiny_random: bool
    device: Device


def engine_settings(model: ModelChoice) -> EngineOptions:
    """The service's own engine settings (ivr.settings.AsrSettings defaults) on ``model``."""
    shipped = engine_options(AsrSettings.model_validate({}), model.folder)
    return dataclasses.replace(shipped, device=model.device)


def open_engine(model: ModelChoice, *, batch: bool, max_batch_size: int = 16) -> AsrEngine:
    """Load an engine on the chosen model with the service's settings; batching on or off."""
    return load_engine(dataclasses.replace(engine_settings(model), batch=batch,
                                           max_batch_size=max_batch_size))


async def warm_up(engine: AsrEngine, clip: Clip) -> None:
    """One decode so the first measured request does not pay for lazy initialisation."""
    await engine.transcribe(clip.pcm.tobytes(), call_id="warm-up",
                            language=clip.phrase.language)


def histogram_delta(before: BatcherStats, after: BatcherStats) -> dict[str, int]:
    """Batch sizes decoded between two stats snapshots (warm-up excluded)."""
    sizes = {size: count - before.batch_sizes.get(size, 0)
             for size, count in after.batch_sizes.items()}
    return {str(size): count for size, count in sorted(sizes.items()) if count > 0}


# -- 1. latency -----------------------------------------------------------------------------


async def bench_latency(model: ModelChoice, clips: Sequence[Clip], utterances: int,
                        classifier: IntentClassifier) -> dict[str, Any]:
    """End of speech -> intent decided, one utterance at a time, split by stage."""
    vad_options = VadOptions()
    engine = open_engine(model, batch=True)
    hangovers: list[float] = []
    vad_end_errors: list[float] = []
    queues: list[float] = []
    decodes: list[float] = []
    classifies: list[float] = []
    totals: list[float] = []
    correct = missed = dropped = 0
    try:
        await warm_up(engine, clips[0])
        for i in range(utterances):
            clip = clips[i % len(clips)]
            audio = np.concatenate([silence(LEAD_SILENCE_S), clip.pcm, silence(TAIL_SILENCE_S)])
            true_end_s = (round(LEAD_SILENCE_S * SAMPLE_RATE) + len(clip.pcm)) / SAMPLE_RATE
            detector = TurnDetector(vad_options)
            utterance: Utterance | None = None
            detected_at_s = 0.0
            vad_end_s = true_end_s
            for k in range(len(audio) // FRAME_SAMPLES):
                frame = audio[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES].tobytes()
                for event in detector.process(frame, k * FRAME_MS / 1000):
                    if isinstance(event, SpeechEnded):
                        vad_end_s = event.at_s
                    elif isinstance(event, Utterance) and utterance is None:
                        utterance = event
                        # The event is known once this frame has been heard in full.
                        detected_at_s = (k + 1) * FRAME_MS / 1000
                if utterance is not None:
                    break
            if utterance is None:
                missed += 1
                continue
            decode_before = engine.stats.decode_s
            started = time.perf_counter()
            transcript = await engine.transcribe(
                utterance.pcm, call_id=f"latency-{i}", language=clip.phrase.language,
                offset_s=utterance.audio_start_s)
            transcribed = time.perf_counter()
            # Requests go one at a time, so the decode-time delta is exactly this batch.
            decode_s = engine.stats.decode_s - decode_before
            dropped += int(transcript.dropped)
            text = clip.phrase.text if model.tiny_random else transcript.text
            result = classifier.classify(text)
            classified = time.perf_counter()
            correct += int(result.intent == clip.phrase.intent)
            hangover_s = detected_at_s - true_end_s
            queue_s = max(0.0, (transcribed - started) - decode_s)
            hangovers.append(hangover_s)
            vad_end_errors.append(vad_end_s - true_end_s)
            queues.append(queue_s)
            decodes.append(decode_s)
            classifies.append(classified - transcribed)
            totals.append(hangover_s + (classified - started))
    finally:
        await engine.aclose()
    return {
        "utterances": utterances,
        "measured": len(totals),
        "vad_missed": missed,
        "machine_cpus": machine_cpus(),
        "params": {"vad": {"hangover_ms": vad_options.hangover_ms,
                           "aggressiveness": vad_options.aggressiveness,
                           "frame_ms": vad_options.frame_ms,
                           "min_speech_ms": vad_options.min_speech_ms},
                   "lead_silence_s": LEAD_SILENCE_S, "tail_silence_s": TAIL_SILENCE_S,
                   "batch_window_ms": engine.options.batch_window_ms,
                   "beam_size": engine.options.beam_size,
                   "phrases": len(clips), "languages": sorted({c.phrase.language for c in clips})},
        "end_of_speech_to_intent_ms": summary_ms(totals),
        "vad_hangover_ms": summary_ms(hangovers),
        "vad_speech_end_error_ms": summary_ms(vad_end_errors),
        "queue_ms": summary_ms(queues),
        "decode_ms": summary_ms(decodes),
        "classify_ms": summary_ms(classifies),
        "vad_frame_cost_us": round(measure_frame_cost_us(2000, vad_options), 2),
        "intent_correct": correct,
        "transcripts_dropped_by_guards": dropped,
        "notes": [
            "vad_hangover_ms is on the audio timeline: frame end at which the Utterance event "
            "fired minus the true end of speech (last sample above -34 dB of peak); it is "
            "hangover_ms plus detection slack",
            "queue_ms = transcribe() wall time minus the batcher's decode time for that batch: "
            "the batch window wait plus thread hand-off and result delivery",
            "decode_ms = BatcherStats.decode_s delta (feature extraction, encode, generate)",
            "total = vad_hangover + transcribe wall + classify wall, per utterance",
            "with the tiny random model the guards drop most transcripts (its text is noise); "
            "decoding still runs in full, so decode_ms is a real cost of that model size",
        ],
    }


# -- 2. batching ----------------------------------------------------------------------------


async def bench_batching(model: ModelChoice, clips: Sequence[Clip]) -> dict[str, Any]:
    """The same utterances decoded batched (concurrent) and one at a time (sequential)."""
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 4.0, BATCH_UTTERANCES)
    items = [(fit_length(clips[i % len(clips)], float(d)).tobytes(),
              clips[i % len(clips)].phrase.language) for i, d in enumerate(durations)]
    audio_s = float(durations.sum())

    batched = open_engine(model, batch=True)
    try:
        await warm_up(batched, clips[0])
        before = batched.stats
        started = time.perf_counter()
        await asyncio.gather(*(batched.transcribe(pcm, call_id=f"batched-{i}", language=lang)
                               for i, (pcm, lang) in enumerate(items)))
        batched_s = time.perf_counter() - started
        batched_hist = histogram_delta(before, batched.stats)
        batched_options = batched.options
    finally:
        await batched.aclose()

    sequential = open_engine(model, batch=False)
    try:
        await warm_up(sequential, clips[0])
        before = sequential.stats
        started = time.perf_counter()
        for i, (pcm, lang) in enumerate(items):
            await sequential.transcribe(pcm, call_id=f"sequential-{i}", language=lang)
        sequential_s = time.perf_counter() - started
        sequential_hist = histogram_delta(before, sequential.stats)
    finally:
        await sequential.aclose()

    batched_rate = BATCH_UTTERANCES / batched_s
    sequential_rate = BATCH_UTTERANCES / sequential_s
    return {
        "utterances": BATCH_UTTERANCES,
        "audio_s": round(audio_s, 2),
        "utterance_s": {"min": round(float(durations.min()), 2),
                        "max": round(float(durations.max()), 2)},
        "machine_cpus": machine_cpus(),
        "params": {"max_batch_size": batched_options.max_batch_size,
                   "batch_window_ms": batched_options.batch_window_ms,
                   "beam_size": batched_options.beam_size},
        "batched": {"seconds": round(batched_s, 3),
                    "utterances_per_s": round(batched_rate, 2),
                    "batch_size_histogram": batched_hist},
        "sequential": {"seconds": round(sequential_s, 3),
                       "utterances_per_s": round(sequential_rate, 2),
                       "batch_size_histogram": sequential_hist},
        "throughput_ratio_batched_over_sequential": round(batched_rate / sequential_rate, 2),
    }


# -- 3. ingest ------------------------------------------------------------------------------


def _generator_main(ports: list[int], loop_pcm: bytes, seconds: float, ready: EventType,
                    go: EventType, results: Connection) -> None:
    """Child process: one UDP socket per stream, 20 ms slin16 packets paced in real time."""
    samples = np.frombuffer(loop_pcm, dtype="<i2")
    frames = len(samples) // FRAME_SAMPLES
    # Wire order is big-endian (Asterisk slin); each payload is 640 bytes.
    payloads = [samples[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES].astype(">i2").tobytes()
                for k in range(frames)]
    header = struct.Struct("!BBHII")
    streams = len(ports)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in ports]
    seqs = [(7919 * i + 65000) % 65536 for i in range(streams)]  # some wrap mid-run
    stamps = [(104729 * i) % (1 << 32) for i in range(streams)]
    sent = [0] * streams
    errors = 0
    max_lag = 0.0
    ready.set()
    go.wait(60)
    ticks = round(seconds * 1000 / FRAME_MS)
    start = time.perf_counter()
    for tick in range(ticks):
        for i in range(streams):
            # Streams are spread over the 20 ms period, as independent calls would be.
            due = start + (tick + i / streams) * FRAME_MS / 1000
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            marker = 0x80 if tick == 0 else 0
            packet = header.pack(0x80, marker | PAYLOAD_TYPE, seqs[i], stamps[i], 0x1000 + i)
            try:
                socks[i].sendto(packet + payloads[(tick + 37 * i) % frames],
                                ("127.0.0.1", ports[i]))
                sent[i] += 1
            except OSError:
                errors += 1
            seqs[i] = (seqs[i] + 1) % 65536
            stamps[i] = (stamps[i] + FRAME_SAMPLES) % (1 << 32)
    for sock in socks:
        sock.close()
    results.send({"sent": sent, "send_errors": errors, "max_lag_ms": round(max_lag * 1000, 2),
                  "seconds": round(time.perf_counter() - start, 3)})
    results.close()


async def _wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def bench_ingest_level(streams: int, seconds: float, loop_pcm: bytes,
                             pool: PortPool) -> dict[str, Any]:
    """CPU of N receivers + turn detectors in this process while a child sends N streams."""
    options = RtpOptions()
    ports = [pool.allocate() for _ in range(streams)]
    receivers: list[RtpReceiver] = []
    tasks: list[asyncio.Task[None]] = []
    frames = [0] * streams
    utterances = [0] * streams

    async def consume(index: int) -> None:
        detector = TurnDetector(VadOptions())
        async for chunk in receivers[index]:
            frames[index] += 1
            # RTP frames are 20 ms, exactly one VAD frame: use the synchronous core.
            for event in detector.process(chunk.pcm, chunk.timestamp_s):
                utterances[index] += isinstance(event, Utterance)

    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_generator_main, name=f"rtp-generator-{streams}",
                       args=(ports, loop_pcm, seconds, ready, go, writer), daemon=True)
    try:
        for port in ports:
            receivers.append(await RtpReceiver.bind(port, options))
        tasks = [asyncio.create_task(consume(i)) for i in range(streams)]
        proc.start()
        writer.close()
        await _wait_for(ready.is_set, 60, "the RTP generator to start")
        cpu_before, usage_before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        wall_before = time.perf_counter()
        go.set()
        # One long sleep, not polling: the waiting itself must not add CPU to the window.
        await asyncio.sleep(seconds)
        await _wait_for(lambda: not proc.is_alive(), seconds + 30, "the RTP generator to finish")
        await asyncio.sleep(0.1)  # the last datagrams and frames land
        wall_s = time.perf_counter() - wall_before
        cpu_s = time.process_time() - cpu_before
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        sent_report: dict[str, Any] = reader.recv() if reader.poll(5) else {}
    finally:
        if proc.is_alive():
            proc.terminate()
        if proc.pid is not None:
            proc.join(5)
        for receiver in receivers:
            await receiver.aclose()
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        for port in ports:
            pool.release(port)
        reader.close()

    stats = [receiver.stats for receiver in receivers]
    sent = sum(sent_report.get("sent", []))
    received = sum(s.received for s in stats)
    # CPU per second of media sent: the window's idle edges (start-up, drain) are not calls.
    media_s = float(sent_report.get("seconds", wall_s))
    percent_total = 100.0 * cpu_s / media_s
    return {
        "streams": streams,
        "wall_s": round(wall_s, 3),
        "media_s": round(media_s, 3),
        "cpu_s": round(cpu_s, 4),
        "cpu_user_s": round(usage_after.ru_utime - usage_before.ru_utime, 4),
        "cpu_sys_s": round(usage_after.ru_stime - usage_before.ru_stime, 4),
        "cpu_percent_of_one_core_total": round(percent_total, 3),
        "cpu_percent_of_one_core_per_call": round(percent_total / streams, 3),
        "cpu_us_per_packet": round(cpu_s / received * 1e6, 2) if received else None,
        "packets_sent": sent,
        "packets_received": received,
        "packets_accepted": sum(s.accepted for s in stats),
        "dropped_in_socket": max(0, sent - received),
        "rejected": sum(s.rejected for s in stats),
        "lost_sequence_gaps": sum(s.lost for s in stats),
        "reordered": sum(s.reordered for s in stats),
        "dropped_queue_full": sum(s.dropped_queue_full for s in stats),
        "frames_to_vad": sum(frames),
        "utterances_detected": sum(utterances),
        "generator": {k: v for k, v in sent_report.items() if k != "sent"},
    }


async def bench_ingest(levels: Sequence[int], seconds: float, clips: Sequence[Clip],
                       port_range: tuple[int, int]) -> dict[str, Any]:
    """Run each concurrency level in turn on fresh receivers."""
    # Speech-like loop: phrases with conversational pauses between them.
    parts: list[Pcm] = []
    for clip in clips[:4]:
        parts += [clip.pcm, silence(0.8)]
    loop_pcm = np.concatenate(parts).tobytes()
    pool = PortPool(*port_range)
    results = []
    for streams in levels:
        log.info("ingest level", extra={"streams": streams})
        results.append(await bench_ingest_level(streams, seconds, loop_pcm, pool))
    return {
        "machine_cpus": machine_cpus(),
        "params": {"seconds": seconds, "payload_type": PAYLOAD_TYPE, "payload_bytes": 640,
                   "wire_byte_order": "big", "ptime_ms": FRAME_MS, "host": "127.0.0.1",
                   "ports": f"{port_range[0]}-{port_range[1]}",
                   "content_loop_s": round(len(loop_pcm) / 2 / SAMPLE_RATE, 2),
                   "vad_hangover_ms": VadOptions().hangover_ms},
        "levels": results,
        "notes": ["cpu is time.process_time() of the receiving process only (event loop, "
                  "RtpReceiver, TurnDetector); the generator runs in a spawned child process",
                  "percent of one core = cpu_s / media_s (seconds the generator was sending)",
                  "dropped_in_socket = packets sent - datagrams the receivers saw"],
    }


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--streams", default="1,10,50", help="comma-separated ingest levels")
    parser.add_argument("--ingest-seconds", type=float, default=10.0)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="CTranslate2 Whisper folder (default: the shipped Whisper base)")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny random-weight model (pipeline costs only)")
    parser.add_argument("--wer-prompts", type=int, default=0, help="0: every usable prompt")
    parser.add_argument("--variants", default="shipped,detect_language,forced_no_switch,"
                        "zh_hotwords,zh_initial_prompt,greedy,log_prob_-1.0,float32")
    parser.add_argument("--every", type=int, default=1,
                        help="accuracy on every n-th spoken request (1: all 360)")
    parser.add_argument("--callers", default="1,2,4,6,8,12,16",
                        help="concurrency levels: callers finishing speech at once")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--port-range", default="41000-41998")
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.streams.split(",") if x.strip()]
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.section_list) - set(SECTIONS)
    if unknown or args.utterances < 1 or not args.levels or min(args.levels) < 1:
        parser.error(f"bad --sections/--utterances/--streams ({sorted(unknown)})")
    low, _, high = args.port_range.partition("-")
    args.ports = (int(low), int(high))
    return args


async def run(args: argparse.Namespace, clips: Sequence[Clip]) -> dict[str, Any]:
    """All requested sections; ingest first so idle model threads cannot colour its CPU."""
    out: dict[str, Any] = {}
    if "ingest" in args.section_list:
        out["ingest"] = await bench_ingest(args.levels, args.ingest_seconds, clips, args.ports)
    if not set(SECTIONS[3:] + ("latency", "batching")) & set(args.section_list):
        return out
    tiny = bool(args.tiny)
    folder = (build_tiny_whisper() if tiny else args.model_dir.expanduser().resolve()
              if args.model_dir else default_model.install())
    # A folder with the tiny recipe's RECIPE file is the random model even when named by hand.
    tiny = tiny or (folder / "RECIPE").is_file()
    model = ModelChoice(folder, tiny, args.device)
    probe = open_engine(model, batch=False)
    out["model"] = {
        "dir": str(folder), "name": probe.model_name, "tiny_random": tiny,
        "device": probe.device, "compute_type": probe.compute_type,
        "classification_input": ("known text of each utterance (tiny random model: its "
                                 "transcripts are meaningless)" if tiny else "transcript text"),
    }
    await probe.aclose()
    if "latency" in args.section_list:
        started = time.perf_counter()
        classifier = IntentClassifier.default()
        train_s = time.perf_counter() - started
        out["latency"] = await bench_latency(model, clips, args.utterances, classifier)
        out["latency"]["classifier_training_s_excluded"] = round(train_s, 3)
    if "batching" in args.section_list:
        out["batching"] = await bench_batching(model, clips)
    settings = engine_settings(model)
    out["engine_settings"] = {"beam_size": settings.beam_size, "language_switch_floor":
                              settings.language_switch_floor, "log_prob_threshold":
                              settings.log_prob_threshold, "compute_type": probe.compute_type}
    if "wer" in args.section_list:
        out["wer"] = await asr_quality.bench_wer(settings, args.wer_prompts)
    if "accuracy" in args.section_list:
        out["accuracy"] = await asr_quality.bench_accuracy(
            settings, [v for v in args.variants.split(",") if v], args.every)
    if "digits" in args.section_list:
        out["digits"] = await asr_quality.bench_digits(settings, 16)
    if "speed" in args.section_list:
        out["speed"] = await asr_quality.bench_speed(
            settings, [v for v in args.variants.split(",") if v])
    if "concurrency" in args.section_list:
        out["concurrency"] = await asr_quality.bench_concurrency(
            settings, [int(x) for x in args.callers.split(",")], args.rounds)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the JSON report."""
    args = parse_args(argv)
    # Keep fd 1 for the JSON alone: CTranslate2 or a tool may write to stdout at the C level.
    report_fd = os.dup(1)
    os.dup2(2, 1)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-asr-") as tmp:
        clips = [synthesize(p, i, Path(tmp)) for i, p in enumerate(PHRASES)]
    body = asyncio.run(run(args, clips))
    report = {
        "benchmark": "asr",
        "machine_cpus": machine_cpus(),
        "python": platform.python_version(),
        "clips": [{"language": c.phrase.language, "intent": c.phrase.intent,
                   "speech_s": round(c.duration_s, 2)} for c in clips],
        **body,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    with os.fdopen(report_fd, "w") as out:
        out.write(json.dumps(report, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
