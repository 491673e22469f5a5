"""Caller region from the calling number: China area codes and mobile ranges via ``phonenumbers``.

The province-to-region map is configuration (``defaults/regions.yaml`` ships the product's four
regions); this module only turns a calling number into a province and looks it up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import phonenumbers
import yaml
from phonenumbers import PhoneNumberType, geocoder

from ivr.phone import dialled_digits, is_withheld, parse_digits, well_formed

log = logging.getLogger(__name__)

DEFAULT_REGIONS_FILE = Path(__file__).with_name("defaults") / "regions.yaml"

RegionSource = Literal["landline", "mobile", "default"]

# Provincial-level divisions of mainland China: (full name, short name). The geocoder writes most
# with the full name but some autonomous regions only with the short one ("内蒙古呼和浩特市",
# "西藏拉萨市", "宁夏银川市"), and a few mobile ranges without the suffix ("天津", "云南迪庆").
PROVINCES: tuple[tuple[str, str], ...] = (
    ("北京市", "北京"), ("天津市", "天津"), ("上海市", "上海"), ("重庆市", "重庆"),
    ("河北省", "河北"), ("山西省", "山西"), ("辽宁省", "辽宁"), ("吉林省", "吉林"),
    ("黑龙江省", "黑龙江"), ("江苏省", "江苏"), ("浙江省", "浙江"), ("安徽省", "安徽"),
    ("福建省", "福建"), ("江西省", "江西"), ("山东省", "山东"), ("河南省", "河南"),
    ("湖北省", "湖北"), ("湖南省", "湖南"), ("广东省", "广东"), ("海南省", "海南"),
    ("四川省", "四川"), ("贵州省", "贵州"), ("云南省", "云南"), ("陕西省", "陕西"),
    ("甘肃省", "甘肃"), ("青海省", "青海"),
    ("内蒙古自治区", "内蒙古"), ("广西壮族自治区", "广西"), ("西藏自治区", "西藏"),
    ("宁夏回族自治区", "宁夏"), ("新疆维吾尔自治区", "新疆"),
)
MUNICIPALITIES = frozenset({"北京市", "天津市", "上海市", "重庆市"})

# Every spelling (full or short) -> full name; longest first so "广西壮族自治区" wins over "广西".
_SPELLINGS: tuple[tuple[str, str], ...] = tuple(sorted(
    ((spelling, full) for full, short in PROVINCES for spelling in (full, short)),
    key=lambda pair: -len(pair[0]),
))
_FULL_NAME = dict(_SPELLINGS)

@dataclass(frozen=True)
class RegionResolution:
    """Where a call is routed by its calling number, and why."""

    region: str
    source: RegionSource
    reason: str
    province: str | None
    city: str | None
    normalized: str | None


def split_place(description: str) -> tuple[str | None, str | None]:
    """Split a Chinese geocoder description into (full province name, city).

    ``city`` is None when the description names no city or several (an area code shared by
    several cities, e.g. "辽宁省沈阳市、铁岭市、抚顺市"); municipalities are their own city.
    """
    match = next((pair for pair in _SPELLINGS if description.startswith(pair[0])), None)
    if match is None:
        return None, None
    spelling, full = match
    rest = description[len(spelling):]
    if full in MUNICIPALITIES:
        return full, full
    cities = list(dict.fromkeys(part for part in rest.split("、") if part))
    return full, cities[0] if len(cities) == 1 else None


def province_full_name(name: str) -> str | None:
    """The full province name for a full or short spelling ("内蒙古" -> "内蒙古自治区")."""
    return _FULL_NAME.get(name.strip())


class RegionResolver:
    """Maps calling numbers to routing regions by the province their area code or range is in."""

    def __init__(self, province_regions: Mapping[str, str], default_region: str) -> None:
        """``province_regions`` maps province names (full or short spelling) to region names."""
        if not isinstance(default_region, str) or not default_region.strip():
            raise ValueError("default_region must be a non-empty region name")
        mapping: dict[str, str] = {}
        for name, region in province_regions.items():
            full = province_full_name(name) if isinstance(name, str) else None
            if full is None:
                raise ValueError(f"unknown province {name!r} in the region map")
            if not isinstance(region, str) or not region.strip():
                raise ValueError(f"province {name!r}: region must be a non-empty name")
            if mapping.get(full, region) != region:
                raise ValueError(f"province {full} is mapped to both {mapping[full]} and {region}")
            mapping[full] = region
        self._provinces: Mapping[str, str] = mapping
        self._default = default_region

    @classmethod
    def from_yaml(cls, path: Path | None = None,
                  default_region: str | None = None) -> RegionResolver:
        """Load ``{default_region: ..., provinces: {province: region}}``; None -> shipped file."""
        source = path or DEFAULT_REGIONS_FILE
        try:
            data: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read region map {source}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping with 'provinces' and 'default_region'")
        provinces = data.get("provinces") or {}
        if not isinstance(provinces, dict):
            raise ValueError(f"{source}: 'provinces' must map province names to regions")
        default = default_region if default_region is not None else data.get("default_region")
        if not isinstance(default, str):
            raise ValueError(f"{source}: 'default_region' must be a region name")
        return cls(provinces, default)

    @property
    def default_region(self) -> str:
        """Region for calls whose province is unknown or unmapped."""
        return self._default

    @property
    def province_regions(self) -> Mapping[str, str]:
        """Full province name -> region."""
        return dict(self._provinces)

    @property
    def regions(self) -> tuple[str, ...]:
        """Every region a resolution can return, sorted."""
        return tuple(sorted({*self._provinces.values(), self._default}))

    def resolve(self, caller_number: str | None) -> RegionResolution:
        """Resolve the caller's region; never raises, falls back to the default region."""
        resolution = self._resolve(caller_number)
        # The number itself stays out of the log (STYLE.md); the outcome is enough to debug.
        log.debug("caller region resolved", extra={
            "region": resolution.region, "source": resolution.source,
            "province": resolution.province, "reason": resolution.reason,
        })
        return resolution

    def _resolve(self, caller_number: str | None) -> RegionResolution:
        if caller_number is None:
            return self._fallback("withheld number")
        user = dialled_digits(caller_number)
        if is_withheld(user):
            return self._fallback("withheld number")
        if not well_formed(user):
            return self._fallback("malformed number")
        number = parse_digits(user)
        if number is None:
            return self._fallback("malformed number")
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if number.country_code != 86:
            return self._fallback(f"foreign number (+{number.country_code})", normalized=e164)
        province, city = split_place(geocoder.description_for_number(number, "zh"))
        if province is None:
            return self._fallback("location unknown", normalized=e164)
        place = province if city in (None, province) else f"{province}{city}"
        region = self._provinces.get(province)
        if region is None:
            return self._fallback(f"province {province} not mapped", province=province,
                                  city=city, normalized=e164)
        if phonenumbers.number_type(number) == PhoneNumberType.MOBILE:
            return RegionResolution(region, "mobile", f"mobile range -> {place}",
                                    province, city, e164)
        nsn = phonenumbers.national_significant_number(number)
        area = nsn[:phonenumbers.length_of_geographical_area_code(number)]
        reason = f"landline area code {area} -> {place}" if area else f"landline -> {place}"
        return RegionResolution(region, "landline", reason, province, city, e164)

    def _fallback(self, reason: str, *, province: str | None = None, city: str | None = None,
                  normalized: str | None = None) -> RegionResolution:
        return RegionResolution(self._default, "default", reason, province, city, normalized)
