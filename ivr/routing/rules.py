"""Routing rules: which region, skill group, priority and overflow a call gets, decided purely.

``decide`` takes the facts of one call, the rules, the time and the holiday calendar, and returns a
``RoutingDecision`` that records every value it used. The first enabled rule whose conditions all
hold wins, in ascending ``position`` (ties keep list order); no match gives the default route.
Rules travel as dicts (REST JSON) or YAML; ``rule_from_dict`` validates and names the bad field.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, cast, get_args

from ivr.errors import RuleError
from ivr.routing.rule_schema import (
    as_bool,
    as_choice,
    as_choices,
    as_int,
    as_list,
    as_mapping,
    as_rule_id,
    as_seconds,
    as_str,
    check_keys,
    child,
    dump_yaml,
    format_clock,
    format_days,
    format_week_point,
    item,
    load_yaml,
    parse_clock,
    parse_days,
    slug_id,
)

INTENTS = ("billing", "product_info", "account_security", "technical_fault", "capacity",
           "ticket_status", "complaint", "human_agent", "unknown")
# "none" and None both mean the voiceprint check was not run for this call.
VERIFICATION_RESULTS = ("accept", "reject", "uncertain", "none")
CALLER_REGION = "caller"
ANY_REGION = "any"
DEFAULT_TIMEZONE = "Asia/Shanghai"

HolidayMode = Literal["any", "exclude", "only"]
CallerTier = Literal["any", "vip", "standard"]
AfterHours = Literal["callback", "announce_hangup", "queue"]
DecisionAction = Literal["queue", "callback", "announce_hangup"]
HOLIDAY_MODES: tuple[str, ...] = get_args(HolidayMode)
CALLER_TIERS: tuple[str, ...] = get_args(CallerTier)
AFTER_HOURS: tuple[str, ...] = get_args(AfterHours)

_DAY_US = 24 * 3600 * 1_000_000
_WEEK_US = 7 * _DAY_US


def _time_of_day_us(value: datetime.time) -> int:
    """Microseconds since local midnight (the wall clock, ignoring any tzinfo)."""
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


@dataclass(frozen=True)
class CallFacts:
    """What is known about a call when it is routed."""

    caller_number: str
    region: str
    intent: str
    vip: bool = False
    verification: str | None = None
    language: str = "zh"

    def __post_init__(self) -> None:
        if self.intent not in INTENTS:
            raise ValueError(f"unknown intent {self.intent!r}")
        if self.verification is not None and self.verification not in VERIFICATION_RESULTS:
            raise ValueError(f"unknown verification result {self.verification!r}")


@dataclass(frozen=True)
class TimeWindow:
    """A weekly window of local time; one that ends at or before its start runs past midnight."""

    days: frozenset[int]
    start: datetime.time
    end: datetime.time

    def __post_init__(self) -> None:
        if not self.days or any(day not in range(7) for day in self.days):
            raise ValueError(f"days must be weekday numbers 0..6, got {sorted(self.days)}")

    def _length_us(self) -> int:
        """How long the window lasts from its start (24 h when start == end)."""
        length = (_time_of_day_us(self.end) - _time_of_day_us(self.start)) % _DAY_US
        return length or _DAY_US

    def spans(self) -> list[tuple[int, int]]:
        """Half-open [start, end) spans in microseconds since Monday 00:00, split at week end."""
        out: list[tuple[int, int]] = []
        length = self._length_us()
        for day in sorted(self.days):
            begin = day * _DAY_US + _time_of_day_us(self.start)
            end = begin + length
            if end <= _WEEK_US:
                out.append((begin, end))
            else:  # Sunday night into Monday morning
                out.extend([(begin, _WEEK_US), (0, end - _WEEK_US)])
        return out

    def contains(self, local: datetime.datetime) -> bool:
        """Whether the local wall-clock time ``local`` falls inside the window (end excluded)."""
        point = local.weekday() * _DAY_US + _time_of_day_us(local.time())
        length = self._length_us()
        return any(
            (point - day * _DAY_US - _time_of_day_us(self.start)) % _WEEK_US < length
            for day in self.days
        )


@dataclass(frozen=True)
class Conditions:
    """When a rule applies; an empty condition matches anything."""

    intents: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    windows: tuple[TimeWindow, ...] = ()
    holidays: HolidayMode = "any"
    caller_tier: CallerTier = "any"
    verification: frozenset[str] = frozenset()

    def matches(self, facts: CallFacts, local: datetime.datetime, holiday: bool) -> bool:
        """Whether every condition holds for this call at local time ``local``."""
        if self.intents and facts.intent not in self.intents:
            return False
        if self.regions and facts.region not in self.regions:
            return False
        if self.windows and not any(window.contains(local) for window in self.windows):
            return False
        if (self.holidays == "exclude" and holiday) or (self.holidays == "only" and not holiday):
            return False
        if self.caller_tier != "any" and facts.vip != (self.caller_tier == "vip"):
            return False
        verification = facts.verification or "none"
        return not self.verification or verification in self.verification


@dataclass(frozen=True)
class Actions:
    """Where and how a matching call is queued."""

    target_region: str = CALLER_REGION
    skill: str | None = None
    priority: int = 0
    overflow_regions: tuple[str, ...] = ()
    overflow_after_s: float = 60.0
    ring_timeout_s: float = 15.0
    max_wait_s: float = 300.0
    open_hours: tuple[TimeWindow, ...] = ()
    open_on_holidays: bool = False
    after_hours: AfterHours = "callback"


@dataclass(frozen=True)
class Rule:
    """One routing rule: conditions, actions and its place in the evaluation order."""

    id: str
    name: str
    position: int
    conditions: Conditions
    actions: Actions
    enabled: bool = True


def _default_timezone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)


@dataclass(frozen=True)
class Calendar:
    """The timezone rule times are written in, and the public holidays."""

    timezone: zoneinfo.ZoneInfo = field(default_factory=_default_timezone)
    holidays: frozenset[datetime.date] = frozenset()


@dataclass(frozen=True)
class RoutingDecision:
    """The route for one call and every value that was used to choose it."""

    action: DecisionAction
    region: str
    skill: str | None
    priority: int
    overflow_regions: tuple[str, ...]
    overflow_after_s: float
    ring_timeout_s: float
    max_wait_s: float
    rule_id: str | None
    rule_name: str | None
    reason: str
    decided_at: datetime.datetime

    def to_json(self) -> dict[str, Any]:
        """The decision as JSON-ready values (the time as an ISO 8601 string)."""
        return {
            "action": self.action,
            "region": self.region,
            "skill": self.skill,
            "priority": self.priority,
            "overflow_regions": list(self.overflow_regions),
            "overflow_after_s": self.overflow_after_s,
            "ring_timeout_s": self.ring_timeout_s,
            "max_wait_s": self.max_wait_s,
            "rule_id": self.rule_id,
            "rule_name": self.rule_name,
            "reason": self.reason,
            "decided_at": self.decided_at.isoformat(),
        }


# The route when no rule matches: the caller's region, then every other region after 60 s.
DEFAULT_ACTIONS = Actions(overflow_regions=(ANY_REGION,))


def _closed_because(actions: Actions, local: datetime.datetime, holiday: bool) -> str | None:
    """Why the target is closed now, or None when it is open."""
    if not actions.open_hours:
        return None
    if holiday and not actions.open_on_holidays:
        return "holiday"
    if not any(window.contains(local) for window in actions.open_hours):
        return "outside open hours"
    return None


def decide(
    facts: CallFacts,
    rules: Sequence[Rule],
    now: datetime.datetime,
    calendar: Calendar,
    regions: Sequence[str],
) -> RoutingDecision:
    """Route one call: the first enabled matching rule by position wins, else the default."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    configured = tuple(dict.fromkeys(regions))
    if not configured:
        raise ValueError("at least one region must be configured")
    local = now.astimezone(calendar.timezone)
    holiday = local.date() in calendar.holidays
    ordered = sorted(rules, key=lambda rule: rule.position)  # stable: ties keep list order
    rule = next(
        (r for r in ordered if r.enabled and r.conditions.matches(facts, local, holiday)), None
    )
    actions = rule.actions if rule is not None else DEFAULT_ACTIONS
    notes = [f"rule '{rule.id}' matched" if rule is not None else "no rule matched; default route"]

    caller_region = facts.region if facts.region in configured else configured[0]
    caller_note = f"caller region '{facts.region}' not configured, using '{caller_region}'"
    if actions.target_region in configured:
        region = actions.target_region
    else:
        region = caller_region
        if actions.target_region != CALLER_REGION:
            notes.append(f"target region '{actions.target_region}' not configured, using caller's")
        if caller_region != facts.region:
            notes.append(caller_note)

    wanted = configured if ANY_REGION in actions.overflow_regions else actions.overflow_regions
    overflow = tuple(r for r in dict.fromkeys(wanted) if r != region and r in configured)

    closed = _closed_because(actions, local, holiday)
    action: DecisionAction = "queue" if closed is None else actions.after_hours
    if closed is None:
        notes.insert(1, "open")
    elif action == "queue":
        notes.insert(1, f"closed ({closed}), queued anyway")
    else:
        notes.insert(1, f"closed ({closed}), {action}")

    return RoutingDecision(
        action=action,
        region=region,
        skill=actions.skill if actions.skill is not None else facts.intent,
        priority=actions.priority,
        overflow_regions=overflow,
        overflow_after_s=actions.overflow_after_s,
        ring_timeout_s=actions.ring_timeout_s,
        max_wait_s=actions.max_wait_s,
        rule_id=rule.id if rule is not None else None,
        rule_name=rule.name if rule is not None else None,
        reason="; ".join(notes),
        decided_at=now,
    )


