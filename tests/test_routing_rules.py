"""Routing rules engine: matching, actions, time windows, holidays, dict/YAML form, validation."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ivr.errors import IvrError, RuleError
from ivr.routing.rule_schema import INTENTS
from ivr.routing.rules import (
    Actions,
    Calendar,
    CallFacts,
    Conditions,
    RoutingDecision,
    Rule,
    TimeWindow,
    decide,
    load_default_rules,
    rule_from_dict,
    rule_to_dict,
    rules_from_yaml,
    rules_to_yaml,
)

pytestmark = pytest.mark.unit

REGIONS = ("north", "east", "south", "west")
SHANGHAI = ZoneInfo("Asia/Shanghai")
CAL = Calendar()
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
# 2024-06-03 is a Monday; the week's days follow.
DATE = {day: dt.date(2024, 6, 3 + day) for day in range(7)}


def at(day: int, clock: str, tz: dt.tzinfo = SHANGHAI) -> dt.datetime:
    """An aware time on a weekday of the reference week, "HH:MM"."""
    hour, minute = map(int, clock.split(":"))
    return dt.datetime.combine(DATE[day], dt.time(hour, minute), tzinfo=tz)


def hhmm(clock: str) -> dt.time:
    hour, minute = map(int, clock.split(":"))
    return dt.time(hour, minute)


def window(days: set[int], start: str, end: str) -> TimeWindow:
    return TimeWindow(frozenset(days), hhmm(start), hhmm(end))


def facts(**kw: Any) -> CallFacts:
    values: dict[str, Any] = {"caller_number": "13800210000", "region": "east", "intent": "billing"}
    values.update(kw)
    return CallFacts(**values)


def rule(
    rule_id: str = "r1",
    position: int = 10,
    *,
    when: Conditions | None = None,
    then: Actions | None = None,
    enabled: bool = True,
) -> Rule:
    return Rule(rule_id, f"rule {rule_id}", position, when or Conditions(), then or Actions(),
                enabled)


def route(
    rules: list[Rule],
    call: CallFacts | None = None,
    now: dt.datetime | None = None,
    calendar: Calendar = CAL,
    regions: tuple[str, ...] = REGIONS,
) -> RoutingDecision:
    return decide(call or facts(), rules, now or at(WED, "10:00"), calendar, regions)


def matched(when: Conditions, call: CallFacts | None = None, **kw: Any) -> bool:
    """Whether a single rule with these conditions matched."""
    return route([rule(when=when)], call, **kw).rule_id == "r1"


# ---- TimeWindow ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "clock", "inside"),
    [
        (FRI, "22:00", True),  # start minute is inside
        (FRI, "23:00", True),
        (SAT, "01:00", True),  # after midnight: still Friday's window
        (SAT, "05:59", True),
        (SAT, "06:00", False),  # end minute is outside
        (FRI, "21:59", False),
        (SAT, "23:00", False),  # Saturday's own night is not in a Friday-only window
        (THU, "23:00", False),
        (FRI, "01:00", False),  # Friday early morning belongs to Thursday's night
    ],
)
def test_window_across_midnight(day: int, clock: str, inside: bool) -> None:
    assert window({FRI}, "22:00", "06:00").contains(at(day, clock)) is inside


@pytest.mark.parametrize(
    ("day", "clock", "inside"),
    [(WED, "08:59", False), (WED, "09:00", True), (WED, "17:59", True), (WED, "18:00", False),
     (THU, "10:00", False)],
)
def test_window_within_one_day(day: int, clock: str, inside: bool) -> None:
    assert window({MON, WED}, "09:00", "18:00").contains(at(day, clock)) is inside


def test_sunday_night_window_runs_into_monday() -> None:
    sunday_night = window({SUN}, "22:00", "02:00")
    assert sunday_night.contains(at(SUN, "23:30"))
    assert sunday_night.contains(at(MON, "01:59"))
    assert not sunday_night.contains(at(MON, "02:00"))
    assert not sunday_night.contains(at(SAT, "23:30"))


def test_equal_start_and_end_is_a_whole_day_from_start() -> None:
    day = window({MON}, "08:00", "08:00")
    assert day.contains(at(MON, "08:00"))
    assert day.contains(at(TUE, "07:59"))
    assert not day.contains(at(TUE, "08:00"))
    assert not day.contains(at(MON, "07:59"))


def test_window_uses_seconds_at_the_boundary() -> None:
    evening = window({MON}, "09:00", "18:00")
    assert evening.contains(dt.datetime(2024, 6, 3, 17, 59, 59, 999_999))
    assert not evening.contains(dt.datetime(2024, 6, 3, 8, 59, 59))


@pytest.mark.parametrize("days", [set(), {7}, {-1}])
def test_window_rejects_bad_days(days: set[int]) -> None:
    with pytest.raises(ValueError, match="days"):
        window(days, "09:00", "18:00")


clock_minutes = st.integers(0, 24 * 60 - 1)


@given(
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=clock_minutes,
    end=clock_minutes,
    probe=st.integers(0, 7 * 24 * 60 - 1),
    second=st.integers(0, 59),
)
def test_window_agrees_with_minute_of_week_enumeration(
    days: frozenset[int], start: int, end: int, probe: int, second: int
) -> None:
    length = (end - start) % (24 * 60) or 24 * 60
    week = 7 * 24 * 60
    covered = {(day * 24 * 60 + start + k) % week for day in days for k in range(length)}
    tw = TimeWindow(days, dt.time(*divmod(start, 60)), dt.time(*divmod(end, 60)))
    moment = dt.datetime(2024, 6, 3) + dt.timedelta(minutes=probe, seconds=second)
    assert tw.contains(moment) is (probe in covered)


# ---- conditions ---------------------------------------------------------------------------


def test_intent_condition() -> None:
    when = Conditions(intents=frozenset({"billing", "complaint"}))
    assert matched(when, facts(intent="billing"))
    assert matched(when, facts(intent="complaint"))
    assert not matched(when, facts(intent="technical_fault"))


def test_caller_region_condition() -> None:
    when = Conditions(regions=frozenset({"east"}))
    assert matched(when, facts(region="east"))
    assert not matched(when, facts(region="south"))
    assert not matched(when, facts(region="nowhere"))


@pytest.mark.parametrize(
    ("day", "clock", "inside"),
    [(FRI, "23:00", True), (SAT, "01:00", True), (FRI, "22:00", True), (SAT, "05:59", True),
     (SAT, "06:00", False), (FRI, "21:59", False), (SAT, "23:00", False)],
)
def test_window_condition_across_midnight(day: int, clock: str, inside: bool) -> None:
    when = Conditions(windows=(window({FRI}, "22:00", "06:00"),))
    assert matched(when, now=at(day, clock)) is inside


def test_any_of_several_windows_matches() -> None:
    when = Conditions(windows=(window({MON}, "09:00", "12:00"), window({TUE}, "14:00", "16:00")))
    assert matched(when, now=at(MON, "11:00"))
    assert matched(when, now=at(TUE, "15:00"))
    assert not matched(when, now=at(MON, "15:00"))


@pytest.mark.parametrize(
    ("mode", "on_holiday", "expected"),
    [("any", True, True), ("any", False, True), ("exclude", True, False),
     ("exclude", False, True), ("only", True, True), ("only", False, False)],
)
def test_holiday_condition(mode: Any, on_holiday: bool, expected: bool) -> None:
    calendar = Calendar(holidays=frozenset({DATE[WED]} if on_holiday else {DATE[THU]}))
    assert matched(Conditions(holidays=mode), now=at(WED, "10:00"), calendar=calendar) is expected


@pytest.mark.parametrize(
    ("tier", "vip", "expected"),
    [("any", True, True), ("any", False, True), ("vip", True, True), ("vip", False, False),
     ("standard", True, False), ("standard", False, True)],
)
def test_caller_tier_condition(tier: Any, vip: bool, expected: bool) -> None:
    assert matched(Conditions(caller_tier=tier), facts(vip=vip)) is expected


@pytest.mark.parametrize(
    ("wanted", "result", "expected"),
    [({"accept"}, "accept", True), ({"accept"}, "reject", False), ({"accept"}, None, False),
     ({"accept", "uncertain"}, "uncertain", True), ({"none"}, None, True),
     ({"none"}, "none", True), ({"none"}, "accept", False), (set(), "reject", True),
     (set(), None, True)],
)
def test_verification_condition(wanted: set[str], result: str | None, expected: bool) -> None:
    when = Conditions(verification=frozenset(wanted))
    assert matched(when, facts(verification=result)) is expected


def test_every_condition_must_hold() -> None:
    when = Conditions(
        intents=frozenset({"billing"}), regions=frozenset({"east"}),
        windows=(window({WED}, "09:00", "18:00"),), holidays="exclude", caller_tier="vip",
        verification=frozenset({"accept"}),
    )
    good = facts(vip=True, verification="accept")
    assert matched(when, good)
    assert not matched(when, facts(vip=True, verification="accept", intent="complaint"))
    assert not matched(when, facts(vip=True, verification="accept", region="west"))
    assert not matched(when, good, now=at(WED, "19:00"))
    assert not matched(when, good, calendar=Calendar(holidays=frozenset({DATE[WED]})))
    assert not matched(when, facts(verification="accept"))
    assert not matched(when, facts(vip=True, verification="reject"))


# ---- actions ------------------------------------------------------------------------------


def test_target_caller_region_and_fixed_region() -> None:
    assert route([rule()], facts(region="south")).region == "south"
    assert route([rule(then=Actions(target_region="north"))], facts(region="south")).region == (
        "north"
    )


def test_skill_defaults_to_intent() -> None:
    assert route([rule()], facts(intent="ticket_status")).skill == "ticket_status"
    assert route([rule(then=Actions(skill="security"))]).skill == "security"


def test_priority_and_timings_are_recorded() -> None:
    then = Actions(priority=7, overflow_after_s=45.0, ring_timeout_s=20.0, max_wait_s=120.0)
    decision = route([rule(then=then)])
    assert (decision.priority, decision.overflow_after_s, decision.ring_timeout_s,
            decision.max_wait_s) == (7, 45.0, 20.0, 120.0)


def test_overflow_any_expands_to_other_regions_in_configured_order() -> None:
    decision = route([rule(then=Actions(overflow_regions=("any",)))], facts(region="south"))
    assert decision.overflow_regions == ("north", "east", "west")
    fixed = route([rule(then=Actions(target_region="west", overflow_regions=("any",)))])
    assert fixed.overflow_regions == ("north", "east", "south")


def test_overflow_list_drops_target_duplicates_and_unconfigured_regions() -> None:
    then = Actions(overflow_regions=("east", "west", "north", "west"))
    assert route([rule(then=then)]).overflow_regions == ("west", "north")
    only_two = route([rule(then=then)], regions=("east", "west"))
    assert only_two.overflow_regions == ("west",)
    assert route([rule()]).overflow_regions == ()


@pytest.mark.parametrize("after_hours", ["callback", "announce_hangup", "queue"])
def test_open_hours_and_each_after_hours_action(after_hours: Any) -> None:
    then = Actions(open_hours=(window(set(range(7)), "08:00", "22:00"),), after_hours=after_hours)
    inside = route([rule(then=then)], now=at(WED, "21:59"))
    assert inside.action == "queue"
    assert inside.reason == "rule 'r1' matched; open"
    outside = route([rule(then=then)], now=at(WED, "22:00"))
    assert outside.action == after_hours
    assert "closed (outside open hours)" in outside.reason
    assert outside.rule_id == "r1"
    assert route([rule(then=then)], now=at(THU, "07:59")).action == after_hours


def test_no_open_hours_means_always_open_even_on_holidays() -> None:
    calendar = Calendar(holidays=frozenset({DATE[SUN]}))
    decision = route([rule()], now=at(SUN, "03:00"), calendar=calendar)
    assert decision.action == "queue"


def test_holiday_closes_unless_open_on_holidays() -> None:
    hours = (window(set(range(7)), "08:00", "22:00"),)
    calendar = Calendar(holidays=frozenset({DATE[WED]}))
    closed = route([rule(then=Actions(open_hours=hours))], now=at(WED, "10:00"),
                   calendar=calendar)
    assert closed.action == "callback"
    assert "closed (holiday)" in closed.reason
    holiday_open = Actions(open_hours=hours, open_on_holidays=True)
    assert route([rule(then=holiday_open)], now=at(WED, "10:00"),
                 calendar=calendar).action == "queue"
    # Open on holidays still means within open hours.
    assert route([rule(then=holiday_open)], now=at(WED, "23:00"),
                 calendar=calendar).action == "callback"


# ---- rule order, default, time and region handling ---------------------------------------


def test_disabled_rules_are_skipped() -> None:
    rules = [rule("off", 1, then=Actions(priority=9), enabled=False), rule("on", 2)]
    assert route(rules).rule_id == "on"
    assert route([rule("off", enabled=False)]).rule_id is None


def test_position_not_list_order_decides() -> None:
    rules = [rule("late", 20, then=Actions(priority=1)),
             rule("early", 10, then=Actions(priority=2))]
    decision = route(rules)
    assert (decision.rule_id, decision.rule_name, decision.priority) == ("early", "rule early", 2)


def test_equal_positions_keep_list_order() -> None:
    assert route([rule("first", 5), rule("second", 5)]).rule_id == "first"


def test_first_matching_rule_wins_over_later_matches() -> None:
    rules = [rule("complaints", 10, when=Conditions(intents=frozenset({"complaint"}))),
             rule("catch-all", 20)]
    assert route(rules).rule_id == "catch-all"
    assert route(rules, facts(intent="complaint")).rule_id == "complaints"


@pytest.mark.parametrize("rules", [[], [rule(when=Conditions(intents=frozenset({"capacity"})))]])
def test_no_match_gives_default_route(rules: list[Rule]) -> None:
    now = at(SUN, "03:00")
    decision = route(rules, facts(region="west", intent="human_agent"), now=now)
    assert decision == RoutingDecision(
        action="queue", region="west", skill="human_agent", priority=0,
        overflow_regions=("north", "east", "south"), overflow_after_s=60.0, ring_timeout_s=15.0,
        max_wait_s=300.0, rule_id=None, rule_name=None,
        reason="no rule matched; default route; open", decided_at=now,
    )


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(facts(), [], dt.datetime(2024, 6, 5, 10, 0), CAL, REGIONS)


def test_no_regions_is_rejected() -> None:
    with pytest.raises(ValueError, match="region"):
        decide(facts(), [], at(WED, "10:00"), CAL, ())


def test_utc_now_is_judged_on_the_shanghai_local_day() -> None:
    # Friday 20:00 UTC is Saturday 04:00 in Shanghai.
    now = dt.datetime(2024, 6, 7, 20, 0, tzinfo=dt.UTC)
    saturday_night = Conditions(windows=(window({SAT}, "00:00", "06:00"),))
    friday_evening = Conditions(windows=(window({FRI}, "18:00", "23:00"),))
    assert matched(saturday_night, now=now)
    assert not matched(friday_evening, now=now)
    on_saturday = Calendar(holidays=frozenset({DATE[SAT]}))
    on_friday = Calendar(holidays=frozenset({DATE[FRI]}))
    assert matched(Conditions(holidays="only"), now=now, calendar=on_saturday)
    assert not matched(Conditions(holidays="only"), now=now, calendar=on_friday)
    assert route([], now=now).decided_at is now


def test_calendar_timezone_is_used() -> None:
    now = at(SAT, "04:00")  # Friday 20:00 UTC
    friday_evening = Conditions(windows=(window({FRI}, "18:00", "23:00"),))
    assert matched(friday_evening, now=now, calendar=Calendar(timezone=ZoneInfo("UTC")))
    assert not matched(friday_evening, now=now)
    assert Calendar().timezone == SHANGHAI


def test_unconfigured_caller_region_falls_back_to_first_region() -> None:
    decision = route([rule(then=Actions(overflow_regions=("any",)))], facts(region="tibet"))
    assert decision.region == "north"
    assert decision.overflow_regions == ("east", "south", "west")
    assert "caller region 'tibet' not configured, using 'north'" in decision.reason
    fixed = route([rule(then=Actions(target_region="south"))], facts(region="tibet"))
    assert fixed.region == "south"
    assert "tibet" not in fixed.reason


def test_unconfigured_target_region_falls_back_to_callers() -> None:
    decision = route([rule(then=Actions(target_region="west"))], regions=("north", "east"))
    assert decision.region == "east"
    assert "target region 'west' not configured" in decision.reason


def test_call_facts_are_checked() -> None:
    with pytest.raises(ValueError, match="intent"):
        facts(intent="refund")
    with pytest.raises(ValueError, match="verification"):
        facts(verification="maybe")


def test_decision_to_json() -> None:
    then = Actions(open_hours=(window({WED}, "08:00", "09:00"),), overflow_regions=("any",))
    decision = route([rule(then=then)], now=at(WED, "10:00"))
    data = json.loads(json.dumps(decision.to_json()))
    assert data == {
        "action": "callback", "region": "east", "skill": "billing", "priority": 0,
        "overflow_regions": ["north", "south", "west"], "overflow_after_s": 60.0,
        "ring_timeout_s": 15.0, "max_wait_s": 300.0, "rule_id": "r1", "rule_name": "rule r1",
        "reason": "rule 'r1' matched; closed (outside open hours), callback",
        "decided_at": "2024-06-05T10:00:00+08:00",
    }


region_pool = ("north", "east", "south", "west", "hk", "tibet")


@given(
    regions=st.lists(st.sampled_from(region_pool), min_size=1, unique=True),
    caller_region=st.sampled_from(region_pool),
    target=st.sampled_from(("caller", *region_pool)),
    overflow=st.one_of(st.just(("any",)), st.lists(st.sampled_from(region_pool)).map(tuple)),
    intent=st.sampled_from(INTENTS),
    use_rule=st.booleans(),
)
def test_decide_only_routes_to_configured_regions(
    regions: list[str], caller_region: str, target: str, overflow: tuple[str, ...], intent: str,
    use_rule: bool,
) -> None:
    then = Actions(target_region=target, overflow_regions=overflow)
    rules = [rule(then=then)] if use_rule else []
    decision = decide(facts(region=caller_region, intent=intent), rules, at(MON, "12:00"), CAL,
                      regions)
    assert decision.region in regions
    assert set(decision.overflow_regions) <= set(regions) - {decision.region}
    assert len(set(decision.overflow_regions)) == len(decision.overflow_regions)


# ---- dict and YAML form -------------------------------------------------------------------


def full_rule_dict() -> dict[str, Any]:
    """A rule with every field set away from its default."""
    return {
        "id": "vip-billing-east",
        "name": "VIP billing in the east",
        "position": 10,
        "enabled": False,
        "when": {
            "intents": ["billing", "complaint"],
            "regions": ["east", "south"],
            "hours": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00",
                       "end": "18:00"},
                      {"days": ["fri"], "start": "22:00", "end": "06:00"}],
            "holidays": "exclude",
            "caller_tier": "vip",
            "verification": ["accept", "none"],
        },
        "then": {
            "target_region": "north",
            "skill": "billing-vip",
            "priority": 10,
            "overflow_regions": ["west", "south"],
            "overflow_after_s": 45.0,
            "ring_timeout_s": 20.0,
            "max_wait_s": 240.0,
            "open_hours": [{"days": ["sat", "sun"], "start": "10:00", "end": "16:00"}],
            "open_on_holidays": True,
            "after_hours": "announce_hangup",
        },
    }


def test_full_rule_round_trips_through_dict() -> None:
    data = full_rule_dict()
    parsed = rule_from_dict(data, regions=REGIONS)
    assert parsed.conditions.windows[1] == window({FRI}, "22:00", "06:00")
    assert parsed.conditions.verification == frozenset({"accept", "none"})
    assert parsed.actions.overflow_regions == ("west", "south")
    assert rule_to_dict(parsed) == data
    assert rule_from_dict(rule_to_dict(parsed), regions=REGIONS) == parsed


def test_minimal_rule_takes_defaults() -> None:
    parsed = rule_from_dict({"name": "Catch all", "position": 1}, regions=REGIONS)
    assert parsed == Rule("catch-all", "Catch all", 1, Conditions(), Actions(), True)
    assert rule_from_dict({"name": "x", "position": 1, "when": None, "then": None},
                          regions=REGIONS).conditions == Conditions()
    assert rule_from_dict(rule_to_dict(parsed), regions=REGIONS) == parsed


def test_generated_ids_are_url_safe() -> None:
    assert rule_from_dict({"name": "  VIP callers, first!  ", "position": 1},
                          regions=REGIONS).id == "vip-callers-first"
    chinese = rule_from_dict({"name": "投诉优先", "position": 1}, regions=REGIONS)
    assert re.fullmatch(r"rule-[0-9a-f]{8}", chinese.id)
    assert chinese.name == "投诉优先"


def test_rules_round_trip_through_yaml() -> None:
    rules = [rule_from_dict(full_rule_dict(), regions=REGIONS),
             rule_from_dict({"name": "投诉优先", "position": 5, "then": {"priority": 3}},
                            regions=REGIONS)]
    text = rules_to_yaml(rules)
    assert "投诉优先" in text
    assert 'end: "18:00"' in text  # quoted: unquoted YAML 1.1 reads 18:00 as 1080
    assert rules_from_yaml(text, regions=REGIONS) == rules
    assert rules_from_yaml(rules_to_yaml([]), regions=REGIONS) == []


def test_json_documents_are_accepted() -> None:
    text = json.dumps({"rules": [full_rule_dict()]})
    assert rules_from_yaml(text, regions=REGIONS) == [rule_from_dict(full_rule_dict(),
                                                                     regions=REGIONS)]


def test_rules_with_the_same_name_get_distinct_ids() -> None:
    text = yaml.safe_dump({"rules": [{"name": "Night", "position": 1},
                                     {"name": "Night", "position": 2},
                                     {"id": "night-2", "name": "Other", "position": 3}]})
    assert [r.id for r in rules_from_yaml(text, regions=REGIONS)] == ["night", "night-3",
                                                                      "night-2"]


def test_rule_from_dict_paths_without_and_with_index() -> None:
    bad = {"name": "x", "position": 1, "when": {"intents": ["biling"]}}
    with pytest.raises(RuleError) as plain:
        rule_from_dict(bad, regions=REGIONS)
    assert plain.value.field == "when.intents"
    with pytest.raises(RuleError) as indexed:
        rule_from_dict(bad, regions=REGIONS, index=2)
    assert indexed.value.field == "rules[2].when.intents"
    assert "unknown intent 'biling'" in indexed.value.message
    assert str(indexed.value).startswith("rules[2].when.intents: ")


def test_rule_error_is_an_ivr_error_and_pickles() -> None:
    err = RuleError("rules[0].name", "must not be empty")
    assert isinstance(err, IvrError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.field, again.message, str(again)) == (err.field, err.message, str(err))


DELETE = object()


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set (or delete) a dotted path like "when.hours.0.start" in a rule dict."""
    *parents, last = dotted.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    key: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del target[key]
    else:
        target[key] = value


