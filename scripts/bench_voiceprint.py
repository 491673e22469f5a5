#!/usr/bin/env python3
"""Benchmark tier 2 (voiceprints); prints one JSON object on stdout.

Audio: espeak-ng sentences (several voices, 16 kHz), as in the tests. Sections:

* ``embedding``: ``--batch`` utterances of 3 s embedded one call each versus in one batched call,
  side by side in the same run (the service batches enrollment samples; a GPU pool would batch
  attempts of several calls).
* ``verify``: one whole ``VoiceprintService.verify`` (lockout read, sample checks, replay
  comparison against every earlier fingerprint of the account, embedding, cohort
  s-normalisation, two audit appends on SQLite) — p50/p95 over ``--attempts`` attempts, with the
  share spent embedding; the replay comparison grows with the number of earlier attempts.
* ``fingerprint``: computing one replay fingerprint and comparing it with one earlier print.

Default model: the tiny random ECAPA of ``voiceprint.testing.tiny_ecapa`` (pipeline overheads,
not a trained model's cost); ``--model-dir`` for a real one (``--device cuda`` on a GPU machine).

Usage: .venv/bin/python scripts/bench_voiceprint.py [--model-dir DIR] [--device cpu|cuda|auto]
       [--batch 16] [--attempts 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SENTENCES = [
    "Please help me check my account, I think somebody logged in from another city.",
    "My account was locked this morning and I cannot reach my files any more.",
    "I would like to confirm the last three payments made from this phone number.",
    "The weather is lovely today, so I took the train to see my parents.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"]


def speech(folder: Path, index: int, text: str, voice: str) -> np.ndarray:
    """espeak-ng speech as float32 at 16 kHz."""
    from ivr.sip.audio import read_wav

    raw, wav = folder / f"{index}.raw.wav", folder / f"{index}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    return read_wav(wav).samples.astype(np.float32)


def percentile(values: list[float], q: float) -> float:
    """q-th percentile in milliseconds, rounded."""
    return round(float(np.percentile(values, q)) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    """Run every section and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--attempts", type=int, default=30)
    args = parser.parse_args(argv)
    report_fd = os.dup(1)
    os.dup2(2, 1)  # library chatter goes to stderr; the JSON alone to stdout
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from datetime import UTC, datetime, timedelta

    from ivr.store.db import make_engine, migrate, sqlite_url
    from voiceprint.embedding import EmbedderOptions, load_embedder
    from voiceprint.replay import fingerprint, similarity
    from voiceprint.service import VoiceprintOptions, VoiceprintService
    from voiceprint.templates import MasterKey
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    started = time.perf_counter()
    model_dir = args.model_dir or build_tiny_ecapa()
    embedder = load_embedder(EmbedderOptions(model_dir=model_dir, device=args.device))
    with tempfile.TemporaryDirectory(prefix="bench-vp-") as tmp:
        folder = Path(tmp)
        clips = [speech(folder, i, SENTENCES[i % 4], VOICES[i // 4 % 4]) for i in range(16)]
        three_s = [c[:48000] if len(c) >= 48000 else np.pad(c, (0, 48000 - len(c)))
                   for c in clips]
        batch = [three_s[i % len(three_s)] for i in range(args.batch)]
        embedder.embed(batch[:2])  # warm-up
        t0 = time.perf_counter()
        for sample in batch:
            embedder.embed([sample])
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        embedder.embed(batch)
        batched_s = time.perf_counter() - t0

        engine = make_engine(sqlite_url(folder))
        migrate(engine)
        now = [datetime(2026, 11, 21, 9, 0, tzinfo=UTC)]
        service = VoiceprintService(engine, embedder, MasterKey.from_config("ab" * 32),
                                    VoiceprintOptions(min_enroll_speech_s=10.0),
                                    clock=lambda: now[0])
        for account in range(4):  # a cohort for the s-normalisation
            service.enroll(f"acct-{account}", clips[account * 4:account * 4 + 4], consent=True)
        totals: list[float] = []
        embeds: list[float] = []
        for attempt in range(args.attempts):
            now[0] += timedelta(minutes=5)  # never in a lockout wait
            noise = np.random.default_rng(attempt).normal(0, 0.003, 48000).astype(np.float32)
            sample = three_s[attempt % 4] + noise
            t0 = time.perf_counter()
            service.verify("acct-0", sample, call_id=f"c{attempt}", caller_number="13800210000",
                           challenge_expected="123456", challenge_heard="123456",
                           tier_results={"tier1": "passed"})
            totals.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            embedder.embed([sample])
            embeds.append(time.perf_counter() - t0)
        pcm = (three_s[0] * 32767).astype("<i2").tobytes()
        t0 = time.perf_counter()
        for _ in range(20):
            a = fingerprint(pcm)
        fp_s = (time.perf_counter() - t0) / 20
        b = fingerprint((three_s[1] * 32767).astype("<i2").tobytes())
        t0 = time.perf_counter()
        for _ in range(200):
            similarity(a, b)
        cmp_s = (time.perf_counter() - t0) / 200
    report = {
        "benchmark": "voiceprint", "python": platform.python_version(),
        "cpus": os.cpu_count(), "model": embedder.model_id, "device": embedder.device,
        "tiny_random_model": args.model_dir is None,
        "embedding": {"utterances": args.batch, "seconds_each": 3.0,
                      "one_at_a_time_s": round(single_s, 3), "batched_s": round(batched_s, 3),
                      "speed_up": round(single_s / batched_s, 2)},
        "verify": {"attempts": args.attempts, "p50_ms": percentile(totals, 50),
                   "p95_ms": percentile(totals, 95),
                   "embedding_share": round(statistics.median(embeds)
                                            / statistics.median(totals), 2)},
        "fingerprint": {"compute_ms": round(fp_s * 1000, 2),
                        "compare_ms": round(cmp_s * 1000, 3)},
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    with os.fdopen(report_fd, "w") as out:
        out.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
