"""Caller region from the calling number, with the shipped province map and custom ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.routing.region import (
    DEFAULT_REGIONS_FILE,
    PROVINCES,
    RegionResolution,
    RegionResolver,
    split_place,
)

pytestmark = pytest.mark.unit

# One landline in the capital of each of the 31 provinces: (number, province, region).
PROVINCE_PROBES = [
    ("01012345678", "北京市", "north"), ("02212345678", "天津市", "north"),
    ("031112345678", "河北省", "north"), ("03512345678", "山西省", "north"),
    ("04712345678", "内蒙古自治区", "north"), ("02412345678", "辽宁省", "north"),
    ("043112345678", "吉林省", "north"), ("045112345678", "黑龙江省", "north"),
    ("037112345678", "河南省", "north"),
    ("02112345678", "上海市", "east"), ("02512345678", "江苏省", "east"),
    ("057112345678", "浙江省", "east"), ("055112345678", "安徽省", "east"),
    ("059112345678", "福建省", "east"), ("079112345678", "江西省", "east"),
    ("053112345678", "山东省", "east"),
    ("02012345678", "广东省", "south"), ("07712345678", "广西壮族自治区", "south"),
    ("089812345678", "海南省", "south"), ("073112345678", "湖南省", "south"),
    ("02712345678", "湖北省", "south"),
    ("02812345678", "四川省", "west"), ("02312345678", "重庆市", "west"),
    ("085112345678", "贵州省", "west"), ("087112345678", "云南省", "west"),
    ("08912345678", "西藏自治区", "west"), ("02912345678", "陕西省", "west"),
    ("09312345678", "甘肃省", "west"), ("09712345678", "青海省", "west"),
    ("09512345678", "宁夏回族自治区", "west"), ("09912345678", "新疆维吾尔自治区", "west"),
]


@pytest.fixture(scope="module")
def resolver() -> RegionResolver:
    return RegionResolver.from_yaml()


def test_shipped_map_has_the_four_regions_and_every_province(resolver: RegionResolver) -> None:
    assert resolver.regions == ("east", "north", "south", "west")
    assert resolver.default_region == "east"
    assert set(resolver.province_regions) == {full for full, _ in PROVINCES}
    assert len(resolver.province_regions) == 31


def test_every_yaml_key_is_spelled_as_the_geocoder_resolves_it(resolver: RegionResolver) -> None:
    keys = yaml.safe_load(DEFAULT_REGIONS_FILE.read_text(encoding="utf-8"))["provinces"]
    resolved = {resolver.resolve(number).province for number, _, _ in PROVINCE_PROBES}
    assert set(keys) == resolved


@pytest.mark.parametrize(("number", "province", "region"), PROVINCE_PROBES)
def test_all_31_provinces_map(resolver: RegionResolver, number: str, province: str,
                              region: str) -> None:
    got = resolver.resolve(number)
    assert (got.region, got.source, got.province) == (region, "landline", province)
    assert got.normalized == "+86" + number[1:]
    assert got.reason.startswith("landline area code ")


def test_beijing_landline_is_north(resolver: RegionResolver) -> None:
    assert resolver.resolve("01012345678") == RegionResolution(
        "north", "landline", "landline area code 10 -> 北京市", "北京市", "北京市", "+861012345678")


def test_shanghai_landline_is_east(resolver: RegionResolver) -> None:
    got = resolver.resolve("02112345678")
    assert (got.region, got.reason) == ("east", "landline area code 21 -> 上海市")
    assert (got.province, got.city, got.normalized) == ("上海市", "上海市", "+862112345678")


def test_guangzhou_landline_is_south_with_city(resolver: RegionResolver) -> None:
    got = resolver.resolve("02012345678")
    assert (got.region, got.source, got.province, got.city) == (
        "south", "landline", "广东省", "广州市")
    assert got.reason == "landline area code 20 -> 广东省广州市"


def test_shenzhen_four_digit_area_code_is_south(resolver: RegionResolver) -> None:
    got = resolver.resolve("075512345678")
    assert (got.region, got.city, got.reason) == (
        "south", "深圳市", "landline area code 755 -> 广东省深圳市")


def test_area_code_shared_by_several_cities_has_no_city(resolver: RegionResolver) -> None:
    got = resolver.resolve("02412345678")  # 沈阳市、铁岭市、抚顺市
    assert (got.province, got.city, got.region) == ("辽宁省", None, "north")


@pytest.mark.parametrize("number", [
    "13800210000", "+8613800210000", "008613800210000", "8613800210000", "138-0021-0000",
    "+86 138 0021 0000", "sip:+8613800210000@10.0.0.1;user=phone",
])
def test_shanghai_mobile_is_east(resolver: RegionResolver, number: str) -> None:
    assert resolver.resolve(number) == RegionResolution(
        "east", "mobile", "mobile range -> 上海市", "上海市", "上海市", "+8613800210000")


@pytest.mark.parametrize("number", [
    "010-1234 5678", "(010) 1234-5678", " 01012345678 ", "sip:01012345678@host",
    "<sip:01012345678@pbx.example;transport=udp>", "tel:010-12345678", "01012345678@host",
    "+861012345678", "00861012345678", "０１０１２３４５６７８",
])
def test_separators_and_sip_uris_are_stripped(resolver: RegionResolver, number: str) -> None:
    got = resolver.resolve(number)
    assert (got.region, got.source, got.normalized) == ("north", "landline", "+861012345678")


@pytest.mark.parametrize("number", [
    None, "", "   ", "anonymous", "Anonymous", "unknown", "restricted", "private", "withheld",
    "sip:anonymous@anonymous.invalid", "\"Anonymous\" <sip:anonymous@anonymous.invalid>",
])
def test_withheld_numbers_go_to_default(resolver: RegionResolver, number: str | None) -> None:
    assert resolver.resolve(number) == RegionResolution(
        "east", "default", "withheld number", None, None, None)


@pytest.mark.parametrize("number", [
    "abc", "12", "0000000000000000000", "010-ABCD-5678", "+", "++8613800210000", "0",
    "99999999999", "1" * 40, "sip:@host",
])
def test_malformed_numbers_go_to_default(resolver: RegionResolver, number: str) -> None:
    got = resolver.resolve(number)
    if number == "sip:@host":  # an empty user part is how some servers withhold
        assert got.reason == "withheld number"
    else:
        assert got == RegionResolution("east", "default", "malformed number", None, None, None)


@pytest.mark.parametrize(("number", "reason", "e164"), [
    ("+14155552671", "foreign number (+1)", "+14155552671"),
    ("0014155552671", "foreign number (+1)", "+14155552671"),
    ("+85221234567", "foreign number (+852)", "+85221234567"),
    ("+442079460000", "foreign number (+44)", "+442079460000"),
])
def test_foreign_numbers_go_to_default(resolver: RegionResolver, number: str, reason: str,
                                       e164: str) -> None:
    assert resolver.resolve(number) == RegionResolution(
        "east", "default", reason, None, None, e164)


def test_valid_number_without_location_goes_to_default(resolver: RegionResolver) -> None:
    got = resolver.resolve("4008101111")  # a 400 hotline number: valid, no province
    assert (got.region, got.source, got.reason, got.normalized) == (
        "east", "default", "location unknown", "+864008101111")


def test_unmapped_province_goes_to_default_and_says_which() -> None:
    resolver = RegionResolver({"北京市": "north"}, "central")
    got = resolver.resolve("02012345678")
    assert (got.region, got.source, got.reason) == (
        "central", "default", "province 广东省 not mapped")
    assert (got.province, got.city, got.normalized) == ("广东省", "广州市", "+862012345678")
    assert resolver.regions == ("central", "north")


def test_custom_map_and_default_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text("default_region: hq\nprovinces:\n  广东: pearl\n  内蒙古: steppe\n"
                    "  上海市: hq\n", encoding="utf-8")
    resolver = RegionResolver.from_yaml(path)
    assert resolver.regions == ("hq", "pearl", "steppe")
    assert resolver.resolve("075512345678").region == "pearl"
    assert resolver.resolve("04712345678").region == "steppe"
    assert resolver.resolve("01012345678").region == "hq"
    assert resolver.resolve("01012345678").reason == "province 北京市 not mapped"
    overridden = RegionResolver.from_yaml(path, default_region="overflow")
    assert overridden.resolve("+14155552671").region == "overflow"
    assert overridden.regions == ("hq", "overflow", "pearl", "steppe")


@pytest.mark.parametrize(("text", "message"), [
    ("provinces: {广东省: south}\n", "default_region"),
    ("default_region: east\nprovinces: {广东州: south}\n", "unknown province"),
    ("default_region: east\nprovinces: {广东省: ''}\n", "non-empty"),
    ("default_region: east\nprovinces: {广东: south, 广东省: east}\n", "both"),
    ("default_region: east\nprovinces: [广东省]\n", "provinces"),
    ("- just a list\n", "mapping"),
    ("default_region: [\n", "cannot read"),
])
def test_bad_region_maps_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        RegionResolver.from_yaml(path)


@pytest.mark.parametrize(("description", "province", "city"), [
    ("上海市", "上海市", "上海市"),
    ("天津", "天津市", "天津市"),
    ("广东省广州市", "广东省", "广州市"),
    ("内蒙古呼和浩特市", "内蒙古自治区", "呼和浩特市"),
    ("广西壮族自治区南宁市、崇左市", "广西壮族自治区", None),
    ("广西南宁市", "广西壮族自治区", "南宁市"),
    ("西藏拉萨市", "西藏自治区", "拉萨市"),
    ("宁夏银川市", "宁夏回族自治区", "银川市"),
    ("新疆维吾尔自治区乌鲁木齐市", "新疆维吾尔自治区", "乌鲁木齐市"),
    ("新疆喀什地区", "新疆维吾尔自治区", "喀什地区"),
    ("湖北省襄樊市、襄樊市", "湖北省", "襄樊市"),
    ("云南迪庆", "云南省", "迪庆"),
    ("黑龙江省", "黑龙江省", None),
    ("中国", None, None),
    ("", None, None),
])
def test_geocoder_descriptions_split_into_province_and_city(
        description: str, province: str | None, city: str | None) -> None:
    assert split_place(description) == (province, city)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet="0123456789+-() @:;sipte<>", max_size=30),
    st.from_regex(r"(\+|00)?86?[0-9]{6,14}", fullmatch=True),
))
def test_resolve_never_raises_and_returns_a_known_region(resolver: RegionResolver,
                                                         text: str | None) -> None:
    got = resolver.resolve(text)
    assert got.region in resolver.regions
    assert got.reason
    assert got.normalized is None or got.normalized.startswith("+")
    # The shipped map covers every province, so only an unknown place falls back.
    assert (got.source == "default") == (got.province is None)
