"""The one schema of a routing rule: pydantic models that the REST API, YAML import and export,
``routing.rules_file`` and the stored rules are all read through.

The models check everything that can be told from a rule alone: shape, types, allowed words,
"HH:MM" times, bounds. What needs the deployment (configured regions, known skills, the
calendar's timezone) or compares windows with each other is checked where the rule becomes a
:class:`~ivr.routing.rules.Rule` or enters the store, and named the same way. ``parse`` turns a
pydantic error into a :class:`RuleError` whose ``field`` is a path such as
``rules[2].then.skill`` and whose message says what was expected.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from ivr.errors import RuleError
from ivr.validation import explain, keys_at, kind, shown

INTENTS = ("billing", "product_info", "account_security", "technical_fault", "capacity",
           "ticket_status", "complaint", "human_agent", "unknown")
# "none" and None both mean the voiceprint check was not run for this call.
VERIFICATION_RESULTS = ("accept", "reject", "uncertain", "none")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CALLER_REGION = "caller"
ANY_REGION = "any"

HolidayMode = Literal["any", "exclude", "only"]
CallerTier = Literal["any", "vip", "standard"]
AfterHours = Literal["callback", "announce_hangup", "queue"]

# Bounds: the store's integer columns are 64-bit; beyond these a value is a typo, not a policy.
MAX_POSITION = 1_000_000_000
MAX_PRIORITY = 1_000_000
MAX_SECONDS = 86_400.0
MAX_NAME_CHARS = 200
MAX_WINDOWS = 50  # per list; the overlap check compares every pair
MAX_RULES = 1_000  # per imported document

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_SLUG_JUNK = re.compile(r"[^a-z0-9]+")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ModelT = TypeVar("_ModelT", bound=BaseModel)


# ---- paths and words for messages ---------------------------------------------------------


def child(path: str, key: str) -> str:
    """The dotted path of ``key`` inside the object at ``path``."""
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    """The path of list element ``index`` inside the list at ``path``."""
    return f"{path}[{index}]"


def dotted(loc: Sequence[str | int], path: str = "") -> str:
    """A pydantic location as a field path under ``path``: ("then", "open_hours", 1, "end")
    becomes "then.open_hours[1].end"."""
    for part in loc:
        path = item(path, part) if isinstance(part, int) else child(path, str(part))
    return path


# ---- field types ----------------------------------------------------------------------------


def _integral(value: object) -> object:
    """JSON Schema counts 5.0 as an integer; the rule format wants 5 (strings stay wrong)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: str) -> str:
    """A string stripped of surrounding blanks, which must leave something."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _seconds(value: object) -> object:
    """A finite number of seconds greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number of seconds, got {kind(value)} {shown(value)}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {shown(value)}")
    return float(value)


