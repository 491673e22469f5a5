#!/usr/bin/env python3
"""Spoken-intent accuracy through real calls: ``ivr call --play`` into a running hotline.

Starts ``ivr serve --with-asterisk`` with the shipped defaults (as ``make run`` does) in a
temporary data folder, unless ``--api`` names a service that is already running, then places one
real SIP call per spoken request (tests/data/spoken_requests.yaml, voices and line noise from
asr/testing/speech.py) with the ``ivr call`` command a person would use, and reads the intent
the service decided from its answer. No keys are pressed.

Usage: .venv/bin/python scripts/eval_spoken_calls.py [--per-intent 4] [--wait 6]
Prints one JSON object: accuracy by language and intent, confusions, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.testing.speech import SpokenRequest, build_set, cache_root  # noqa: E402

IVR = [sys.executable, "-m", "ivr.cli"]
NUMBERS = {"zh": "01012345678", "en": "02012345678"}


def choose(items: list[SpokenRequest], per_intent: int) -> list[SpokenRequest]:
    """``per_intent`` requests of each intent and language, spread over the voices."""
    chosen: list[SpokenRequest] = []
    for language in ("zh", "en"):
        for intent in dict.fromkeys(i.intent for i in items):
            mine = [i for i in items if i.language == language and i.intent == intent]
            step = max(1, len(mine) // per_intent)
            chosen += mine[::step][:per_intent]
    return chosen


def start_service(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """``ivr serve --with-asterisk`` on ``port``; waits for /ready."""
    env = {**os.environ, "IVR_DATA_DIR": str(data_dir), "IVR_API_PORT": str(port)}
    log = (data_dir / "serve.log").open("ab")
    proc = subprocess.Popen([*IVR, "serve", "--with-asterisk"], env=env, stdout=log, stderr=log)
    api = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/ready", timeout=2).status_code == 200:
                return proc, api
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"ivr serve exited ({proc.returncode}); see {data_dir}/serve.log")
        time.sleep(0.5)
    raise SystemExit("ivr serve did not become ready in 120 s")


def place_call(item: SpokenRequest, folder: Path, wav16k: Path, wait_s: float,
               env: dict[str, str]) -> dict[str, Any]:
    """One ``ivr call --play`` with the request; its JSON answer."""
    subprocess.run(["sox", str(folder / item.wav), "-r", "16000", str(wav16k)], check=True)
    proc = subprocess.run([*IVR, "call", "--from", NUMBERS[item.language], "--play",
                           str(wav16k), "--wait", str(wait_s), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    try:
        answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        answer = {"error": proc.stderr.strip()[-300:]}
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-intent", type=int, default=4)
    parser.add_argument("--wait", type=float, default=6.0, help="seconds on the line after")
    parser.add_argument("--port", type=int, default=8097)
    args = parser.parse_args()
    folder = cache_root() / "spoken-requests"
    items = choose(build_set(ROOT / "tests" / "data" / "spoken_requests.yaml", folder),
                   args.per_intent)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        proc, _api = start_service(Path(tmp), args.port)
        env = {**os.environ, "IVR_DATA_DIR": str(tmp), "IVR_API_PORT": str(args.port)}
        results = []
        try:
            for n, item in enumerate(items):
                answer = place_call(item, folder, Path(tmp) / "request.wav", args.wait, env)
                # No intent on the record: the service never decided one (it asked again, the
                # caller hung up), which is the right outcome for an off-topic request.
                results.append((item, answer.get("intent") or "unknown"))
                print(f"eval: {n + 1}/{len(items)} {item.intent} -> {results[-1][1]}",
                      file=sys.stderr, flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    report: dict[str, Any] = {"calls": len(results), "per_intent": args.per_intent,
                              "wait_s": args.wait, "accuracy": {}, "by_intent": {},
                              "confusions": {}}
    for language in ("zh", "en"):
        mine = [(i, got) for i, got in results if i.language == language]
        report["accuracy"][language] = round(
            sum(i.intent == got for i, got in mine) / max(1, len(mine)), 3)
        report["by_intent"][language] = {
            intent: f"{sum(got == intent for i, got in mine if i.intent == intent)}/"
                    f"{sum(i.intent == intent for i, _ in mine)}"
            for intent in dict.fromkeys(i.intent for i, _ in mine)}
        report["confusions"][language] = dict(Counter(
            f"{i.intent}->{got}" for i, got in mine if i.intent != got).most_common(10))
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
