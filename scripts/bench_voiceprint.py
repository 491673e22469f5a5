#!/usr/bin/env python3
"""Benchmark tier 2 (voiceprints) with the shipped model; prints one JSON object on stdout.

Audio: flite's four voices reading sentences and espeak-ng reading random six-digit
challenges (16 kHz). Sections:

* ``embedding``: ``--batch`` utterances of 3 s embedded one call each versus in one batched call,
  side by side in the same run, and the time per 3 s utterance.
* ``verify``: one whole ``VoiceprintService.verify`` (lockout read, sample checks, replay check,
  embedding, scoring, two audit appends on SQLite), p50/p95 over ``--attempts`` attempts, with
  the share spent embedding.
* ``replay``: verify latency when the account already has 10, 1,000 and 10,000 earlier
  fingerprints (``--history``), through the key index, next to the full comparison with every
  earlier print that the index replaced (same prints, same run), and whether replays of the
  account's three oldest attempts (through sox G.711 at 20-30 dB SNR) are still caught. Earlier
  prints are splices of two different espeak-ng challenges: no two are alike, but espeak-ng
  speaks each digit word identically every time, so they share far more exact audio than a
  person's calls would (a hard case for the index).
* ``fingerprint``: computing one replay fingerprint and comparing it with one earlier print.

Model: the shipped d-vector encoder (``--model dvector``, installed by make setup), or an ECAPA
folder (``--model ecapa --model-dir DIR``); ``--device cuda`` on a GPU machine.

Usage: .venv/bin/python scripts/bench_voiceprint.py [--model dvector|ecapa] [--model-dir DIR]
       [--device cpu|cuda|auto] [--batch 16] [--attempts 30] [--history 10,1000,10000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SENTENCES = [
    "Please help me check my account, I think somebody logged in from another city.",
    "My account was locked this morning and I cannot reach my files any more.",
    "I would like to confirm the last three payments made from this phone number.",
    "The weather is lovely today, so I took the train to see my parents.",
]
VOICES = ["kal", "awb", "rms", "slt"]
ESPEAK = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"]
WORDS = "zero one two three four five six seven eight nine".split()


def _to_16k(raw: Path, wav: Path) -> np.ndarray:
    from ivr.sip.audio import read_wav

    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    return read_wav(wav).samples.astype(np.float32)


def flite(folder: Path, name: str, text: str, voice: str) -> np.ndarray:
    raw = folder / f"{name}.raw.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
    return _to_16k(raw, folder / f"{name}.wav")


def espeak(folder: Path, name: str, text: str, voice: str) -> np.ndarray:
    raw = folder / f"{name}.raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    return _to_16k(raw, folder / f"{name}.wav")


def percentile(values: list[float], q: float) -> float:
    """q-th percentile in milliseconds, rounded."""
    return round(float(np.percentile(values, q)) * 1000, 2)


def _pcm(audio: np.ndarray) -> bytes:
    pcm: bytes = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def _challenges(folder: Path, count: int, rng: random.Random) -> list[np.ndarray]:
    return [espeak(folder, f"ch{i}", ", ".join(rng.choice(WORDS) for _ in range(6)),
                   ESPEAK[i % len(ESPEAK)]) for i in range(count)]


def _history_prints(clips: list[np.ndarray], count: int, rng: random.Random) -> list[bytes]:
    """``count`` distinct fingerprints: 1.5 s of one challenge spliced to 1.5 s of another."""
    from voiceprint.replay import fingerprint

    out = []
    half = 24_000
    for _ in range(count):
        a, b = rng.sample(clips, 2)
        start_a = rng.randrange(0, max(1, len(a) - half))
        start_b = rng.randrange(0, max(1, len(b) - half))
        audio = np.concatenate([a[start_a:start_a + half], b[start_b:start_b + half]])
        out.append(fingerprint(_pcm(audio * rng.uniform(0.5, 1.0))).data)
    return out


def _fill_history(service: Any, account: str, prints: list[bytes]) -> None:
    """Store prints and their keys as verify would have, in bulk."""
    from datetime import UTC, datetime

    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from voiceprint.replay import Fingerprint, index_keys
    from voiceprint.store import FingerprintRow, PrintKeyRow

    at = datetime(2026, 1, 1, tzinfo=UTC)
    with Session(service.engine) as session, session.begin():
        rows = [FingerprintRow(account_id=account, source="attempt", data=data, created_at=at)
                for data in prints]
        session.add_all(rows)
        session.flush()
        keys = []
        for row in rows:
            k, f = index_keys(Fingerprint(row.data))
            keys += [{"fingerprint_id": row.id, "key": key, "frame": frame,
                      "account_id": account} for key, frame in zip(k.tolist(), f.tolist(),
                                                                   strict=True)]
        for start in range(0, len(keys), 200_000):
            session.execute(insert(PrintKeyRow), keys[start:start + 200_000])


def phone_copy(folder: Path, audio: np.ndarray, gain: float, snr_db: float, seed: int) -> bytes:
    """``audio`` replayed into a phone: gain, 8 kHz mu-law and back (sox), line noise."""
    import wave

    src, ulaw, back = (folder / f"copy-{seed}{suffix}.wav" for suffix in ("", "-u", "-b"))
    with wave.open(str(src), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(_pcm(audio))
    subprocess.run(["sox", "-V1", str(src), "-r", "8000", "-e", "u-law", str(ulaw), "vol",
                    str(gain)], check=True)
    subprocess.run(["sox", "-V1", str(ulaw), "-r", "16000", "-e", "signed", "-b", "16",
                    str(back)], check=True)
    with wave.open(str(back), "rb") as heard:
        samples = np.frombuffer(heard.readframes(heard.getnframes()), "<i2").astype(float)
    noise = np.random.default_rng(seed).normal(
        0, np.sqrt(np.mean(samples**2) / 10 ** (snr_db / 10)), samples.size)
    return bytes(np.clip(samples + noise, -32768, 32767).astype("<i2").tobytes())


def load_model(args: argparse.Namespace) -> Any:
    if args.model == "dvector":
        from voiceprint import dvector

        return dvector.load_dvector(args.model_dir or dvector.install(), args.device)
    from voiceprint.embedding import EmbedderOptions, load_embedder

    if args.model_dir is None:
        raise SystemExit("bench_voiceprint: --model ecapa needs --model-dir")
    return load_embedder(EmbedderOptions(model_dir=args.model_dir, device=args.device))


def main(argv: list[str] | None = None) -> int:
    """Run every section and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("dvector", "ecapa"), default="dvector")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--history", type=lambda t: [int(x) for x in t.split(",")],
                        default=[10, 1000, 10000])
    args = parser.parse_args(argv)
    report_fd = os.dup(1)
    os.dup2(2, 1)  # library chatter goes to stderr; the JSON alone to stdout
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from datetime import UTC, datetime, timedelta

    import voiceprint.service as service_module
    from ivr.store.db import make_engine, migrate, sqlite_url
    from voiceprint.replay import Fingerprint, fingerprint, is_replay, similarity
    from voiceprint.service import VoiceprintOptions, VoiceprintService
    from voiceprint.templates import MasterKey

    started = time.perf_counter()
    rng = random.Random(7)
    embedder = load_model(args)
    with tempfile.TemporaryDirectory(prefix="bench-vp-") as tmp:
        folder = Path(tmp)
        clips = [flite(folder, f"s{i}", SENTENCES[i % 4], VOICES[i // 4 % 4]) for i in range(16)]
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

        challenges = _challenges(folder, 48, rng)
        engine = make_engine(sqlite_url(folder))
        migrate(engine)
        now = [datetime(2026, 11, 21, 9, 0, tzinfo=UTC)]
        service = VoiceprintService(engine, embedder, MasterKey.from_config("ab" * 32),
                                    VoiceprintOptions(min_enroll_speech_s=8.0),
                                    clock=lambda: now[0])
        for index in range(4):
            service.enroll(f"acct-{index}", clips[index * 4:index * 4 + 3], consent=True)

        def verify(account: str, sample: np.ndarray) -> float:
            now[0] += timedelta(minutes=5)  # never in a lockout wait
            t0 = time.perf_counter()
            service.verify(account, sample, call_id="c", caller_number="13800210000",
                           challenge_expected="123456", challenge_heard="123456",
                           tier_results={"tier1": "passed"})
            return time.perf_counter() - t0

        totals: list[float] = []
        embeds: list[float] = []
        for attempt in range(args.attempts):
            sample = challenges[attempt % len(challenges)]
            totals.append(verify("acct-0", sample))
            t0 = time.perf_counter()
            embedder.embed([sample])
            embeds.append(time.perf_counter() - t0)

        replay: list[dict[str, Any]] = []
        pool = challenges[:40]
        fresh = challenges[40:]
        for size in args.history:
            account = f"hist-{size}"
            oldest = fresh[:3]  # the account's first attempts: the oldest prints of all
            _fill_history(service, account, [fingerprint(_pcm(a)).data for a in oldest])
            prints = _history_prints(pool, size, rng)
            _fill_history(service, account, prints)
            service.enroll(account, clips[12:15], consent=True)
            indexed = [verify(account, fresh[i % len(fresh)]) for i in range(5)]
            earlier = [Fingerprint(p) for p in prints]
            full: list[float] = []
            for i in range(2 if size >= 10_000 else 5):
                candidate = fingerprint(_pcm(fresh[i % len(fresh)]))
                t0 = time.perf_counter()
                is_replay(candidate, earlier)
                full.append(time.perf_counter() - t0)
            compared: list[int] = []
            real = getattr(service_module, "is_replay")  # noqa: B009 - patched below

            def counting(candidate: Any, earlier: Any, threshold: float,
                         compared: list[int] = compared, real: Any = real) -> Any:
                earlier = list(earlier)
                compared.append(len(earlier))
                return real(candidate, earlier, threshold)

            setattr(service_module, "is_replay", counting)  # noqa: B010
            try:
                verify(account, fresh[0])
            finally:
                setattr(service_module, "is_replay", real)  # noqa: B010
            caught = 0
            for n, original in enumerate(oldest):  # replays of the oldest, through a phone
                for gain, snr in ((0.6, 30.0), (1.4, 25.0), (0.6, 20.0)):
                    copy = Fingerprint(fingerprint(phone_copy(folder, original, gain, snr,
                                                              n * 100 + int(snr))).data)
                    caught += is_replay(copy, service._replay_candidates(account, copy))[0]
            replay.append({"earlier_prints": size, "oldest_replays_caught": f"{caught}/9",
                           "verify_p50_ms": percentile(indexed, 50),
                           "verify_max_ms": round(max(indexed) * 1000, 2),
                           "compared_in_full": compared[-1],
                           "full_scan_ms": round(statistics.median(full) * 1000, 1)})

        pcm = _pcm(three_s[0])
        t0 = time.perf_counter()
        for _ in range(20):
            a = fingerprint(pcm)
        fp_s = (time.perf_counter() - t0) / 20
        b = fingerprint(_pcm(three_s[1]))
        t0 = time.perf_counter()
        for _ in range(200):
            similarity(a, b)
        cmp_s = (time.perf_counter() - t0) / 200
    report = {
        "benchmark": "voiceprint", "python": platform.python_version(),
        "cpus": os.cpu_count(), "model": embedder.model_id, "device": embedder.device,
        "embedding": {"utterances": args.batch, "seconds_each": 3.0,
                      "one_at_a_time_s": round(single_s, 3), "batched_s": round(batched_s, 3),
                      "per_utterance_ms": round(single_s / args.batch * 1000, 1),
                      "speed_up": round(single_s / batched_s, 2)},
        "verify": {"attempts": args.attempts, "p50_ms": percentile(totals, 50),
                   "p95_ms": percentile(totals, 95),
                   "embedding_share": round(statistics.median(embeds)
                                            / statistics.median(totals), 2)},
        "replay": replay,
        "fingerprint": {"compute_ms": round(fp_s * 1000, 2),
                        "compare_ms": round(cmp_s * 1000, 3)},
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    with os.fdopen(report_fd, "w") as out:
        out.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
