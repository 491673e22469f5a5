"""Phone numbers, one way everywhere: E.164 in, national form for display, masked for roles
that may not see them.

Callers reach the hotline from Chinese landlines and mobiles, and caller ids arrive in every
spelling: ``01062345678``, ``+86 10 6234 5678``, ``008613800210000``, ``8613800210000``,
``sip:+8613800210000@carrier``. :func:`parse` reads them all (``phonenumbers``, China as the
default country) so that masking, VIP matching, account lookup and region resolution agree on
one number, and :func:`mask` never shows a number in clear whatever its spelling (a ``+`` used
to slip through a digits-only check).
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat, PhoneNumberType

DEFAULT_COUNTRY = "CN"
# What SIP servers put in the user part or the caller-id name when the number is hidden.
WITHHELD = frozenset({
    "anonymous", "unknown", "restricted", "private", "withheld", "unavailable", "blocked",
})
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?]*)", re.IGNORECASE)
_DIALLED = re.compile(r"\+?[0-9]+")
_SEPARATORS = re.compile(r"[\s\-.()/]+")
# Longer than any E.164 number with an international prefix; phonenumbers would refuse anyway.
MAX_DIGITS = 20


def dialled_digits(raw: str) -> str:
    """The user part of a caller id without separators ("sip:010-1@host" -> "0101")."""
    text = unicodedata.normalize("NFKC", raw).strip()
    match = _URI_USER.search(text)
    if match:
        text = match.group(1)
    elif "@" in text:
        text = text.split("@", 1)[0]
    return _SEPARATORS.sub("", text.strip().strip("<>\"'"))


def is_withheld(user: str) -> bool:
    """Whether a caller id's user part says the number is hidden."""
    return user == "" or user.lower() in WITHHELD


def well_formed(user: str) -> bool:
    """Digits with an optional leading +, not longer than any real number."""
    return bool(_DIALLED.fullmatch(user)) and len(user) <= MAX_DIGITS


def parse_digits(digits: str) -> PhoneNumber | None:
    """Parse dialled digits as a Chinese caller would send them; None if not a valid number."""
    if digits.startswith("00"):
        digits = "+" + digits[2:]  # China's international prefix
    elif len(digits) == 13 and digits.startswith("86"):
        # Some carriers send the country code without "+" in front of a mobile number.
        mobile = _parse_valid("+" + digits)
        if mobile is not None and phonenumbers.number_type(mobile) == PhoneNumberType.MOBILE:
            return mobile
    return _parse_valid(digits)


def _parse_valid(digits: str) -> PhoneNumber | None:
    try:
        number = phonenumbers.parse(digits, DEFAULT_COUNTRY)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def parse(raw: str | None) -> PhoneNumber | None:
    """A caller id in any spelling as a valid number, or None (withheld, malformed, invalid)."""
    if raw is None:
        return None
    user = dialled_digits(raw)
    if is_withheld(user) or not well_formed(user):
        return None
    return parse_digits(user)


def e164(raw: str | None) -> str | None:
    """The E.164 form (``+8613800210000``) of a valid number; None otherwise."""
    number = parse(raw)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164) if number else None


def canonical(raw: str) -> str:
    """What is stored and compared: E.164 when the number is valid, else the raw text as it
    came (a withheld or malformed caller id is kept for the record, never guessed at)."""
    return e164(raw) or raw


def national(raw: str | None) -> str | None:
    """How people here write a number: national digits for a Chinese number (``021...``,
    ``138...``), E.164 for a foreign one, the text as it came when it is no valid number."""
    number = parse(raw)
    if number is None:
        return raw
    if number.country_code != 86:
        return phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return "".join(ch for ch in phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
                   if ch.isdigit())


def mask(raw: str | None) -> str | None:
    """A number as roles without clear access see it: the national form with all but the first
    three and the last two digits hidden (``138******00``); a foreign number keeps its country
    code. Anything else with digits in it keeps only its last two digits; text without digits
    (``anonymous``) is shown as it is."""
    if raw is None:
        return None
    number = parse(raw)
    if number is not None:
        shown = national(raw) or ""
        prefix = ""
        if shown.startswith("+"):
            prefix = f"+{number.country_code}"
            shown = phonenumbers.national_significant_number(number)
        if len(shown) >= 7:
            return prefix + shown[:3] + "*" * (len(shown) - 5) + shown[-2:]
    positions = [i for i, ch in enumerate(raw) if ch.isdigit()]
    keep = set(positions[-2:])
    return "".join("*" if ch.isdigit() and i not in keep else ch for i, ch in enumerate(raw))
