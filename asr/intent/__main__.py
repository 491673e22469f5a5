"""``python -m asr.intent``: one utterance per line on stdin, one JSON object per line out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import BinaryIO

from asr.intent.classifier import DEFAULT_THRESHOLD, IntentClassifier


def run(source: BinaryIO, sink: BinaryIO, threshold: float) -> None:
    """Classify each non-blank line of ``source`` and write its JSON result to ``sink``."""
    classifier = IntentClassifier.default()
    for raw in source:
        # Bytes that are not UTF-8 become U+FFFD rather than stopping the stream.
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text.strip():
            continue
        result = classifier.classify(text, threshold)
        line = {"text": text, "intent": result.intent, "confidence": round(result.confidence, 4)}
        sink.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        sink.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m asr.intent", description=__doc__)
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="below this confidence the intent is 'unknown' (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        run(sys.stdin.buffer, sys.stdout.buffer, args.threshold)
    except BrokenPipeError:
        return 0  # the reader went away; nothing left to tell it
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
