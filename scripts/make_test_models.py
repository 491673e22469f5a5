#!/usr/bin/env python3
"""Build the tiny random-weight models that tests load offline, in the real models' layouts.

    whisper  CTranslate2 Whisper (faster-whisper's format) with the real multilingual tokenizer
    ecapa    SpeechBrain ECAPA-TDNN in the layout of speechbrain/spkrec-ecapa-voxceleb
             (hyperparams.yaml + embedding_model.ckpt; EncoderClassifier.from_hparams loads it)

Usage: scripts/make_test_models.py [--kind whisper|ecapa|all] [--out DIR] [--force]
Default folders: ~/.cache/ivr/models/<kind>-tiny-random-<recipe> (instant when already built).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.testing import tiny_models  # noqa: E402  (needs the repo root on sys.path first)
from voiceprint.testing import tiny_ecapa  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the models and print their folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("whisper", "ecapa", "all"), default="all")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (only with a single --kind)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    if args.out is not None and args.kind == "all":
        parser.error("--out needs --kind whisper or --kind ecapa")
    if args.kind in ("whisper", "all"):
        started = time.monotonic()
        try:
            folder = tiny_models.build_tiny_whisper(args.out, force=args.force)
        except tiny_models.TinyModelUnavailable as exc:
            print(f"make_test_models: {exc}", file=sys.stderr)
            return 2
        print(f"whisper {folder}  (recipe {tiny_models.RECIPE}, "
              f"{time.monotonic() - started:.1f} s)")
    if args.kind in ("ecapa", "all"):
        started = time.monotonic()
        target = args.out or tiny_ecapa.default_model_dir()
        if args.force and target.exists():
            shutil.rmtree(target)
        folder = tiny_ecapa.build_tiny_ecapa(target)
        print(f"ecapa {folder}  (recipe {tiny_ecapa.RECIPE}, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