# ---- dict / YAML form ---------------------------------------------------------------------

_RULE_KEYS = ("id", "name", "position", "enabled", "when", "then")
_WHEN_KEYS = ("intents", "regions", "hours", "holidays", "caller_tier", "verification")
_THEN_KEYS = ("target_region", "skill", "priority", "overflow_regions", "overflow_after_s",
              "ring_timeout_s", "max_wait_s", "open_hours", "open_on_holidays", "after_hours")
_WINDOW_KEYS = ("days", "start", "end")


def _required(data: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in data:
        raise RuleError(child(path, key), "is required")
    return data[key]


def _section(data: Mapping[str, Any], key: str, path: str, allowed: Sequence[str]) -> Any:
    """The ``when`` or ``then`` object (absent or null = all defaults), keys checked."""
    value = data.get(key)
    section = as_mapping({} if value is None else value, child(path, key))
    check_keys(section, allowed, child(path, key))
    return section


def _windows_from(value: object, path: str) -> tuple[TimeWindow, ...]:
    """A list of {days, start, end} windows, none sharing a minute of the week with another."""
    windows: list[TimeWindow] = []
    for index, raw in enumerate(as_list(value, path)):
        where = item(path, index)
        entry = as_mapping(raw, where)
        check_keys(entry, _WINDOW_KEYS, where)
        window = TimeWindow(
            days=parse_days(_required(entry, "days", where), child(where, "days")),
            start=parse_clock(_required(entry, "start", where), child(where, "start")),
            end=parse_clock(_required(entry, "end", where), child(where, "end")),
        )
        for other_index, other in enumerate(windows):
            shared = _first_shared_point(window, other)
            if shared is not None:
                raise RuleError(
                    where,
                    f"overlaps {item(path.rsplit('.', 1)[-1], other_index)} "
                    f"(both include {format_week_point(shared)})",
                )
        windows.append(window)
    return tuple(windows)


def _first_shared_point(a: TimeWindow, b: TimeWindow) -> int | None:
    """The earliest point of the week inside both windows, or None."""
    shared = [
        max(a_begin, b_begin)
        for a_begin, a_end in a.spans()
        for b_begin, b_end in b.spans()
        if a_begin < b_end and b_begin < a_end
    ]
    return min(shared) if shared else None


def _conditions_from(when: Mapping[str, Any], path: str, regions: Sequence[str]) -> Conditions:
    intents = as_choices(when.get("intents", []), child(path, "intents"), INTENTS, "intent")
    caller_regions = as_choices(when.get("regions", []), child(path, "regions"), regions, "region")
    holidays = as_choice(when.get("holidays", "any"), child(path, "holidays"), HOLIDAY_MODES)
    tier = as_choice(when.get("caller_tier", "any"), child(path, "caller_tier"), CALLER_TIERS)
    verification = as_choices(
        when.get("verification", []), child(path, "verification"), VERIFICATION_RESULTS,
        "verification result",
    )
    return Conditions(
        intents=frozenset(intents),
        regions=frozenset(caller_regions),
        windows=_windows_from(when.get("hours", []), child(path, "hours")),
        holidays=cast(HolidayMode, holidays),
        caller_tier=cast(CallerTier, tier),
        verification=frozenset(verification),
    )


def _actions_from(then: Mapping[str, Any], path: str, regions: Sequence[str]) -> Actions:
    target = as_choice(
        then.get("target_region", CALLER_REGION), child(path, "target_region"),
        (CALLER_REGION, *regions),
    )
    skill_value = then.get("skill")
    skill = None if skill_value is None else as_str(skill_value, child(path, "skill"))
    overflow_path = child(path, "overflow_regions")
    overflow = as_choices(
        then.get("overflow_regions", []), overflow_path, (ANY_REGION, *regions), "region"
    )
    if ANY_REGION in overflow and len(overflow) > 1:
        raise RuleError(overflow_path, "'any' stands alone; it already means every other region")
    defaults = Actions()
    after_hours = as_choice(
        then.get("after_hours", defaults.after_hours), child(path, "after_hours"), AFTER_HOURS
    )
    return Actions(
        target_region=target,
        skill=skill,
        priority=as_int(then.get("priority", defaults.priority), child(path, "priority")),
        overflow_regions=overflow,
        overflow_after_s=as_seconds(
            then.get("overflow_after_s", defaults.overflow_after_s), child(path, "overflow_after_s")
        ),
        ring_timeout_s=as_seconds(
            then.get("ring_timeout_s", defaults.ring_timeout_s), child(path, "ring_timeout_s")
        ),
        max_wait_s=as_seconds(
            then.get("max_wait_s", defaults.max_wait_s), child(path, "max_wait_s")
        ),
        open_hours=_windows_from(then.get("open_hours", []), child(path, "open_hours")),
        open_on_holidays=as_bool(
            then.get("open_on_holidays", defaults.open_on_holidays),
            child(path, "open_on_holidays"),
        ),
        after_hours=cast(AfterHours, after_hours),
    )


def rule_from_dict(
    data: Mapping[str, Any], *, regions: Sequence[str], index: int | None = None
) -> Rule:
    """Validate one rule in dict form; RuleError names the field (``rules[index]....``)."""
    path = item("rules", index) if index is not None else ""
    data = as_mapping(data, path)
    check_keys(data, _RULE_KEYS, path)
    name = as_str(_required(data, "name", path), child(path, "name"))
    raw_id = data.get("id")
    rule_id = slug_id(name) if raw_id is None else as_rule_id(raw_id, child(path, "id"))
    position = as_int(_required(data, "position", path), child(path, "position"))
    enabled = as_bool(data.get("enabled", True), child(path, "enabled"))
    when_path, then_path = child(path, "when"), child(path, "then")
    conditions = _conditions_from(_section(data, "when", path, _WHEN_KEYS), when_path, regions)
    actions = _actions_from(_section(data, "then", path, _THEN_KEYS), then_path, regions)
    return Rule(rule_id, name, position, conditions, actions, enabled)


def _windows_to_list(windows: Sequence[TimeWindow]) -> list[dict[str, Any]]:
    return [
        {"days": format_days(w.days), "start": format_clock(w.start), "end": format_clock(w.end)}
        for w in windows
    ]


def _in_order(values: frozenset[str], known: Sequence[str]) -> list[str]:
    """Known values in their canonical order, anything else after them alphabetically."""
    return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), v))


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """The dict form of a rule, every field written out; ``rule_from_dict`` reads it back."""
    c, a = rule.conditions, rule.actions
    return {
        "id": rule.id,
        "name": rule.name,
        "position": rule.position,
        "enabled": rule.enabled,
        "when": {
            "intents": _in_order(c.intents, INTENTS),
            "regions": sorted(c.regions),
            "hours": _windows_to_list(c.windows),
            "holidays": c.holidays,
            "caller_tier": c.caller_tier,
            "verification": _in_order(c.verification, VERIFICATION_RESULTS),
        },
        "then": {
            "target_region": a.target_region,
            "skill": a.skill,
            "priority": a.priority,
            "overflow_regions": list(a.overflow_regions),
            "overflow_after_s": a.overflow_after_s,
            "ring_timeout_s": a.ring_timeout_s,
            "max_wait_s": a.max_wait_s,
            "open_hours": _windows_to_list(a.open_hours),
            "open_on_holidays": a.open_on_holidays,
            "after_hours": a.after_hours,
        },
    }