def _clock(value: object) -> object:
    """A local wall-clock time written "HH:MM" (00:00 .. 23:59), kept as the string."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 09:00 as the sexagesimal integer 540.
        raise ValueError(f'expected a quoted "HH:MM" string, got the number {value}')
    if not isinstance(value, str):
        raise ValueError(f'expected a "HH:MM" string, got {kind(value)}')
    if _CLOCK.match(value) is None:
        raise ValueError(f'expected "HH:MM" between 00:00 and 23:59, got {shown(value)}')
    return value


def _rule_id(value: str) -> str:
    if RULE_ID.match(value) is None:
        raise ValueError(f"{shown(value)} is not a valid id (letters, digits, '.', '_', '-'; "
                         "at most 64)")
    return value


def _words(choices: Sequence[str], what: str, *, at_least_one: bool = False
           ) -> AfterValidator:
    """A list whose items are each one of ``choices``; order kept, repeats dropped."""

    def check(values: list[str]) -> list[str]:
        for value in values:
            if value not in choices:
                raise ValueError(f"unknown {what} {shown(value)} "
                                 f"(expected one of {', '.join(choices)})")
        if at_least_one and not values:
            raise ValueError(f"must name at least one {what}")
        return list(dict.fromkeys(values))

    return AfterValidator(check)


def _any_alone(values: list[str]) -> list[str]:
    values = list(dict.fromkeys(values))
    if ANY_REGION in values and len(values) > 1:
        raise ValueError(f"'{ANY_REGION}' stands alone; it already means every other region")
    return values


def _enum(choices: Sequence[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


Integer = Annotated[int, BeforeValidator(_integral)]
Text = Annotated[str, AfterValidator(_text)]
Seconds = Annotated[float, BeforeValidator(_seconds)]
Clock = Annotated[str, BeforeValidator(_clock),
                  WithJsonSchema({"type": "string", "pattern": _CLOCK.pattern,
                                  "examples": ["08:00"]})]
Intent = Annotated[str, _enum(INTENTS)]
Verification = Annotated[str, _enum(VERIFICATION_RESULTS)]
Day = Annotated[str, _enum(DAY_NAMES)]
Windows = Annotated[list["WindowModel"], Field(default_factory=list, max_length=MAX_WINDOWS)]
_STRICT = ConfigDict(extra="forbid", strict=True)


# ---- the models -----------------------------------------------------------------------------


class WindowModel(BaseModel):
    """A weekly window of local time; an end before the start runs past midnight."""

    model_config = _STRICT

    days: Annotated[list[Day], _words(DAY_NAMES, "day", at_least_one=True)] = Field(
        json_schema_extra={"minItems": 1})
    start: Clock
    end: Clock

    @field_validator("end")
    @classmethod
    def _not_start(cls, end: str, info: ValidationInfo) -> str:
        if info.data.get("start") == end:
            raise ValueError('equals start, which is ambiguous (0 or 24 hours); split a whole '
                             'day into "00:00"-"12:00" and "12:00"-"00:00"')
        return end


class WhenModel(BaseModel):
    """When a rule applies; an empty condition matches anything."""

    model_config = _STRICT

    intents: Annotated[list[Intent], _words(INTENTS, "intent")] = Field(default_factory=list)
    regions: list[Text] = Field(default_factory=list, description="caller regions")
    hours: Windows
    holidays: HolidayMode = "any"
    caller_tier: CallerTier = "any"
    verification: Annotated[list[Verification],
                            _words(VERIFICATION_RESULTS, "verification result")] = Field(
        default_factory=list)


class ThenModel(BaseModel):
    """Where and how a matching call is queued."""

    model_config = _STRICT

    target_region: Text = Field(CALLER_REGION, description=f"a region, or '{CALLER_REGION}'")
    skill: Text | None = Field(None, description="an agent skill; null: the intent's name")
    priority: Integer = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    overflow_regions: Annotated[list[Text], AfterValidator(_any_alone)] = Field(
        default_factory=list, description=f"regions, or ['{ANY_REGION}'] alone")
    overflow_after_s: Seconds = Field(60.0, gt=0, le=MAX_SECONDS)
    ring_timeout_s: Seconds = Field(15.0, gt=0, le=MAX_SECONDS)
    max_wait_s: Seconds = Field(300.0, gt=0, le=MAX_SECONDS)
    open_hours: Windows
    open_on_holidays: bool = False
    after_hours: AfterHours = "callback"


class RuleIn(BaseModel):
    """A rule as written (REST body, YAML entry): defaults may be left out."""

    model_config = _STRICT

    id: Annotated[str, AfterValidator(_rule_id)] | None = Field(
        None, json_schema_extra={"pattern": RULE_ID.pattern},
        description="null on create: made from the name")
    name: Text = Field(max_length=MAX_NAME_CHARS)
    position: Integer | None = Field(None, ge=-MAX_POSITION, le=MAX_POSITION,
                                     description="evaluation order, lowest first; null on "
                                                 "create: last, on replace: unchanged")
    enabled: bool = True
    when: WhenModel | None = None
    then: ThenModel | None = None
    timezone: str | None = Field(None, max_length=64,
                                 description="the zone the times are written in; must be the "
                                             "configured routing.timezone (not stored)")


class RuleBody(BaseModel):
    """A rule in dict form, every field written out (as stored and exported)."""

    model_config = _STRICT

    id: str
    name: str
    position: Integer
    enabled: bool
    when: WhenModel
    then: ThenModel


class RuleDocument(BaseModel):
    """A YAML document of rules: what export writes, import and ``routing.rules_file`` read
    (there the rules may leave defaults out, as on create)."""

    model_config = _STRICT

    timezone: str | None = Field(None, max_length=64,
                                 description="must be routing.timezone if given")
    rules: list[RuleIn] = Field(max_length=MAX_RULES)


def parse(model: type[_ModelT], data: object, path: str = "") -> _ModelT:
    """``data`` read through ``model``, or RuleError naming the first bad field under ``path``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # An unknown key is most often the misspelling of a missing one: name it first.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(first["loc"])
        allowed = keys_at(model, loc[:-1]) if first["type"] == "extra_forbidden" else None
        raise RuleError(dotted(loc, path), explain(first, allowed)) from exc


