"""Redaction of phone, ID and card numbers and codes in transcripts, Mandarin and English."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asr.numbers import find_digit_groups, spoken_digits
from ivr.redaction import Finding, redact, redact_with_findings

pytestmark = pytest.mark.unit

# Test data made for these tests, checked below with checksums written independently here.
VALID_ID = "440305198807161232"  # check of 44030519880716123 under MOD 11-2 is 2
ALTERED_ID = "440305198807261232"  # one birth-date digit changed: its check would be 3
ID_AND_LUHN = "310115199003072514"  # a valid ID that also passes Luhn: ID wins
X_ID = "11010519491231002X"  # check character X
CARD = "6222021234567894"  # 622202123456789 with its Luhn check digit 4
NOT_A_CARD = "6222021234567890"  # same number, wrong check digit


def _id_check(first17: str) -> str:
    weights = [2 ** (17 - i) % 11 for i in range(17)]  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]


def _luhn(number: str) -> bool:
    doubled = [int(d) * (2 if i % 2 else 1) for i, d in enumerate(reversed(number))]
    return sum(v // 10 + v % 10 for v in doubled) % 10 == 0


def test_the_test_numbers_are_what_they_claim() -> None:
    assert _id_check("11010519491231002") == "X"  # the example in the standard
    assert _id_check(VALID_ID[:17]) == VALID_ID[17] and not _luhn(VALID_ID)
    assert _id_check(ALTERED_ID[:17]) != ALTERED_ID[17] and not _luhn(ALTERED_ID)
    assert _id_check(ID_AND_LUHN[:17]) == ID_AND_LUHN[17] and _luhn(ID_AND_LUHN)
    assert _id_check(X_ID[:17]) == "X"
    assert _luhn(CARD) and _luhn("4111111111111111")
    assert not _luhn(NOT_A_CARD) and not _luhn("123456789012")


REDACTED = [
    # Mobile numbers, written.
    ("我的手机号是13800138000", "我的手机号是[PHONE]"),
    ("我的手机号是13800138000，一会儿打给我", "我的手机号是[PHONE]，一会儿打给我"),
    ("手机号１３８００１３８０００", "手机号[PHONE]"),
    ("You can reach me at 139-1234-5678 after six.", "You can reach me at [PHONE] after six."),
    ("call +86 138 0013 8000 please", "call [PHONE] please"),
    ("我的号码是0086 13800138000", "我的号码是[PHONE]"),
    ("号码是86 13800138000吗", "号码是[PHONE]吗"),
    # Mobile numbers, spoken.
    ("手机幺三八零零幺三八零零零", "手机[PHONE]"),
    ("电话是幺三九，幺二三四，五六七八。", "电话是[PHONE]。"),
    ("一 三 八 零 零 一 三 八 零 零 零", "[PHONE]"),
    ("138 零零 one three 八零零零", "[PHONE]"),
    ("my number is one three eight, zero zero one three, eight zero zero zero.",
     "my number is [PHONE]."),
    ("Call me on one five nine, double oh, one two, triple four, eight.", "Call me on [PHONE]."),
    # Landlines.
    ("请拨打010-12345678", "请拨打[PHONE]"),
    ("座机是0755 8765 4321，找王经理", "座机是[PHONE]，找王经理"),
    ("our office number is 02165432109", "our office number is [PHONE]"),
    ("办公室电话零二幺六五四三二幺零九", "办公室电话[PHONE]"),
    # Resident ID numbers.
    (f"身份证号是{VALID_ID}", "身份证号是[ID]"),
    (f"ID {X_ID}, thanks", "ID [ID], thanks"),
    ("身份证号码是一一零一零五一九四九一二三一零零二叉", "身份证号码是[ID]"),
    (f"身份证{ID_AND_LUHN}", "身份证[ID]"),
    (f"身份证号是{ALTERED_ID}", f"身份证号是{ALTERED_ID}"),
    # Bank cards.
    ("卡号是6222 0212 3456 7894", "卡号是[CARD]"),
    (f"card number {CARD}", "card number [CARD]"),
    ("卡号是6222 0212 3456 7890", "卡号是6222 0212 3456 7890"),
    # Card security codes and one-time codes.
    ("CVV是123", "CVV是[CODE]"),
    ("卡背面三位是四五六", "卡背面三位是[CODE]"),
    ("the CVV is 7 3 9", "the CVV is [CODE]"),
    ("验证码是四七二九一五", "验证码是[CODE]"),
    ("the code is 4 7 2 9 1 5", "the code is [CODE]"),
    ("My verification code is four seven two nine one five.", "My verification code is [CODE]."),
    ("密码是 8 8 6 6 1 2", "密码是 [CODE]"),
    ("my pin is one two three four", "my pin is [CODE]"),
    # Several numbers in one utterance.
    ("手机13800138000，验证码472915", "手机[PHONE]，验证码[CODE]"),
    (f"My phone is 13800138000 and my card is {CARD}.",
     "My phone is [PHONE] and my card is [CARD]."),
    ("the code is 4729, the card 6222 0212 3456 7890", "the code is [CODE], the card "
     "6222 0212 3456 7890"),
    # Numbers that are none of these, and no numbers at all.
    ("我想查一下上个月的账单", "我想查一下上个月的账单"),
    ("我要三张", "我要三张"),
    ("I have 2 questions", "I have 2 questions"),
    ("二十三号下午三点", "二十三号下午三点"),
    ("订单号20240518，三件商品", "订单号20240518，三件商品"),
    ("reference 123456789012", "reference 123456789012"),
    ("the code was sent but I never got it, my room is 802",
     "the code was sent but I never got it, my room is 802"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_findings_point_into_the_original_text() -> None:
    text = f"call +86 138 0013 8000, card {CARD}, ID {X_ID}, 验证码是四七二九一五"
    redacted, findings = redact_with_findings(text)
    assert redacted == "call [PHONE], card [CARD], ID [ID], 验证码是[CODE]"
    assert [(f.kind, text[f.start:f.end]) for f in findings] == [
        ("PHONE", "+86 138 0013 8000"), ("CARD", CARD), ("ID", X_ID), ("CODE", "四七二九一五"),
    ]
    assert findings[0] == Finding("PHONE", 5, 22)


def test_nothing_found_returns_the_text_itself() -> None:
    assert redact_with_findings("I have 2 questions") == ("I have 2 questions", [])


_PIECES = st.sampled_from([
    "0", "1", "13800138000", "138", "0013", "８", "零", "一", "幺", "两", "九", "十", "叉", "X",
    "x", "+", "86", "one", "oh", "double", "zero", " ", ", ", "-", "，", "、", ".", "。",
    "验证码", "密码", "后三位", "code", "CVV", "pin", "[CODE]", "[PHONE]", "is ", "的", "a",
    CARD, VALID_ID[:17], "\n",
])
_NUMBERY_TEXT = st.lists(_PIECES, max_size=40).map("".join)


@settings(max_examples=300)
@given(st.one_of(st.text(), _NUMBERY_TEXT))
@example("6222021234567894oh 13800138000")  # "oh" inside the run, not at the end of a number
@example("code 12345678 and 999")  # the mask must not bring 999 into the keyword's window
@example("code 123456 [CODE] 7890")
def test_redact_is_total_idempotent_and_masks_only_its_findings(text: str) -> None:
    redacted, findings = redact_with_findings(text)
    assert redact(redacted) == redacted
    groups = find_digit_groups(text)
    rebuilt, position = [], 0
    for finding in findings:
        assert position <= finding.start < finding.end <= len(text)
        assert finding.kind in {"PHONE", "ID", "CARD", "CODE"}
        assert any(finding.start <= g.start and g.end <= finding.end for g in groups)
        rebuilt += [text[position:finding.start], f"[{finding.kind}]"]
        position = finding.end
    assert "".join([*rebuilt, text[position:]]) == redacted


_ZH = {"0": "零〇", "1": "一幺", "2": "二两", "3": "三", "4": "四", "5": "五", "6": "六",
       "7": "七", "8": "八", "9": "九"}
_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@st.composite
def _spoken_mobile(draw: st.DrawFn) -> tuple[str, str]:
    """A valid mobile number and one way a caller or the ASR might render it."""
    mobile = "1" + draw(st.sampled_from("3456789")) + draw(st.text("0123456789", min_size=9,
                                                                   max_size=9))
    form = draw(st.sampled_from(["written", "grouped", "zh", "en"]))
    if form == "written":
        said = mobile
    elif form == "grouped":
        said = draw(st.sampled_from([" ", "-"])).join([mobile[:3], mobile[3:7], mobile[7:]])
    elif form == "zh":
        said = "".join(draw(st.sampled_from(_ZH[d])) for d in mobile)
    else:
        # Inner zeros may be "oh"; a final one is "zero", as a trailing "oh" is no digit.
        words = [draw(st.sampled_from(["zero", "oh"])) if d == "0" else _EN[int(d)]
                 for d in mobile[:-1]] + [_EN[int(mobile[-1])]]
        said = draw(st.sampled_from([" ", ", "])).join(words)
    return mobile, said


_TEMPLATES = [
    "call me on {}", "my number is {}, 2 questions", "我的手机号是{}，一会儿打给我", "电话{}。谢谢",
    "{}", "My number is {} and my code is 4 7 2 9", "号码+86 {}", "手机{}，我要三张",
]


@given(_spoken_mobile(), st.sampled_from(_TEMPLATES))
def test_generated_mobiles_never_survive(mobile_and_said: tuple[str, str], template: str) -> None:
    mobile, said = mobile_and_said
    redacted, findings = redact_with_findings(template.format(said))
    assert "PHONE" in [f.kind for f in findings]
    assert mobile not in spoken_digits(redacted)
    assert not re.search(r"1[3-9]\d{9}", redacted)
