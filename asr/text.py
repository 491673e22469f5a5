"""Transcript text clean-up shared by the engine: Simplified Chinese and prompt echoes.

Whisper base writes Mandarin in a mix of Simplified and Traditional characters (那個, 處理);
everything downstream (intent, storage, redaction, the console) expects Simplified, so every
Chinese transcript goes through OpenCC's ``t2s`` conversion first.

When the audio is unintelligible, Whisper tends to repeat the initial prompt it was given
(the domain vocabulary); :func:`echoes_prompt` recognises such outputs so they can be dropped.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache
from typing import Any

_CONVERTER_LOCK = threading.Lock()
_SEPARATORS = re.compile(r"[\s\W_]+", re.UNICODE)


@lru_cache(maxsize=1)
def _t2s() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """``text`` with Traditional Chinese characters converted to Simplified (OpenCC t2s)."""
    if not text or text.isascii():
        return text
    with _CONVERTER_LOCK:  # one converter object shared by the decoding and API threads
        return str(_t2s().convert(text))


def _pieces(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [piece for piece in _SEPARATORS.split(folded) if piece]


def echoes_prompt(text: str, prompt: str | None, min_chars: int = 4) -> bool:
    """True when ``text`` is only pieces of ``prompt`` (Whisper repeating its prompt).

    A piece is a run between punctuation; each must occur in the prompt, and the pieces must
    cover at least ``min_chars`` characters, so that a short genuine answer that happens to be
    one prompt word ("账单") is kept.
    """
    if not prompt or not text.strip():
        return False
    pieces = _pieces(text)
    haystack = "".join(_pieces(prompt))
    if not pieces or sum(len(piece) for piece in pieces) < min_chars:
        return False
    return all(piece in haystack for piece in pieces)
