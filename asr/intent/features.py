"""Text normalisation and sparse features for caller utterances (Mandarin, English, mixed).

ASR output for the same request varies a lot: 帐单 or 账单, 登陆 or 登录, 宕机 or 当机,
"one three eight" or "138", fillers everywhere. ``normalize`` folds those variants together and
``extract_features`` turns the result into feature strings: character n-grams over a symbol
stream (one CJK character, one Latin word or one number per symbol), word n-grams and
word-bounded character n-grams for Latin text, and toneless pinyin so that homophones the
normaliser does not know still share features.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from pypinyin import lazy_pinyin

from asr.text import to_simplified

# Longer variants first where one contains another; applied after punctuation is stripped.
_ZH_VARIANTS: tuple[tuple[str, str], ...] = (
    ("帐单", "账单"),
    ("帐户", "账户"),
    ("帐号", "账号"),
    ("帐务", "账务"),
    ("对帐", "对账"),
    ("转帐", "转账"),
    ("扣帐", "扣账"),
    ("登陆", "登录"),
    ("当机", "宕机"),
    ("荡机", "宕机"),
    ("档机", "宕机"),
    ("密吗", "密码"),
    ("蜜码", "密码"),
    ("发漂", "发票"),
    ("投述", "投诉"),
    ("扩融", "扩容"),
    ("公单", "工单"),
    ("人公", "人工"),
    ("服物器", "服务器"),
    ("伺服器", "服务器"),
)

_EN_VARIANTS: tuple[tuple[str, str], ...] = (
    (r"\blog(?:ged|ging)? (?:in|on)\b", "login"),
    (r"\bsign(?:ed|ing)? in\b", "signin"),
    (r"\bpass word\b", "password"),
    (r"\be mail\b", "email"),
    (r"\bwi fi\b", "wifi"),
    (r"\btwo (?:factor|step)\b", "2fa"),
    (r"\bwork order\b", "ticket"),
    (r"\bcancelled\b", "canceled"),
    (r"\bcharg(?:ed|ing)\b", "charge"),
    (r"\bbilled\b", "bill"),
)
_EN_VARIANT_RES = tuple((re.compile(pattern), repl) for pattern, repl in _EN_VARIANTS)

# Fillers carry no intent; 额 is not one (额度 is a quota), nor is a bare "like" or "so".
_ZH_FILLERS = tuple(
    "就是说 怎么说呢 然后呢 那个 这个 就是 嗯 呃 唔 哦 喂 哎 唉 啊 呀 吧 呢 嘛 哈".split()
)
_EN_FILLERS = re.compile(
    r"\b(?:u+h+|u+m+|e+r+m*|a+h+|h+m+|m+h*m+|hello|hey|hi|you know|i mean|okay so)\b"
)

_ZH_DIGITS = {
    "零": 0,
    "〇": 0,
    "幺": 1,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_ZH_NUMBER_RUN = re.compile("[零〇幺一二两三四五六七八九十百千万]+")

_EN_ONES = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_EN_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_EN_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_EN_NUMBER_WORDS = {**_EN_ONES, **_EN_TENS, **_EN_SCALES, "double": -1}
_EN_NUMBER_RUN = re.compile(r"\b(?:(?:" + "|".join(_EN_NUMBER_WORDS) + r")\b ?)+")

_PUNCTUATION = re.compile(r"[^\w\s]|_")
_APOSTROPHE = re.compile(r"(?<=[a-z])['’](?=[a-z])")
_SPACES = re.compile(r"\s+")
_SEGMENT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|[a-z]+|\d+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")
_LATIN_WORD = re.compile(r"[a-z]{2,}")
# Words that say nothing on their own: an utterance of only these has no content.
_EN_FUNCTION_WORDS = frozenset(
    "a an the i me my we our you your it its is am are was be to of in on at for and or "
    "but so this that there here yes no ok okay yeah please thanks thank".split()
)


def normalize(text: str) -> str:
    """Fold an ASR transcript into the canonical form the features are built from."""
    # NFKC maps full-width to half-width; Traditional characters fold into Simplified.
    text = to_simplified(unicodedata.normalize("NFKC", text).lower())
    text = _APOSTROPHE.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    for variant, canonical in _ZH_VARIANTS:
        text = text.replace(variant, canonical)
    for pattern, canonical in _EN_VARIANT_RES:
        text = pattern.sub(canonical, text)
    text = _EN_FILLERS.sub(" ", text)
    for filler in _ZH_FILLERS:
        text = text.replace(filler, " ")
    text = _ZH_NUMBER_RUN.sub(_replace_zh_number, text)
    text = _EN_NUMBER_RUN.sub(_replace_en_number, text)
    # Digits read one by one ("1 3 8") are one number; CJK needs no spaces.
    text = re.sub(r"(?<=\d) (?=\d)", "", text)
    text = re.sub(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", text)
    return _SPACES.sub(" ", text).strip()


def _replace_zh_number(match: re.Match[str]) -> str:
    run = match.group(0)
    if run == "一" or run[0] in "百千万":
        return run  # 一下, 一直, 千万, 百分之: words, not numbers
    value = _zh_number_value(run)
    return run if value is None else value


def _zh_number_value(run: str) -> str | None:
    if not any(char in _ZH_UNITS for char in run):
        return "".join(str(_ZH_DIGITS[char]) for char in run)  # read digit by digit
    total, section, digit = 0, 0, -1
    for char in run:
        if char in _ZH_DIGITS:
            if digit >= 0 and _ZH_DIGITS[char] != 0:
                return None  # 三四十: an estimate, not one number
            digit = _ZH_DIGITS[char]
        elif char == "万":
            section += max(digit, 0)
            total += max(section, 1) * 10000
            section, digit = 0, -1
        else:
            section += (1 if digit < 0 else digit) * _ZH_UNITS[char]
            digit = -1
    return str(total + section + max(digit, 0))


def _replace_en_number(match: re.Match[str]) -> str:
    words = match.group(0).split()
    if words in (["one"], ["double"]):
        return match.group(0)  # "the one I bought": a pronoun, not a number
    trailing = " " if match.group(0).endswith(" ") else ""
    if any(word in _EN_SCALES or word in _EN_TENS for word in words):
        return str(_en_number_value(words)) + trailing
    digits: list[str] = []
    repeat = 1
    for word in words:
        if word == "double":
            repeat = 2
            continue
        digits.append(str(_EN_ONES[word]) * repeat)
        repeat = 1
    return "".join(digits) + trailing


def _en_number_value(words: list[str]) -> int:
    total, current = 0, 0
    for word in words:
        if word in _EN_ONES:
            current += _EN_ONES[word]
        elif word in _EN_TENS:
            current += _EN_TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _EN_SCALES:
            total += max(current, 1) * _EN_SCALES[word]
            current = 0
    return total + current


def content_size(normalized: str) -> tuple[int, int]:
    """Count CJK characters and Latin content words (two letters or more) in normalised text."""
    words = [word for word in _LATIN_WORD.findall(normalized) if word not in _EN_FUNCTION_WORDS]
    return len(_CJK.findall(normalized)), len(words)


def _number_symbol(digits: str) -> str:
    # The value rarely matters for intent; the length tells a phone number from an amount.
    return "<n>" if len(digits) <= 4 else "<nn>"


@lru_cache(maxsize=4096)
def _pinyin(run: str) -> tuple[str, ...]:
    return tuple(lazy_pinyin(run))


def extract_features(normalized: str) -> list[str]:
    """Feature strings of one normalised utterance; repeated features are repeated."""
    symbols: list[str] = []
    words: list[str] = []
    for segment in _SEGMENT.findall(normalized):
        if segment.isdigit():
            symbols.append(_number_symbol(segment))
            words.append(symbols[-1])
        else:
            symbols.append(segment)
            if segment.isascii():
                words.append(segment)
    features: list[str] = []
    features.extend(_ngrams("c", symbols, 1, 3))
    latin = [word for word in words if word.isascii() and word.isalpha()]
    if latin:
        features.extend(_ngrams("w", words, 1, 2))
        for word in latin:
            padded = f"<{word}>"
            for size in range(3, 6):
                features.extend(f"g{padded[i : i + size]}" for i in range(len(padded) - size + 1))
    for run in _CJK_RUN.findall(normalized):
        syllables = _pinyin(run)
        features.extend(_ngrams("p", list(syllables), 1, 2))
        features.extend(_ngrams("q", [_fuzzy(s) for s in syllables], 1, 2))
        features.extend(_ngrams("k", [_skeleton(s) for s in syllables], 2, 2))
    return features


@lru_cache(maxsize=4096)
def _skeleton(syllable: str) -> str:
    """Initial and first vowel only: the part of a syllable telephone Whisper keeps when it
    loses the coda (账单 zhang-dan heard as 炸弹 zha-dan: both 'za da')."""
    fuzzy = _fuzzy(syllable)
    for i, char in enumerate(fuzzy):
        if char in "aeiouv":
            return fuzzy[:i + 1]
    return fuzzy


@lru_cache(maxsize=4096)
def _fuzzy(syllable: str) -> str:
    """A toneless syllable with the distinctions Whisper base loses on telephone Mandarin
    folded away (zh/z, ch/c, sh/s, n/l, -ng/-n, initial dropped after a glide): 账号 heard as
    善豪 or 片奥 still shares 'san ao'-like keys with the request."""
    for retroflex, flat in (("zh", "z"), ("ch", "c"), ("sh", "s")):
        if syllable.startswith(retroflex):
            syllable = flat + syllable[2:]
            break
    if syllable.startswith("n"):
        syllable = "l" + syllable[1:]
    if syllable.endswith("ng"):
        syllable = syllable[:-1]
    return syllable


def _ngrams(prefix: str, symbols: list[str], low: int, high: int) -> Iterable[str]:
    for size in range(low, high + 1):
        for start in range(len(symbols) - size + 1):
            yield prefix + str(size) + "|".join(symbols[start : start + size])
