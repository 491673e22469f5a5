"""Digits read out in ASR transcripts: written, spoken in Mandarin or English, and mixed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asr.numbers import NumberSpan, find_digit_groups, find_number_spans, spoken_digits

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "digits"), [
    ("四 七 二 九 一 五", "472915"),
    ("幺三八，零零一三。", "1380013"),
    ("four, seven two-nine one five.", "472915"),
    ("My code is 47 29 15", "472915"),
    ("double five six", "556"),
    ("Triple 0 then DOUBLE nine", "00099"),
    ("１３８ ００１３", "1380013"),
    ("〇两两幺", "0221"),
    ("four oh seven", "407"),
    ("one o o seven", "1007"),
    ("Oh, one three eight", "138"),  # an interjection, not a zero
    ("one two oh", "12"),  # "oh" only between digit tokens
    ("oh", ""),
    ("one three eight, double oh, one three eight, triple oh.", "13800138000"),
    ("二十三", "23"),  # 十 ends a run; no arithmetic
    ("someone phoned about the tonehenge", ""),  # digit words inside other words
    ("ten twenty forty", ""),
    ("No numbers here.", ""),
    ("", ""),
])
def test_spoken_digits(text: str, digits: str) -> None:
    assert spoken_digits(text) == digits


@pytest.mark.parametrize(("text", "runs"), [
    ("四 七 二 九 一 五", [("四 七 二 九 一 五", "472915")]),
    ("幺三八，零零一三。", [("幺三八，零零一三", "1380013")]),
    ("My code is 47 29 15.", [("47 29 15", "472915")]),
    ("four, seven two-nine one five.", [("four, seven two-nine one five", "472915")]),
    ("call 010-1234 5678 now", [("010-1234 5678", "01012345678")]),
    ("(010) 12345678", [("010) 12345678", "01012345678")]),
    ("138.0013.8000. Next", [("138.0013.8000", "13800138000")]),
    ("138. 0013", [("138", "138"), ("0013", "0013")]),  # ". " ends a sentence
    ("138 零零 one three", [("138 零零 one three", "1380013")]),
    ("Oh, one three eight oh.", [("one three eight", "138")]),
    ("double five six", [("double five six", "556")]),
    ("二十三号", [("二", "2"), ("三", "3")]),
    ("我要三张，两个人", [("三", "3"), ("两", "2")]),
    ("13800138000。一会儿", [("13800138000", "13800138000"), ("一", "1")]),
    ("13800138000，一会儿", [("13800138000，一", "138001380001")]),
    ("11010519491231002X", [("11010519491231002", "11010519491231002")]),
    ("Room 12B, floor 3", [("12", "12"), ("3", "3")]),
    ("nothing to see", []),
])
def test_find_number_spans(text: str, runs: list[tuple[str, str]]) -> None:
    spans = find_number_spans(text)
    assert [(text[s.start:s.end], s.digits) for s in spans] == runs


def test_number_span_is_a_frozen_value() -> None:
    span = NumberSpan(1, 4, "123")
    assert span == NumberSpan(1, 4, "123")
    with pytest.raises(AttributeError):
        span.digits = "456"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "groups"), [
    ("138 0013 8000", ["138", "0013", "8000"]),
    ("幺三八零零幺三八零零零", ["幺三八零零幺三八零零零"]),
    ("one three eight", ["one", "three", "eight"]),
    ("double five six", ["double five", "six"]),
    ("138零零 one", ["138零零", "one"]),
    ("four oh seven", ["four", "oh", "seven"]),
    ("8oh0", ["8", "oh", "0"]),
])
def test_find_digit_groups(text: str, groups: list[str]) -> None:
    assert [text[g.start:g.end] for g in find_digit_groups(text)] == groups


_PIECES = st.sampled_from([
    "0", "1", "38", "０", "９", "零", "一", "幺", "两", "九", "十", "one", "Two", "oh", "o", "O",
    "double", "triple", "zero", "nine", "ten", " ", ", ", "-", "，", "、", ".", "。", "(", ")",
    "a", "x", "someone", "的", "号", "is ", "\n",
])


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_groups_tile_their_run(text: str) -> None:
    """Redaction relies on this: the groups of a run are found from the run's text alone."""
    spans = find_number_spans(text)
    groups = find_digit_groups(text)
    assert "".join(s.digits for s in spans) == "".join(g.digits for g in groups)
    for span in spans:
        inside = [g for g in groups if span.start <= g.start and g.end <= span.end]
        assert "".join(g.digits for g in inside) == span.digits
        alone = find_digit_groups(text[span.start:span.end])
        assert [(g.start + span.start, g.end + span.start, g.digits) for g in alone] == [
            (g.start, g.end, g.digits) for g in inside
        ]


@given(st.text())
def test_any_text_is_scanned(text: str) -> None:
    spans = find_number_spans(text)
    assert all(s.digits.isascii() and s.digits.isdigit() for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))
    assert spoken_digits(text) == "".join(s.digits for s in spans)