def as_mapping(value: object, path: str) -> Mapping[str, Any]:
    """An object with string keys, or RuleError."""
    if not isinstance(value, Mapping):
        raise RuleError(path, f"expected an object, got {kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise RuleError(path, f"keys must be strings, got {shown(key)}")
    return value


# ---- times, days, ids, YAML ---------------------------------------------------------------


def parse_clock(value: str) -> datetime.time:
    """The time of a "HH:MM" string the schema accepted."""
    hours, minutes = value.split(":")
    return datetime.time(int(hours), int(minutes))


def format_clock(value: datetime.time) -> str:
    """The "HH:MM" form of a time (seconds are not part of the rule format)."""
    return f"{value.hour:02d}:{value.minute:02d}"


def day_numbers(names: Sequence[str]) -> frozenset[int]:
    """Day names (mon .. sun) as weekday numbers (0 = Monday)."""
    return frozenset(DAY_NAMES.index(name) for name in names)


def format_days(days: typing.Iterable[int]) -> list[str]:
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


def unique_id(base: str, taken: typing.AbstractSet[str]) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever is not taken."""
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}-{suffix}", suffix + 1
    return candidate


# What aliases may add to a document, in nodes: plenty for ``open_hours: *staffed`` reused by
# every rule, nothing like the "billion laughs" (a few hundred bytes of nested aliases that
# expand to gigabytes when the data is walked).
MAX_ALIAS_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """Safe YAML whose aliases may add at most MAX_ALIAS_NODES nodes once expanded."""

    def compose_document(self) -> Any:
        """The document's node graph, refused when expanding its aliases would pass the
        bound (counted over the graph with each shared node counted once per use)."""
        node = super().compose_document()
        sizes: dict[int, int] = {}
        distinct: set[int] = set()

        def expanded(current: yaml.Node) -> int:
            known = sizes.get(id(current))
            if known is not None:
                return known
            distinct.add(id(current))
            total = 1
            if isinstance(current, yaml.SequenceNode):
                total += sum(expanded(child) for child in current.value)
            elif isinstance(current, yaml.MappingNode):
                total += sum(expanded(key) + expanded(value) for key, value in current.value)
            sizes[id(current)] = total
            return total

        if node is not None and expanded(node) - len(distinct) > MAX_ALIAS_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*name) expand the document by more than "
                f"{MAX_ALIAS_NODES} nodes; write the values out", node.start_mark)
        return node


def load_yaml(text: str) -> Any:
    """Parse YAML safely, with bounded aliases; anything unreadable becomes RuleError naming
    the whole document (syntax errors with the line number)."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RuleError("", f"invalid YAML{where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise RuleError("", f"invalid YAML: {exc}") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2024-02-30
        raise RuleError("", f"invalid YAML value: {exc}") from exc
    except RecursionError as exc:
        raise RuleError("", "invalid YAML: nested too deeply") from exc


# Plain scalars that some YAML reader takes for something other than a string: YAML 1.2
# numbers PyYAML (1.1) leaves alone, such as 1e+100 or 0o17, and 1.1's yes/no/on/off.
_NOT_A_STRING = re.compile(
    r"^(?:[-+]?(?:\.\d+|\d+(?:\.\d*)?)(?:[eE][-+]?\d+)?|[-+]?\.(?:inf|Inf|INF)"
    r"|\.(?:nan|NaN|NAN)|0x[0-9a-fA-F]+|0o[0-7]+|~|null|Null|NULL|true|True|TRUE"
    r"|false|False|FALSE|[yYnN]|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$")


# libyaml's emitter when PyYAML was built with it (the same text, five times faster: every
# write of the rules checks the size of the export it would leave).
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _RuleDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Safe YAML that quotes every string a reader could take for a number, a boolean or
    null, and always "HH:MM" (unquoted, YAML 1.1 may read 18:00 as 1080)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if _CLOCK.match(data) or _NOT_A_STRING.match(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_RuleDumper.add_representer(str, _represent_str)


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text with keys in the order given and non-ASCII names kept readable."""
    return yaml.dump(
        dict(data), Dumper=_RuleDumper, sort_keys=False, allow_unicode=True,
        default_flow_style=None,
    )