OVERLAP = [{"days": ["mon", "tue"], "start": "09:00", "end": "18:00"},
           {"days": ["tue"], "start": "17:00", "end": "20:00"}]
NIGHT_OVERLAP = [{"days": ["fri"], "start": "22:00", "end": "06:00"},
                 {"days": ["sat"], "start": "05:00", "end": "07:00"}]


@pytest.mark.parametrize(
    ("dotted", "value", "field", "fragment"),
    [
        ("when.intents", ["billing", "biling"], "when.intents", "unknown intent 'biling'"),
        ("when.intents", "billing", "when.intents", "expected a list"),
        ("when.regions", ["east", "mars"], "when.regions", "unknown region 'mars'"),
        ("then.target_region", "mars", "then.target_region", "unknown value 'mars'"),
        ("then.overflow_regions", ["west", "mars"], "then.overflow_regions", "'mars'"),
        ("then.overflow_regions", ["any", "west"], "then.overflow_regions", "stands alone"),
        ("when.hours.0.days", ["mon", "funday"], "when.hours[0].days", "unknown day 'funday'"),
        ("when.hours.0.days", [], "when.hours[0].days", "at least one day"),
        ("when.hours.1.start", "9am", "when.hours[1].start", "HH:MM"),
        ("when.hours.1.start", "24:00", "when.hours[1].start", "HH:MM"),
        ("when.hours.0.end", "18:60", "when.hours[0].end", "HH:MM"),
        ("when.hours.0.end", 1080, "when.hours[0].end", "quoted"),
        ("when.hours.0.end", DELETE, "when.hours[0].end", "is required"),
        ("when.hours.0.day", ["mon"], "when.hours[0].day", "did you mean 'days'"),
        ("when.hours", OVERLAP, "when.hours[1]", "overlaps hours[0] (both include tue 17:00)"),
        ("when.hours", NIGHT_OVERLAP, "when.hours[1]", "both include sat 05:00"),
        ("then.open_hours", OVERLAP, "then.open_hours[1]", "overlaps open_hours[0]"),
        ("when.holidays", "sometimes", "when.holidays", "unknown value 'sometimes'"),
        ("when.caller_tier", "gold", "when.caller_tier", "unknown value 'gold'"),
        ("when.verification", ["maybe"], "when.verification", "verification result 'maybe'"),
        ("when.intent", ["billing"], "when.intent", "did you mean 'intents'"),
        ("when", ["billing"], "when", "expected an object"),
        ("then.skil", "x", "then.skil", "unknown key"),
        ("then.skill", 5, "then.skill", "expected a string"),
        ("then.skill", "  ", "then.skill", "must not be empty"),
        ("then.priority", "high", "then.priority", "expected an integer"),
        ("then.priority", True, "then.priority", "expected an integer"),
        ("then.priority", 1.5, "then.priority", "expected an integer"),
        ("then.overflow_after_s", -5, "then.overflow_after_s", "positive"),
        ("then.ring_timeout_s", 0, "then.ring_timeout_s", "positive"),
        ("then.max_wait_s", "300", "then.max_wait_s", "number of seconds"),
        ("then.max_wait_s", float("inf"), "then.max_wait_s", "positive"),
        ("then.after_hours", "voicemail", "then.after_hours", "unknown value 'voicemail'"),
        ("then.open_on_holidays", "no", "then.open_on_holidays", "true or false"),
        ("enabled", "yes", "enabled", "true or false"),
        ("priorty", 3, "priorty", "unknown key"),
        ("name", DELETE, "name", "is required"),
        ("name", "", "name", "must not be empty"),
        ("position", DELETE, "position", "is required"),
        ("position", "1", "position", "expected an integer"),
        ("id", "a/b", "id", "not a valid id"),
        ("id", 7, "id", "expected a string"),
    ],
)
def test_validation_names_the_field(dotted: str, value: Any, field: str, fragment: str) -> None:
    data = full_rule_dict()
    _set(data, dotted, value)
    other = {"id": "other", "name": "Other", "position": 1}
    text = json.dumps({"rules": [other, data]})  # JSON, so 1080 and inf survive as they are
    with pytest.raises(RuleError) as caught:
        rules_from_yaml(text.replace("Infinity", ".inf"), regions=REGIONS)
    assert caught.value.field == f"rules[1].{field}"
    assert fragment in caught.value.message


