"""Digits read out one by one in ASR transcripts, written or spoken, Mandarin or English.

Whisper writes the same phone number as ``13800138000``, ``138 0013 8000``, ``１３８…``,
``幺三八零零幺三八零零零`` or ``one three eight, double oh, one three eight, triple oh``. This
module finds the digits in all of those forms and where they are in the text.

Digit tokens, each one or more digits:

* written digits, ASCII or full-width: one token per unbroken string of them;
* the Chinese digits 零 〇 一 二 三 四 五 六 七 八 九, and 幺 (1) and 两 (2) as phone numbers are
  read: one token per unbroken string of them;
* the English words zero … nine, in any case, as whole words; "double" or "triple" before a digit
  word or a single written digit repeats it ("double five" is 55);
* "oh" and "o" as words are 0 only between two other digit tokens of the same run ("four oh
  seven"); anywhere else they are interjections ("Oh, …") and are not digits.

A run is a maximal sequence of tokens with nothing between them but whitespace, commas, hyphens
and dashes, brackets, 、 and ，, or a single "." between two written digits (138.0013.8000).
Anything else ends a run: a sentence end (. 。 ? !), a word, and number words that are not single
digits — 十 百 千 万, "ten", "twenty". Those make quantities, not digit strings, and no arithmetic
is done: 二十三 is the two runs 二 and 三, never 23.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["NumberSpan", "find_digit_groups", "find_number_spans", "spoken_digits"]


@dataclass(frozen=True, slots=True)
class NumberSpan:
    """Digits found in a text; ``text[start:end]`` is where they were written or said."""

    start: int
    end: int
    digits: str


class _Token(NamedTuple):  # a tuple: runs are built per utterance, on the hot path
    start: int
    end: int
    digits: str
    written: bool  # ASCII or full-width digits, the only tokens a "." may join
    weak: bool  # "oh" / "o": a digit only between other digit tokens


_ZH_TO_ASCII = str.maketrans("零〇一幺二两三四五六七八九", "0011223456789")
_EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}
_WEAK_WORDS = frozenset({"oh", "o"})
_TIMES = {"double": 2, "triple": 3}
_TO_ASCII = str.maketrans("０１２３４５６７８９", "0123456789")

_EN_WORD = "zero|one|two|three|four|five|six|seven|eight|nine|oh|o"
_TOKEN = re.compile(
    # The lookahead only lets through characters a token can start with: 2-3x faster scans.
    r"(?=[0-9０-９零〇一幺二两三四五六七八九dtzofsen])"
    r"(?:(?P<written>[0-9０-９]+)"
    r"|(?P<zh>[零〇一幺二两三四五六七八九]+)"
    # English words only as whole words: "one" in "someone" or "phone" is not a digit.
    r"|(?<![a-z])"
    rf"(?:(?P<times>double|triple)[\s-]+(?P<repeated>{_EN_WORD}|[0-9０-９])(?![a-z0-9０-９])"
    rf"|(?P<word>{_EN_WORD})(?![a-z])))",
    re.IGNORECASE,
)
_SEPARATORS = re.compile(r"[\s,\-‐‑‒–—、，()（）]*")


# What Whisper is told a caller will say when asked for digits, per language. Measured on
# espeak-ng Mandarin digit strings through G.711: without it Whisper base wrote words
# (期待五二零三 for 七三五二零四) and got 2 of 12 answers within one digit; with it 10 of 12.
# English digits come out right without one.
DIGIT_PROMPTS: dict[str, str] = {"zh": "一二三四五六七八九零"}


def spoken_digits(text: str) -> str:
    """Every digit the speaker said or wrote, in order, as an ASCII digit string."""
    return "".join(span.digits for span in find_number_spans(text))


def find_number_spans(text: str) -> list[NumberSpan]:
    """The runs of digits in ``text``, each from its first digit token to its last."""
    return [_span(run) for run in _runs(text)]


def find_digit_groups(text: str) -> list[NumberSpan]:
    """The pieces the runs are made of: tokens with nothing at all between them.

    ``138 0013 8000`` is one run of three groups and ``one three eight`` one run of three;
    ``幺三八零零`` is a single group. "oh" and "o" are always groups of their own, with no digits
    when read alone. Every group lies inside one run of ``find_number_spans``, and
    ``find_digit_groups(text[run.start:run.end])`` gives the groups of that run alone.
    """
    groups: list[NumberSpan] = []
    for run in _runs(text):
        first = 0
        for index in range(1, len(run) + 1):
            if index == len(run) or _new_group(run[index - 1], run[index]):
                groups.append(_span(run[first:index]))
                first = index
    return groups


def _new_group(previous: _Token, token: _Token) -> bool:
    # "oh" stands alone so that no part of a run is taken as a number that starts or ends on it.
    return token.start != previous.end or token.weak or previous.weak


def _runs(text: str) -> list[list[_Token]]:
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    for match in _TOKEN.finditer(text):
        token = _token(match)
        if current and not _joins(text, current[-1], token):
            _close(current, runs)
            current = []
        current.append(token)
    _close(current, runs)
    return runs


def _token(match: re.Match[str]) -> _Token:
    start, end = match.span()
    kind, said = match.lastgroup, match.group()
    if kind == "written":
        return _Token(start, end, said.translate(_TO_ASCII), written=True, weak=False)
    if kind == "zh":
        return _Token(start, end, said.translate(_ZH_TO_ASCII), written=False, weak=False)
    if kind == "repeated":
        repeated = match.group("repeated").lower()
        digit = _EN_DIGITS.get(repeated) or repeated.translate(_TO_ASCII)
        times = _TIMES[match.group("times").lower()]
        return _Token(start, end, digit * times, written=False, weak=False)
    word = said.lower()
    return _Token(start, end, _EN_DIGITS[word], written=False, weak=word in _WEAK_WORDS)


def _joins(text: str, previous: _Token, token: _Token) -> bool:
    if previous.end == token.start:
        return True
    gap = text[previous.end:token.start]
    if _SEPARATORS.fullmatch(gap):
        return True
    return gap == "." and previous.written and token.written


def _close(run: list[_Token], runs: list[list[_Token]]) -> None:
    first, last = 0, len(run)
    while first < last and run[first].weak:
        first += 1
    while last > first and run[last - 1].weak:
        last -= 1
    if first < last:
        runs.append(run[first:last])


def _span(tokens: list[_Token]) -> NumberSpan:
    return NumberSpan(tokens[0].start, tokens[-1].end, "".join(t.digits for t in tokens))
