"""Field readers for routing rules in dict form (YAML or JSON): each names the field it rejects."""

from __future__ import annotations

import datetime
import difflib
import hashlib
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import yaml

from ivr.errors import RuleError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_SLUG_JUNK = re.compile(r"[^a-z0-9]+")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def child(path: str, key: str) -> str:
    """The dotted path of ``key`` inside the object at ``path``."""
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    """The path of list element ``index`` inside the list at ``path``."""
    return f"{path}[{index}]"


def _kind(value: object) -> str:
    """What a value is, in JSON words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def as_mapping(value: object, path: str) -> Mapping[str, Any]:
    """An object with string keys, or RuleError."""
    if not isinstance(value, Mapping):
        raise RuleError(path, f"expected an object, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise RuleError(path, f"keys must be strings, got {key!r}")
    return value


def check_keys(data: Mapping[str, Any], allowed: Collection[str], path: str) -> None:
    """Reject keys outside ``allowed`` (typos must not silently turn into defaults)."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            expected = ", ".join(sorted(allowed))
            raise RuleError(child(path, key), f"unknown key (expected one of {expected}){hint}")


def as_str(value: object, path: str) -> str:
    """A non-blank string, stripped, or RuleError."""
    if not isinstance(value, str):
        raise RuleError(path, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise RuleError(path, "must not be empty")
    return value.strip()


def as_int(value: object, path: str) -> int:
    """An integer (not a boolean, not a float), or RuleError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(path, f"expected an integer, got {_kind(value)} {value!r}")
    return value


def as_bool(value: object, path: str) -> bool:
    """true or false, or RuleError."""
    if not isinstance(value, bool):
        raise RuleError(path, f"expected true or false, got {_kind(value)} {value!r}")
    return value


def as_seconds(value: object, path: str) -> float:
    """A finite number of seconds greater than zero, or RuleError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(path, f"expected a number of seconds, got {_kind(value)} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise RuleError(path, f"must be a positive number of seconds, got {value!r}")
    return float(value)


def as_choice(value: object, path: str, choices: Sequence[str]) -> str:
    """One of ``choices``, or RuleError listing them."""
    if not isinstance(value, str):
        raise RuleError(path, f"expected one of {', '.join(choices)}, got {_kind(value)}")
    if value not in choices:
        raise RuleError(path, f"unknown value '{value}' (expected one of {', '.join(choices)})")
    return value


def as_list(value: object, path: str) -> list[Any]:
    """A list, or RuleError (a bare string is not a list of one)."""
    if not isinstance(value, list | tuple):
        raise RuleError(path, f"expected a list, got {_kind(value)}")
    return list(value)


def as_choices(value: object, path: str, choices: Sequence[str], what: str) -> tuple[str, ...]:
    """A list whose items are each one of ``choices``; order kept, repeats dropped."""
    out: list[str] = []
    for entry in as_list(value, path):
        if not isinstance(entry, str):
            raise RuleError(path, f"expected {what} names, got {_kind(entry)} {entry!r}")
        if entry not in choices:
            expected = ", ".join(choices)
            raise RuleError(path, f"unknown {what} '{entry}' (expected one of {expected})")
        if entry not in out:
            out.append(entry)
    return tuple(out)


def parse_clock(value: object, path: str) -> datetime.time:
    """A local wall-clock time written "HH:MM" (00:00 .. 23:59)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 09:00 as the sexagesimal integer 540.
        raise RuleError(path, f'expected a quoted "HH:MM" string, got the number {value}')
    if not isinstance(value, str):
        raise RuleError(path, f'expected a "HH:MM" string, got {_kind(value)}')
    match = _CLOCK.match(value)
    if match is None:
        raise RuleError(path, f'expected "HH:MM" between 00:00 and 23:59, got {value!r}')
    return datetime.time(int(match[1]), int(match[2]))


def format_clock(value: datetime.time) -> str:
    """The "HH:MM" form of a time (seconds are not part of the rule format)."""
    return f"{value.hour:02d}:{value.minute:02d}"


def parse_days(value: object, path: str) -> frozenset[int]:
    """A non-empty list of day names (mon .. sun) as weekday numbers (0 = Monday)."""
    names = as_choices(value, path, DAY_NAMES, "day")
    if not names:
        raise RuleError(path, "must name at least one day")
    return frozenset(DAY_NAMES.index(name) for name in names)


def format_days(days: Iterable[int]) -> list[str]:
    """Weekday numbers as day names, Monday first."""
    return [DAY_NAMES[day] for day in sorted(days)]


def format_week_point(microseconds: int) -> str:
    """A point of the week (microseconds since Monday 00:00) as e.g. "fri 23:00"."""
    minutes = microseconds // 60_000_000
    day, minute = divmod(minutes, 24 * 60)
    return f"{DAY_NAMES[day]} {minute // 60:02d}:{minute % 60:02d}"


def slug_id(name: str) -> str:
    """A URL-safe rule id made from a rule name (a digest when the name has no ASCII letters)."""
    slug = _SLUG_JUNK.sub("-", name.lower()).strip("-")[:48].strip("-")
    if slug:
        return slug
    return "rule-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]


def as_rule_id(value: object, path: str) -> str:
    """A rule id that is safe in a URL path segment."""
    text = as_str(value, path)
    if RULE_ID.match(text) is None:
        raise RuleError(
            path, f"'{text}' is not a valid id (letters, digits, '.', '_', '-'; at most 64)"
        )
    return text


def load_yaml(text: str) -> Any:
    """Parse YAML safely; syntax errors become RuleError with the line number."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RuleError("rules", f"invalid YAML{where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise RuleError("rules", f"invalid YAML: {exc}") from exc


class _RuleDumper(yaml.SafeDumper):
    """Safe YAML that always quotes "HH:MM" (unquoted, YAML 1.1 may read 18:00 as 1080)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if _CLOCK.match(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_RuleDumper.add_representer(str, _represent_str)


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text with keys in the order given and non-ASCII names kept readable."""
    return yaml.dump(
        dict(data), Dumper=_RuleDumper, sort_keys=False, allow_unicode=True,
        default_flow_style=None,
    )