def _unique_id(base: str, taken: set[str]) -> str:
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}-{suffix}", suffix + 1
    return candidate


def rules_from_yaml(text: str, *, regions: Sequence[str]) -> list[Rule]:
    """Validate a ``{rules: [...]}`` YAML (or JSON) document; rules come back in file order."""
    document = load_yaml(text)
    if document is None:
        raise RuleError("rules", "the document is empty; expected an object with a 'rules' list")
    if not isinstance(document, Mapping):
        raise RuleError("rules", "expected an object with a 'rules' list at the top")
    check_keys(as_mapping(document, ""), ("rules",), "")
    entries = as_list(_required(document, "rules", ""), "rules")
    explicit = {e["id"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("id"), str)}
    taken: set[str] = set()
    first_use: dict[str, int] = {}
    rules: list[Rule] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, Mapping) and entry.get("id") is None:
            name = entry.get("name")
            if isinstance(name, str) and name.strip():
                # Two rules may share a name; their generated ids must still differ.
                entry = {**entry, "id": _unique_id(slug_id(name.strip()), taken | explicit)}
        rule = rule_from_dict(entry, regions=regions, index=index)
        if rule.id in first_use:
            raise RuleError(
                child(item("rules", index), "id"),
                f"duplicate id '{rule.id}' (also rules[{first_use[rule.id]}])",
            )
        first_use[rule.id] = index
        taken.add(rule.id)
        rules.append(rule)
    return rules


def rules_to_yaml(rules: Sequence[Rule]) -> str:
    """The YAML form of a rule list, as ``rules_from_yaml`` reads it."""
    return dump_yaml({"rules": [rule_to_dict(rule) for rule in rules]})


def load_default_rules(regions: Sequence[str]) -> list[Rule]:
    """The rules shipped with the product (``ivr/routing/defaults/rules.yaml``), validated."""
    source = resources.files("ivr.routing").joinpath("defaults").joinpath("rules.yaml")
    return rules_from_yaml(source.read_text(encoding="utf-8"), regions=regions)
