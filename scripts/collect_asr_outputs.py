#!/usr/bin/env python3
"""Speak the intent training phrases through the phone line and keep what Whisper heard.

Every phrase of ``asr/intent/data/train.yaml`` is spoken (asr.testing.speech: flite/espeak-ng
voices, speeds, line noise, G.711), transcribed by the default model with the service's own
settings, and written with its label to ``asr/intent/data/asr_outputs.yaml``. The classifier
trains on both files, so it learns the errors this model really makes (homophones, toneless
near-misses, Traditional characters before conversion). The evaluation set
(tests/data/spoken_requests.yaml) is never used here.

Usage: .venv/bin/python scripts/collect_asr_outputs.py [--model-dir DIR] [--out FILE]
Prints one JSON object (counts, seconds) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr import default_model  # noqa: E402
from asr.engine import Transcript, load_engine  # noqa: E402
from asr.testing.speech import SpokenRequest, build_set, read_wav_16k  # noqa: E402
from ivr.service import engine_options  # noqa: E402
from ivr.settings import AsrSettings  # noqa: E402

HEADER = """\
# What the default Whisper (base, CPU int8) heard when the phrases of train.yaml were spoken
# over a telephone line (scripts/collect_asr_outputs.py; voices, speeds and noise from
# asr/testing/speech.py). Training data for the intent classifier, written by that script:
# regenerate rather than edit. Shape as in train.yaml.
"""


async def collect(model_dir: Path, set_dir: Path, passes: int
                  ) -> tuple[dict[str, dict[str, list[str]]], int]:
    """ASR outputs of the spoken training phrases, by intent and language; each pass speaks
    every phrase with another voice, speed and noise level."""
    items = [item for rotation in range(passes) for item in build_set(
        ROOT / "asr" / "intent" / "data" / "train.yaml", set_dir / str(rotation), rotation)]
    folders = [set_dir / str(rotation) for rotation in range(passes)
               for _ in range(len(items) // passes)]
    engine = load_engine(engine_options(AsrSettings.model_validate({}), model_dir))
    heard: dict[str, dict[str, list[str]]] = {}
    slots = asyncio.Semaphore(8)  # a few callers at once: batched, and under the queue bound

    async def one(n: int, item: SpokenRequest) -> Transcript:
        async with slots:
            transcript = await engine.transcribe(read_wav_16k(folders[n] / item.wav),
                                                 call_id=str(n), language=item.language)
        if n % 50 == 0:
            print(f"collect: {n}/{len(items)}", file=sys.stderr, flush=True)
        return transcript

    try:
        results = await asyncio.gather(*(one(n, item) for n, item in enumerate(items)))
    finally:
        await engine.aclose()
    for item, transcript in zip(items, results, strict=True):
        text = transcript.text.strip()
        if transcript.dropped or not text:
            continue
        bucket = heard.setdefault(item.intent, {}).setdefault(item.language, [])
        if text not in bucket:
            bucket.append(text)
    return heard, len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--passes", type=int, default=3,
                        help="times each phrase is spoken, each time by another voice")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "asr" / "intent" / "data" / "asr_outputs.yaml")
    args = parser.parse_args()
    model_dir = args.model_dir or default_model.install()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        heard, spoken = asyncio.run(collect(model_dir, Path(tmp), args.passes))
    body = yaml.safe_dump(heard, allow_unicode=True, sort_keys=False, width=200)
    args.out.write_text(HEADER + "\n" + body, encoding="utf-8")
    kept = sum(len(texts) for by_language in heard.values() for texts in by_language.values())
    print(json.dumps({"spoken": spoken, "kept": kept, "model": model_dir.name,
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
