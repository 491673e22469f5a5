"""Personal data masked in transcripts before supervisors read them.

Every run of digits (``asr.numbers.find_number_spans``: written, spoken in Mandarin or English)
is classified by its digit string, first rule that matches:

1. ``[ID]`` resident identity number (GB 11643-1999): 17 digits and a check character valid
   under ISO 7064 MOD 11-2. The check character may be a digit of the run, or an X / x / 叉
   just after 17 digits (``11010519491231002X``, ``…零零二叉``).
2. ``[PHONE]`` mobile number after +86, 86 or 0086. Checked before cards because bank cards
   (UnionPay 62, Visa 4, Mastercard 5, Amex and JCB 3) never start with 86 or 00, while such a
   run passes the Luhn check one time in ten. A ``+`` directly before the run is masked with it.
3. ``[CARD]`` bank card: 13 to 19 digits passing the Luhn check.
4. ``[PHONE]`` mobile number (1[3-9] and 9 digits, optionally after a trunk 0) or landline: 0,
   an area code (10 or 2x, or three digits from 3xx to 9xx) and a 7 or 8 digit subscriber number.
5. ``[CODE]`` security or one-time code: 3 to 8 digits starting at most ``CODE_WINDOW_CHARS``
   characters after a keyword (验证码, 密码, CVV, "code", "pin", …), with no other number
   (3 digits or more, or something already masked) in between.

A run that matches nothing as a whole is searched for the longest classifiable stretch of
whole groups (``asr.numbers.find_digit_groups``), leftmost first, so that a number the ASR ran
into the next word stays masked: in ``13800138000，一会儿`` the run is ``13800138000，一`` and
``13800138000`` is the phone. This may mask a few characters too many (a code absorbs a
following 一), never too few. What matches nothing is left exactly as it was, and so is all
text outside the masked spans. ``redact`` is idempotent: masks are never taken for keywords.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from asr.numbers import NumberSpan, find_digit_groups, find_number_spans, spoken_digits

__all__ = [
    "CARD", "CODE", "CODE_WINDOW_CHARS", "ID", "PHONE", "Finding", "redact", "redact_with_findings",
]

PHONE, ID, CARD, CODE = "PHONE", "ID", "CARD", "CODE"
# How far after its keyword a code may start: "验证码是…" or "the code is …".
CODE_WINDOW_CHARS = 12
_SHORTEST_NUMBER = 3  # a card security code
_LONGEST_NUMBER = 19  # a card; bounds the search for numbers inside a longer run

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_X_AFTER = re.compile(r"[ \t,，、\-]*[XxＸｘ叉](?![A-Za-z])")
_PREFIXED_MOBILE = re.compile(r"(?:0086|86)1[3-9]\d{9}")
_PHONE = re.compile(r"0?1[3-9]\d{9}|0(?:10|2\d)\d{7,8}|0[3-9]\d{2}\d{7,8}")
_KEYWORD = re.compile(
    r"验证码|校验码|动态码|安全码|安全代码|密码|后三位|背面"
    # "[" so that a mask like "[CODE]" is never read as the keyword "code".
    r"|(?<![A-Za-z\[])(?:cvv|cvn|cvc|(?:security |verification )?codes?|pin|passcode|password"
    r"|one-time)(?![A-Za-z])",
    re.IGNORECASE,
)
_MASK = re.compile(r"\[(?:PHONE|ID|CARD|CODE)\]")


@dataclass(frozen=True, slots=True)
class Finding:
    """One masked stretch: its kind (PHONE, ID, CARD, CODE) and offsets in the original text."""

    kind: str
    start: int
    end: int


def redact(text: str) -> str:
    """``text`` with phone, ID and card numbers and codes replaced by ``[PHONE]`` etc."""
    return redact_with_findings(text)[0]


def redact_with_findings(text: str) -> tuple[str, list[Finding]]:
    """The redacted text and what was masked, with offsets into ``text``."""
    runs = find_number_spans(text)
    if not runs:
        return text, []
    context = _Context(text)
    findings: list[Finding] = []
    for run in runs:
        if len(run.digits) < _SHORTEST_NUMBER:
            continue  # "三张", "2 questions": too short for any rule, and so is every part
        finding = context.classify(run.start, run.end, run.digits)
        if finding is not None:
            findings.append(finding)
        else:
            findings.extend(context.search_inside(run))
    return _masked(text, findings), findings


class _Context:
    """One text being redacted; its keywords are looked for only when a code rule needs them."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def keyword_ends(self) -> list[int]:
        return [match.end() for match in _KEYWORD.finditer(self.text)]

    def classify(self, start: int, end: int, digits: str) -> Finding | None:
        """The kind of the digits at ``text[start:end]``, or None to keep them."""
        if len(digits) == 17 and _id_check(digits) == "X":
            check = _ID_X_AFTER.match(self.text, end)
            if check is not None:
                return Finding(ID, start, check.end())
        if len(digits) == 18 and _id_check(digits[:17]) == digits[17]:
            return Finding(ID, start, end)
        if _PREFIXED_MOBILE.fullmatch(digits):
            plus = start > 0 and self.text[start - 1] == "+"
            return Finding(PHONE, start - 1 if plus else start, end)
        if 13 <= len(digits) <= _LONGEST_NUMBER and _luhn_valid(digits):
            return Finding(CARD, start, end)
        if _PHONE.fullmatch(digits):
            return Finding(PHONE, start, end)
        if _SHORTEST_NUMBER <= len(digits) <= 8 and self._follows_keyword(start):
            return Finding(CODE, start, end)
        return None

    def search_inside(self, run: NumberSpan) -> list[Finding]:
        """Numbers made of whole groups of a run that is no number as a whole."""
        pieces = [
            NumberSpan(run.start + group.start, run.start + group.end, group.digits)
            for group in find_digit_groups(self.text[run.start:run.end])
        ]
        if len(pieces) < 2:
            return []  # a single group is the run itself
        # A number does not start or end on a piece with no digits of its own ("oh").
        edges = [bool(spoken_digits(self.text[p.start:p.end])) for p in pieces]
        found: list[Finding] = []
        first = 0
        while first < len(pieces):
            finding, after = self._longest_from(pieces, edges, first)
            if finding is None:
                first += 1
            else:
                found.append(finding)
                first = after
        return found

    def _longest_from(
        self, pieces: list[NumberSpan], edges: list[bool], first: int,
    ) -> tuple[Finding | None, int]:
        if not edges[first]:
            return None, first
        count, total = 0, 0
        for piece in pieces[first:]:
            total += len(piece.digits)
            if total > _LONGEST_NUMBER:
                break
            count += 1
        for after in range(first + count, first, -1):
            if (first == 0 and after == len(pieces)) or not edges[after - 1]:
                continue  # the whole run, already classified; or ending on "oh"
            digits = "".join(piece.digits for piece in pieces[first:after])
            finding = self.classify(pieces[first].start, pieces[after - 1].end, digits)
            if finding is not None:
                return finding, after
        return None, first

    def _follows_keyword(self, start: int) -> bool:
        for keyword_end in self.keyword_ends:
            if keyword_end > start:
                break
            gap = self.text[keyword_end:start]
            if (len(gap) <= CODE_WINDOW_CHARS and not _MASK.search(gap)
                    and len(spoken_digits(gap)) < _SHORTEST_NUMBER):
                return True
        return False


def _id_check(first17: str) -> str:
    """The check character a resident ID with these 17 digits must end with."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _masked(text: str, findings: list[Finding]) -> str:
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position:finding.start])
        parts.append(f"[{finding.kind}]")
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)
