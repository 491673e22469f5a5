#!/usr/bin/env python3
"""Build the tiny random-weight Whisper (CTranslate2 format) that tests load offline.

Usage: scripts/make_test_models.py [--out DIR] [--force]
Default folder: ~/.cache/ivr/models/whisper-tiny-random-<recipe> (instant when already built).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.testing.tiny_models import (  # noqa: E402  (needs the repo root on sys.path first)
    RECIPE,
    TinyModelUnavailable,
    build_tiny_whisper,
    default_model_dir,
)


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the model and print its folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {default_model_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        folder = build_tiny_whisper(args.out, force=args.force)
    except TinyModelUnavailable as exc:
        print(f"make_test_models: {exc}", file=sys.stderr)
        return 2
    print(f"{folder}  (recipe {RECIPE}, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
