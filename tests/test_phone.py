"""One reading of phone numbers for masking, VIP matching, account lookup and region."""

from __future__ import annotations

import pytest

from ivr import phone
from ivr.logs import mask_value
from ivr.routing.service import RoutingService
from ivr.settings import RoutingSettings
from ivr.store.db import make_engine, migrate, sqlite_url
from ivr.store.repository import Store
from ivr.verification.codes import AccountDirectory

pytestmark = pytest.mark.unit

# Every spelling of one mobile and one Shanghai landline that caller ids arrive in.
MOBILE = ["13800210000", "+8613800210000", "+86 138-0021-0000", "008613800210000",
          "8613800210000", "sip:+8613800210000@carrier.example", "tel:+86-138-0021-0000"]
LANDLINE = ["02112345600", "+862112345600", "+86 21 1234 5600", "00862112345600",
            "<sip:021-1234-5600@10.0.0.1>"]


@pytest.mark.parametrize("raw", MOBILE)
def test_every_spelling_of_a_mobile_is_one_number(raw: str) -> None:
    assert phone.e164(raw) == "+8613800210000"
    assert phone.national(raw) == "13800210000"
    assert phone.mask(raw) == "138******00"
    assert mask_value(raw) == "138******00"


@pytest.mark.parametrize("raw", LANDLINE)
def test_every_spelling_of_a_landline_is_one_number(raw: str) -> None:
    assert phone.e164(raw) == "+862112345600"
    assert phone.national(raw) == "02112345600"
    assert phone.mask(raw) == "021******00"


def test_foreign_invalid_and_withheld_numbers() -> None:
    assert phone.e164("+1 650 253 0000") == "+16502530000"
    assert phone.national("+16502530000") == "+16502530000"
    assert phone.mask("+16502530000") == "+1650*****00"
    # Not a valid number: never shown in clear, only the last two digits.
    assert phone.e164("+99912345678") is None
    assert phone.mask("+99912345678") == "+*********78"
    assert phone.mask("12-34") == "**-34"
    assert phone.canonical("anonymous") == "anonymous" and phone.mask("anonymous") == "anonymous"
    assert phone.mask(None) is None and phone.e164(None) is None
    assert mask_value("hello world") == "<11 chars masked>"


def test_vip_and_accounts_match_in_any_spelling(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(sqlite_url(tmp_path))
    migrate(engine)
    routing = RoutingService(Store(engine), RoutingSettings(vip_numbers=("+86 138 0021 0000",)),
                             ("north", "east", "south", "west"))
    for raw in MOBILE:
        assert routing.is_vip(raw), raw
    assert not routing.is_vip("13800210001")
    accounts = AccountDirectory(engine)
    account = accounts.add("acct-1", "0086 138 0021 0000")
    assert account.phone_number == "+8613800210000"
    for raw in MOBILE:
        assert accounts.find_by_number(raw) == account, raw
    assert accounts.find_by_number("02112345600") is None
    with pytest.raises(ValueError, match="not a valid phone number"):
        accounts.add("acct-2", "12345")
    # Region resolution reads the same spellings the same way.
    for raw in MOBILE[:5]:
        assert routing.resolver.resolve(raw).normalized == "+8613800210000"