def test_adjacent_windows_do_not_overlap() -> None:
    data = full_rule_dict()
    data["when"]["hours"] = [{"days": ["mon"], "start": "09:00", "end": "12:00"},
                             {"days": ["mon"], "start": "12:00", "end": "18:00"},
                             {"days": ["mon"], "start": "18:00", "end": "09:00"}]
    assert len(rule_from_dict(data, regions=REGIONS).conditions.windows) == 3


def test_unquoted_yaml_time_is_explained() -> None:
    text = "rules:\n  - name: x\n    position: 1\n    when:\n      hours:\n" \
           "        - {days: [mon], start: 09:00, end: 18:00}\n"
    with pytest.raises(RuleError) as caught:
        rules_from_yaml(text, regions=REGIONS)
    assert caught.value.field == "rules[0].when.hours[0].end"
    assert 'quoted "HH:MM"' in caught.value.message


def test_duplicate_ids_are_rejected() -> None:
    text = yaml.safe_dump({"rules": [{"id": "a", "name": "A", "position": 1},
                                     {"id": "b", "name": "B", "position": 2},
                                     {"id": "a", "name": "C", "position": 3}]})
    with pytest.raises(RuleError) as caught:
        rules_from_yaml(text, regions=REGIONS)
    assert caught.value.field == "rules[2].id"
    assert "duplicate id 'a' (also rules[0])" in caught.value.message


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("", "", "empty"),
        ("- a\n- b\n", "", "'rules' list"),
        ("rules: {a: 1}\n", "rules", "expected a list"),
        ("rulez: []\n", "rulez", "did you mean 'rules'"),
        ("{}\n", "rules", "is required"),
        ("rules:\n  - just a string\n", "rules[0]", "expected an object"),
        ("rules: [\n  {name: x\n", "", "invalid YAML at line"),
    ],
)
def test_document_shape_errors(text: str, field: str, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        rules_from_yaml(text, regions=REGIONS)
    assert caught.value.field == field
    assert fragment in caught.value.message


# ---- shipped defaults ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_rules() -> list[Rule]:
    return load_default_rules(REGIONS)


def test_default_rules_route_a_weekday_billing_call_home(default_rules: list[Rule]) -> None:
    decision = route(default_rules, facts(region="east", intent="billing"), now=at(WED, "10:00"))
    assert (decision.action, decision.region, decision.skill) == ("queue", "east", "billing")
    assert decision.overflow_regions == ("north", "south", "west")
    assert decision.overflow_after_s == 60.0
    assert decision.rule_id is not None


@pytest.mark.parametrize(
    ("call", "skill", "priority"),
    [(facts(vip=True), "billing", 10),
     # Identity not confirmed (no voiceprint, or it failed): tier 3, the security experts.
     (facts(intent="account_security"), "security_expert", 6),
     (facts(intent="account_security", verification="reject"), "security_expert", 6),
     (facts(intent="account_security", verification="accept"), "security", 5),
     (facts(intent="account_security", vip=True), "security_expert", 6),
     (facts(intent="account_security", vip=True, verification="accept"), "security", 10),
     (facts(intent="complaint"), "complaint", 3), (facts(intent="capacity"), "capacity", 0)],
)
def test_default_rules_priorities(
    default_rules: list[Rule], call: CallFacts, skill: str, priority: int
) -> None:
    decision = route(default_rules, call, now=at(SAT, "12:00"))
    assert (decision.action, decision.skill, decision.priority) == ("queue", skill, priority)


def test_default_rules_offer_callback_after_hours(default_rules: list[Rule]) -> None:
    for call in (facts(), facts(vip=True), facts(intent="account_security")):
        assert route(default_rules, call, now=at(WED, "22:30")).action == "callback"
        assert route(default_rules, call, now=at(THU, "07:59")).action == "callback"
        assert route(default_rules, call, now=at(THU, "08:00")).action == "queue"


def test_default_rules_fit_any_region_list() -> None:
    rules = load_default_rules(["beijing", "shanghai"])
    decision = route(rules, facts(region="shanghai"), regions=("beijing", "shanghai"))
    assert (decision.region, decision.overflow_regions) == ("shanghai", ("beijing",))


def test_each_default_rule_says_why() -> None:
    import ivr.routing

    lines = (Path(ivr.routing.__file__).parent / "defaults" / "rules.yaml").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- id:")]
    assert 4 <= len(starts) <= 6
    assert all(lines[i - 1].lstrip().startswith("#") for i in starts)
