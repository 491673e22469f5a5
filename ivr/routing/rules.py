"""Routing rules: which region, skill group, priority and overflow a call gets, decided purely.

``decide`` takes the facts of one call, the rules, the time and the holiday calendar, and returns a
``RoutingDecision`` that records every value it used. The first enabled rule whose conditions all
hold wins, in ascending ``position`` (ties keep list order); no match gives the default route.
Rules travel as dicts (REST JSON) or YAML, read through the one schema in
``ivr.routing.rule_schema``; ``rule_from_dict`` adds the deployment's checks and names the bad
field.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from ivr.errors import RuleError
from ivr.routing.rule_schema import (
    ANY_REGION,
    CALLER_REGION,
    INTENTS,
    VERIFICATION_RESULTS,
    AfterHours,
    CallerTier,
    HolidayMode,
    RuleDocument,
    RuleIn,
    ThenModel,
    WhenModel,
    WindowModel,
    as_mapping,
    child,
    day_numbers,
    dump_yaml,
    format_clock,
    format_days,
    format_week_point,
    item,
    load_yaml,
    parse,
    parse_clock,
    slug_id,
    unique_id,
)

DEFAULT_TIMEZONE = "Asia/Shanghai"
# Paths beside the rule ids in the REST API, so no rule may take them as its id.
RESERVED_IDS = frozenset({"history", "export", "import"})
DecisionAction = Literal["queue", "callback", "announce_hangup"]

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


def _windows_from(windows: Sequence[WindowModel], path: str) -> tuple[TimeWindow, ...]:
    """Windows the schema accepted, none sharing a minute of the week with another."""
    out: list[TimeWindow] = []
    for index, entry in enumerate(windows):
        window = TimeWindow(day_numbers(entry.days), parse_clock(entry.start),
                            parse_clock(entry.end))
        for other_index, other in enumerate(out):
            shared = _first_shared_point(window, other)
            if shared is not None:
                raise RuleError(
                    item(path, index),
                    f"overlaps {item(path.rsplit('.', 1)[-1], other_index)} "
                    f"(both include {format_week_point(shared)})",
                )
        out.append(window)
    return tuple(out)


def _first_shared_point(a: TimeWindow, b: TimeWindow) -> int | None:
    """The earliest point of the week inside both windows, or None."""
    shared = [
        max(a_begin, b_begin)
        for a_begin, a_end in a.spans()
        for b_begin, b_end in b.spans()
        if a_begin < b_end and b_begin < a_end
    ]
    return min(shared) if shared else None


def _configured(values: Sequence[str], path: str, known: Sequence[str]) -> tuple[str, ...]:
    """``values`` when each is a configured region (or one of the words the field allows)."""
    for value in values:
        if value not in known:
            raise RuleError(path, f"unknown region '{value}' (expected one of {', '.join(known)})")
    return tuple(values)


def _conditions_from(when: WhenModel, path: str, regions: Sequence[str]) -> Conditions:
    return Conditions(
        intents=frozenset(when.intents),
        regions=frozenset(_configured(when.regions, child(path, "regions"), regions)),
        windows=_windows_from(when.hours, child(path, "hours")),
        holidays=when.holidays,
        caller_tier=when.caller_tier,
        verification=frozenset(when.verification),
    )


def _actions_from(then: ThenModel, path: str, regions: Sequence[str]) -> Actions:
    targets = (CALLER_REGION, *regions)
    if then.target_region not in targets:
        raise RuleError(child(path, "target_region"), f"unknown value '{then.target_region}' "
                        f"(expected one of {', '.join(targets)})")
    return Actions(
        target_region=then.target_region,
        skill=then.skill,
        priority=then.priority,
        overflow_regions=_configured(then.overflow_regions, child(path, "overflow_regions"),
                                     (ANY_REGION, *regions)),
        overflow_after_s=then.overflow_after_s,
        ring_timeout_s=then.ring_timeout_s,
        max_wait_s=then.max_wait_s,
        open_hours=_windows_from(then.open_hours, child(path, "open_hours")),
        open_on_holidays=then.open_on_holidays,
        after_hours=then.after_hours,
    )


def check_timezone(value: str, configured: str, path: str) -> None:
    """A rule's ``timezone`` only asserts the calendar's zone: it must be that zone."""
    try:
        zoneinfo.ZoneInfo(value)
    except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise RuleError(path, f"unknown time zone '{value[:64]}'") from exc
    if value != configured:
        raise RuleError(path, f"rule times are local to {configured} (routing.timezone); "
                        f"'{value}' is not supported per rule")


def rule_from_model(
    model: RuleIn, *, regions: Sequence[str], path: str = "", timezone: str = DEFAULT_TIMEZONE
) -> Rule:
    """A rule the schema accepted, checked against the deployment (configured regions, the
    calendar's zone, overlapping windows); RuleError names the field under ``path``."""
    if model.position is None:
        raise RuleError(child(path, "position"), "is required")
    if model.timezone is not None:
        check_timezone(model.timezone, timezone, child(path, "timezone"))
    when = model.when or WhenModel.model_validate({})
    then = model.then or ThenModel.model_validate({})
    conditions = _conditions_from(when, child(path, "when"), regions)
    actions = _actions_from(then, child(path, "then"), regions)
    rule_id = model.id if model.id is not None else slug_id(model.name)
    if rule_id in RESERVED_IDS:
        raise RuleError(child(path, "id"), f"'{rule_id}' is reserved (one of "
                        f"{', '.join(sorted(RESERVED_IDS))}); choose another id")
    return Rule(rule_id, model.name, model.position, conditions, actions, model.enabled)


def rule_from_dict(
    data: Mapping[str, Any], *, regions: Sequence[str], index: int | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> Rule:
    """Validate one rule in dict form; RuleError names the field (``rules[index]....``)."""
    path = item("rules", index) if index is not None else ""
    model = parse(RuleIn, as_mapping(data, path), path)
    return rule_from_model(model, regions=regions, path=path, timezone=timezone)


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


def document_from_yaml(text: str) -> RuleDocument:
    """A ``{rules: [...], timezone?: ZONE}`` YAML (or JSON) document read through the schema;
    rules without an id get one made from their name, unique within the document."""
    document = load_yaml(text)
    if document is None:
        raise RuleError("", "the document is empty; expected an object with a 'rules' list")
    if not isinstance(document, Mapping):
        raise RuleError("", "expected an object with a 'rules' list at the top")
    parsed = parse(RuleDocument, as_mapping(document, ""))
    taken = {rule.id for rule in parsed.rules if rule.id is not None}
    for rule in parsed.rules:
        if rule.id is None:  # two rules may share a name; their ids must still differ
            rule.id = unique_id(slug_id(rule.name), taken | RESERVED_IDS)
            taken.add(rule.id)
    first_use: dict[str, int] = {}
    for index, rule in enumerate(parsed.rules):
        if rule.id in first_use:
            raise RuleError(child(item("rules", index), "id"),
                            f"duplicate id '{rule.id}' (also rules[{first_use[rule.id]}])")
        first_use[str(rule.id)] = index
    return parsed


def rules_from_yaml(
    text: str, *, regions: Sequence[str], timezone: str = DEFAULT_TIMEZONE
) -> list[Rule]:
    """Validate a ``{rules: [...]}`` YAML (or JSON) document; rules come back in file order."""
    document = document_from_yaml(text)
    if document.timezone is not None:
        check_timezone(document.timezone, timezone, "timezone")
    return [rule_from_model(rule, regions=regions, path=item("rules", index), timezone=timezone)
            for index, rule in enumerate(document.rules)]


def rules_to_yaml(rules: Sequence[Rule]) -> str:
    """The YAML form of a rule list, as ``rules_from_yaml`` reads it."""
    return dump_yaml({"rules": [rule_to_dict(rule) for rule in rules]})


def load_default_rules(regions: Sequence[str]) -> list[Rule]:
    """The rules shipped with the product (``ivr/routing/defaults/rules.yaml``), validated."""
    source = resources.files("ivr.routing").joinpath("defaults").joinpath("rules.yaml")
    return rules_from_yaml(source.read_text(encoding="utf-8"), regions=regions)
