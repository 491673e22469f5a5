"""Routing rules as managed data over REST, on real SQLite with real bearer tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from fastapi.testclient import TestClient

from ivr.api.app import ApiServices, create_app
from ivr.api.routing import rules_router
from ivr.auth.tokens import TokenStore
from ivr.health import Readiness
from ivr.routing.manage import MAX_EXPORT_BYTES, diff_bodies, parse_if_match
from ivr.routing.rules import rules_from_yaml
from ivr.routing.service import RoutingService
from ivr.settings import RoutingSettings, SecuritySettings
from ivr.store.db import make_engine, migrate
from ivr.store.repository import Store

pytestmark = pytest.mark.unit
REGIONS = ("north", "east", "south", "west")
RULES = "/api/v1/routing/rules"
SHIPPED = ["security-experts", "vip-security", "vip-first", "account-security", "complaints",
           "everyone-else"]
# A Wednesday afternoon in Shanghai: inside the shipped rules' staffed hours.
WEDNESDAY = datetime(2025, 3, 12, 15, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


@dataclass
class Api:
    """A client on a fresh store with the shipped rules, and one token per role."""

    client: TestClient
    routing: RoutingService
    tokens: TokenStore
    headers: dict[str, dict[str, str]]

    def as_(self, role: str, **extra: str) -> dict[str, str]:
        return {**self.headers[role], **extra}


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine)
    settings = RoutingSettings(agent_skills={"agent-north-1": ["billing_expert", "security"]})
    routing = RoutingService(store, settings, REGIONS)
    assert routing.seed_rules() is True
    tokens = TokenStore(engine)
    services = ApiServices(Readiness(), store, routing, tokens=tokens)
    app = create_app(services)
    with TestClient(app) as probe:
        if probe.get(RULES).status_code == 404:  # create_app does not wire the rules yet
            app.include_router(rules_router(services))
    headers = {}
    store.upsert_agents([("agent-north-1", "north", ["billing_expert", "security"])])
    for role in ("admin", "supervisor", "security", "agent"):
        token, _ = tokens.create(role, f"{role}-alice",
                                 agent_id="agent-north-1" if role == "agent" else None)
        headers[role] = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        yield Api(client, routing, tokens, headers)


def billing_rule(**then: Any) -> dict[str, Any]:
    """A rule sending billing calls to the north region, ahead of the shipped rules."""
    return {"id": "billing-north", "name": "Billing to the north", "position": 1,
            "when": {"intents": ["billing"]},
            "then": {"target_region": "north", "overflow_regions": ["east"], **then}}


def error_locs(response: Any) -> list[list[Any]]:
    body = response.json()
    assert set(body) == {"status", "error_id", "message", "details"}
    assert body["status"] == response.status_code
    return [d["loc"] for d in body["details"]]


# ---- CRUD ------------------------------------------------------------------------------------


def test_crud_happy_path(api: Api) -> None:
    client, admin = api.client, api.as_("admin")
    listed = client.get(RULES, headers=api.as_("supervisor"))
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["rules"]] == SHIPPED
    assert listed.headers["ETag"] == listed.json()["etag"]
    assert all(r["version"] == 1 and r["body"]["id"] == r["id"] for r in listed.json()["rules"])

    created = client.post(RULES, json=billing_rule(), headers=admin)
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == f"{RULES}/billing-north"
    assert created.headers["ETag"] == '"1"'
    rule = created.json()
    assert (rule["id"], rule["position"], rule["version"]) == ("billing-north", 1, 1)
    assert rule["body"]["then"]["target_region"] == "north"
    assert rule["body"]["then"]["ring_timeout_s"] == 15.0  # defaults written out
    assert rule["updated_by"].startswith("admin-alice (admin, token ")

    got = client.get(created.headers["Location"], headers=api.as_("supervisor"))
    assert got.status_code == 200 and got.headers["ETag"] == '"1"'
    assert got.json()["body"] == rule["body"]
    after_create = client.get(RULES, headers=admin)
    assert after_create.json()["rules"][0]["id"] == "billing-north"  # position 1 comes first
    assert after_create.headers["ETag"] != listed.headers["ETag"]

    replaced = client.put(f"{RULES}/billing-north", json=billing_rule(target_region="south"),
                          headers=api.as_("admin", **{"If-Match": '"1"'}))
    assert replaced.status_code == 200, replaced.text
    assert replaced.headers["ETag"] == '"2"' and replaced.json()["version"] == 2
    assert replaced.json()["body"]["then"]["target_region"] == "south"

    # Replacing without id or position keeps both.
    same = {k: v for k, v in billing_rule(target_region="west").items()
            if k not in ("id", "position")}
    kept = client.put(f"{RULES}/billing-north", json=same,
                      headers=api.as_("admin", **{"If-Match": '"2"'}))
    assert kept.status_code == 200 and kept.json()["position"] == 1
    assert kept.json()["version"] == 3

    deleted = client.delete(f"{RULES}/billing-north",
                            headers=api.as_("admin", **{"If-Match": '"3"'}))
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.get(f"{RULES}/billing-north", headers=admin).status_code == 404
    assert [r["id"] for r in client.get(RULES, headers=admin).json()["rules"]] == SHIPPED

    # A re-created rule continues after its deleted versions: an old ETag never matches it.
    again = client.post(RULES, json=billing_rule(), headers=admin)
    assert again.status_code == 201 and again.headers["ETag"] == '"4"'


def test_create_fills_position_and_id_and_refuses_a_taken_id(api: Api) -> None:
    client, admin = api.client, api.as_("admin")
    made = client.post(RULES, json={"name": "Complaints", "then": {"priority": 4}}, headers=admin)
    assert made.status_code == 201, made.text
    assert made.json()["id"] == "complaints-2"  # made from the name, not the shipped rule's
    assert made.json()["position"] == 110  # after the last one (100)
    taken = client.post(RULES, json={"id": "complaints", "name": "Again", "position": 3},
                        headers=admin)
    assert taken.status_code == 409 and error_locs(taken) == []
    reserved = client.post(RULES, json={"id": "history", "name": "x", "position": 3},
                           headers=admin)
    assert reserved.status_code == 422 and error_locs(reserved) == [["body", "id"]]
    named = client.post(RULES, json={"name": "History", "position": 3}, headers=admin)
    assert named.status_code == 201 and named.json()["id"] == "history-2"
    assert client.get(f"{RULES}/history", headers=admin).json()["items"][0]["rule_id"] == \
        "history-2"


def test_unchanged_replace_keeps_the_version_and_records_nothing(api: Api) -> None:
    client = api.client
    body = client.get(f"{RULES}/complaints", headers=api.as_("admin")).json()["body"]
    same = client.put(f"{RULES}/complaints", json=body,
                      headers=api.as_("admin", **{"If-Match": '"1"'}))
    assert same.status_code == 200 and same.json()["version"] == 1
    assert client.get(f"{RULES}/history", headers=api.as_("admin")).json()["total"] == 0


# ---- preconditions ---------------------------------------------------------------------------


def test_stale_if_match_is_412_with_the_current_etag(api: Api) -> None:
    client = api.client
    first = client.put(f"{RULES}/complaints", json={"name": "Complaints", "position": 40},
                       headers=api.as_("admin", **{"If-Match": '"1"'}))
    assert first.status_code == 200 and first.json()["version"] == 2
    for method in ("put", "delete"):
        stale = client.request(method, f"{RULES}/complaints",
                               json={"name": "Mine", "position": 40} if method == "put" else None,
                               headers=api.as_("admin", **{"If-Match": '"1"'}))
        assert stale.status_code == 412, stale.text
        assert stale.headers["ETag"] == '"2"' and '"2"' in stale.json()["message"]
        assert error_locs(stale) == []
    # A weak tag never matches (If-Match compares strongly); a list matches on any member.
    weak = client.delete(f"{RULES}/complaints", headers=api.as_("admin", **{"If-Match": 'W/"2"'}))
    assert weak.status_code == 412
    listed = client.delete(f"{RULES}/complaints",
                           headers=api.as_("admin", **{"If-Match": '"7", "2"'}))
    assert listed.status_code == 204
    assert client.get(f"{RULES}/complaints", headers=api.as_("admin")).status_code == 404


def test_a_body_that_can_never_be_stored_is_422_even_with_a_stale_etag(api: Api) -> None:
    stale = api.as_("admin", **{"If-Match": '"9"'})
    put = api.client.put(f"{RULES}/complaints", json={"name": "x", "position": 1,
                                                      "then": {"skill": "juggling"}},
                         headers=stale)
    assert put.status_code == 422 and error_locs(put) == [["body", "then", "skill"]]
    imported = api.client.post(f"{RULES}/import", content="rules: {}",
                               headers={**stale, "Content-Type": "application/yaml"})
    assert imported.status_code == 422 and error_locs(imported) == [["body", "rules"]]


def test_missing_if_match_is_428_and_a_missing_rule_is_404(api: Api) -> None:
    client = api.client
    for headers in (api.as_("admin"), api.as_("admin", **{"If-Match": "*"})):
        put = client.put(f"{RULES}/complaints", json={"name": "x", "position": 1},
                         headers=headers)
        delete = client.delete(f"{RULES}/complaints", headers=headers)
        imported = client.post(f"{RULES}/import", content="rules: []",
                               headers={**headers, "Content-Type": "application/yaml"})
        assert (put.status_code, delete.status_code, imported.status_code) == (428, 428, 428)
        assert "If-Match" in put.json()["message"]
    assert client.get(f"{RULES}/complaints", headers=api.as_("admin")).json()["version"] == 1
    missing = client.put(f"{RULES}/nope", json={"name": "x"}, headers=api.as_("admin"))
    assert missing.status_code == 404
    not_ascii = client.get(f"{RULES}/规则", headers=api.as_("admin"))
    assert not_ascii.status_code == 404 and "规则" in not_ascii.json()["message"]


def test_parse_if_match() -> None:
    assert parse_if_match('"1"') == ('"1"',)
    assert parse_if_match(' "1" , W/"2", "rs-ab"') == ('"1"', '"rs-ab"')
    assert parse_if_match("1") == ()  # not an entity tag: matches nothing
    assert parse_if_match('"1" junk') == ()


# ---- history ---------------------------------------------------------------------------------


def test_history_shows_who_when_and_the_exact_diff(api: Api) -> None:
    client = api.client
    bob, _ = api.tokens.create("admin", "bob")
    as_bob = {"Authorization": f"Bearer {bob}"}
    assert client.post(RULES, json=billing_rule(), headers=api.as_("admin")).status_code == 201
    changed = client.put(f"{RULES}/billing-north", json=billing_rule(target_region="south",
                                                                     priority=7),
                         headers={**as_bob, "If-Match": '"1"'})
    assert changed.status_code == 200
    gone = client.delete(f"{RULES}/billing-north", headers={**as_bob, "If-Match": '"2"'})
    assert gone.status_code == 204

    page = client.get(f"{RULES}/history", params={"rule_id": "billing-north"},
                      headers=api.as_("supervisor"))
    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 3 and (body["limit"], body["offset"]) == (50, 0)
    deleted, updated, created = body["items"]
    assert [c["action"] for c in body["items"]] == ["delete", "update", "create"]
    assert [c["version"] for c in body["items"]] == [2, 2, 1]
    assert created["by"].startswith("admin-alice (admin, token ")
    assert updated["by"].startswith("bob (admin, token ") and deleted["by"] == updated["by"]
    assert datetime.fromisoformat(updated["at"]) >= datetime.fromisoformat(created["at"])
    assert updated["diff"] == [
        {"path": "then.target_region", "before": "north", "after": "south"},
        {"path": "then.priority", "before": 0, "after": 7},
    ]
    assert updated["before"]["then"]["target_region"] == "north"
    assert updated["after"]["then"]["target_region"] == "south"
    assert created["before"] is None and deleted["after"] is None
    assert {"path": "when.intents", "before": None, "after": ["billing"]} in created["diff"]
    assert {"path": "then.priority", "before": 7, "after": None} in deleted["diff"]

    second = client.get(f"{RULES}/history", params={"limit": 1, "offset": 1},
                        headers=api.as_("admin")).json()
    assert [c["action"] for c in second["items"]] == ["update"] and second["total"] == 3
    other = client.get(f"{RULES}/history", params={"rule_id": "complaints"},
                       headers=api.as_("admin")).json()
    assert other == {"items": [], "total": 0, "limit": 50, "offset": 0}
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"rule_id": "x" * 65}):
        assert client.get(f"{RULES}/history", params=bad,
                          headers=api.as_("admin")).status_code == 422


def test_diff_of_nested_bodies() -> None:
    before = {"when": {"hours": [{"days": ["mon"], "start": "08:00", "end": "12:00"}]},
              "then": {"skill": None}}
    after = {"when": {"hours": []}, "then": {"skill": "security"}}
    assert [(d.path, d.before, d.after) for d in diff_bodies(before, after)] == [
        ("when.hours", before["when"]["hours"], []),
        ("then.skill", None, "security"),
    ]
    assert diff_bodies(before, before) == ()


# ---- export / import -------------------------------------------------------------------------


def _import(api: Api, text: str, etag: str, media: str = "application/yaml") -> Any:
    return api.client.post(f"{RULES}/import", content=text.encode("utf-8"),
                           headers=api.as_("admin", **{"If-Match": etag,
                                                       "Content-Type": media}))


def test_export_import_round_trip(api: Api) -> None:
    client, admin = api.client, api.as_("admin")
    original = client.get(RULES, headers=admin).json()
    exported = client.get(f"{RULES}/export", headers=api.as_("supervisor"))
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/yaml")
    assert exported.headers["ETag"] == original["etag"]
    text = exported.text
    assert "Asia/Shanghai" in text.splitlines()[0]  # the zone the times are local to
    # The export is also a valid rules_file.
    assert [r.id for r in rules_from_yaml(text, regions=REGIONS)] == SHIPPED

    same = _import(api, text, original["etag"])
    assert same.status_code == 200, same.text
    assert same.json() == {"etag": original["etag"], "created": [], "updated": [],
                           "deleted": [], "unchanged": SHIPPED}
    assert client.get(f"{RULES}/history", headers=admin).json()["total"] == 0

    # Drift: one rule changed, one added, one removed.
    assert client.put(f"{RULES}/complaints", json={"name": "Complaints", "position": 40},
                      headers=api.as_("admin", **{"If-Match": '"1"'})).status_code == 200
    assert client.post(RULES, json=billing_rule(), headers=admin).status_code == 201
    assert client.delete(f"{RULES}/vip-first",
                         headers=api.as_("admin", **{"If-Match": '"1"'})).status_code == 204
    drifted = client.get(RULES, headers=admin).headers["ETag"]

    stale = _import(api, text, original["etag"])
    assert stale.status_code == 412 and stale.headers["ETag"] == drifted

    restored = _import(api, text, drifted, media="text/plain; charset=utf-8")
    assert restored.status_code == 200, restored.text
    outcome = restored.json()
    assert (outcome["created"], outcome["updated"], outcome["deleted"]) == (
        ["vip-first"], ["complaints"], ["billing-north"])
    now = client.get(RULES, headers=admin)
    assert now.headers["ETag"] == outcome["etag"] == restored.headers["ETag"]
    assert [r["body"] for r in now.json()["rules"]] == [r["body"] for r in original["rules"]]
    assert [r["version"] for r in now.json()["rules"] if r["id"] == "complaints"] == [3]
    imports = [c for c in client.get(f"{RULES}/history", headers=admin).json()["items"]
               if c["action"] == "import"]
    assert sorted((c["rule_id"], c["version"]) for c in imports) == [
        ("billing-north", 1), ("complaints", 3), ("vip-first", 2)]
    assert all(c["by"].startswith("admin-alice (admin") for c in imports)
    complaints = next(c for c in imports if c["rule_id"] == "complaints")
    assert complaints["diff"] == [{"path": "when.intents", "before": [],
                                   "after": ["complaint"]},
                                  {"path": "then.priority", "before": 0, "after": 3},
                                  {"path": "then.overflow_regions", "before": [],
                                   "after": ["any"]},
                                  {"path": "then.open_hours", "before": [],
                                   "after": complaints["after"]["then"]["open_hours"]},
                                  {"path": "then.open_on_holidays", "before": False,
                                   "after": True}]


def test_import_is_all_or_nothing_and_names_the_field(api: Api) -> None:
    client, admin = api.client, api.as_("admin")
    etag = client.get(RULES, headers=admin).headers["ETag"]
    document = yaml.safe_load(client.get(f"{RULES}/export", headers=admin).text)
    document["rules"][2]["then"]["skill"] = "juggling"
    bad = _import(api, yaml.safe_dump(document), etag)
    assert bad.status_code == 422
    assert error_locs(bad) == [["body", "rules", 2, "then", "skill"]]
    assert client.get(RULES, headers=admin).headers["ETag"] == etag
    assert client.get(f"{RULES}/history", headers=admin).json()["total"] == 0

    cases = {
        "rules: [": ["body"],
        "- just\n- a list\n": ["body"],
        "": ["body"],
        "rules: 5": ["body", "rules"],
        "rulez: []": ["body", "rulez"],
        "when: 2024-02-30": ["body"],
        "[" * 3000 + "]" * 3000: ["body"],
        "timezone: Mars/Olympus\nrules: []": ["body", "timezone"],
        "rules:\n- {id: a, name: A, position: 1}\n- {name: B, position: 2, id: a}\n":
            ["body", "rules", 1, "id"],
    }
    for text, loc in cases.items():
        response = _import(api, text, etag)
        assert response.status_code == 422, (text[:40], response.text)
        assert error_locs(response) == [loc], text[:40]
    not_utf8 = client.post(f"{RULES}/import", content=b"\xff\xfe",
                           headers=api.as_("admin", **{"If-Match": etag,
                                                       "Content-Type": "text/plain"}))
    assert not_utf8.status_code == 422 and error_locs(not_utf8) == [["body"]]
    assert _import(api, "rules: []", etag, media="application/json").status_code == 415
    # A timezone that names the configured zone is accepted, and an empty set is a valid set.
    emptied = _import(api, "timezone: Asia/Shanghai\nrules: []\n", etag)
    assert emptied.status_code == 200 and emptied.json()["deleted"] == SHIPPED
    assert client.get(RULES, headers=admin).json()["rules"] == []


def test_bodies_over_one_mebibyte_are_413(api: Api) -> None:
    big = "rules: []\n" + "#" * MAX_EXPORT_BYTES
    etag = api.client.get(RULES, headers=api.as_("admin")).headers["ETag"]
    assert _import(api, big, etag).status_code == 413
    huge = {"name": "x" * SecuritySettings().max_body_bytes, "position": 1}
    response = api.client.post(RULES, json=huge, headers=api.as_("admin"))
    assert response.status_code == 413 and response.json()["status"] == 413


# ---- validation ------------------------------------------------------------------------------


def _window(start: str, end: str, *days: str) -> dict[str, Any]:
    return {"days": list(days or ("mon",)), "start": start, "end": end}


INVALID: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("unknown intent", {"when": {"intents": ["shopping"]}}, ["body", "when", "intents"]),
    ("unknown caller region", {"when": {"regions": ["mars"]}}, ["body", "when", "regions"]),
    ("unknown target region", {"then": {"target_region": "mars"}},
     ["body", "then", "target_region"]),
    ("unknown overflow region", {"then": {"overflow_regions": ["north", "moon"]}},
     ["body", "then", "overflow_regions"]),
    ("unknown skill", {"then": {"skill": "juggling"}}, ["body", "then", "skill"]),
    ("overlapping windows",
     {"when": {"hours": [_window("09:00", "12:00"), _window("11:00", "13:00")]}},
     ["body", "when", "hours", 1]),
    ("overlapping open hours past midnight",
     {"then": {"open_hours": [_window("22:00", "02:00", "sun"), _window("01:00", "03:00")]}},
     ["body", "then", "open_hours", 1]),
    ("window start equals end", {"when": {"hours": [_window("08:00", "08:00")]}},
     ["body", "when", "hours", 0, "end"]),
    ("bad clock", {"when": {"hours": [_window("8am", "12:00")]}},
     ["body", "when", "hours", 0, "start"]),
    ("unknown day", {"when": {"hours": [_window("08:00", "12:00", "funday")]}},
     ["body", "when", "hours", 0, "days"]),
    ("unknown time zone", {"timezone": "Mars/Olympus"}, ["body", "timezone"]),
    ("time zone other than the configured one", {"timezone": "Europe/Paris"},
     ["body", "timezone"]),
    ("priority of the wrong type", {"then": {"priority": "high"}}, ["body", "then", "priority"]),
    ("intents not a list", {"when": {"intents": "billing"}}, ["body", "when", "intents"]),
    ("enabled as a string", {"enabled": "yes"}, ["body", "enabled"]),
    ("negative seconds", {"then": {"ring_timeout_s": -1}}, ["body", "then", "ring_timeout_s"]),
    ("unknown key", {"then": {"target": "north"}}, ["body", "then", "target"]),
    ("non-ASCII id", {"id": "规则"}, ["body", "id"]),
    ("blank name", {"name": "   "}, ["body", "name"]),
    ("'any' not alone", {"then": {"overflow_regions": ["any", "north"]}},
     ["body", "then", "overflow_regions"]),
    ("position out of range", {"position": 10**12}, ["body", "position"]),
]


@pytest.mark.parametrize(("case", "change", "loc"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_rules_are_422_naming_the_field(api: Api, case: str, change: dict[str, Any],
                                                loc: list[Any]) -> None:
    body: dict[str, Any] = {"name": "Candidate", "position": 3, **change}
    created = api.client.post(RULES, json=body, headers=api.as_("admin"))
    assert created.status_code == 422, created.text
    assert error_locs(created) == [loc]
    # The same body replacing an existing rule is refused the same way, and nothing changes.
    replaced = api.client.put(f"{RULES}/complaints", json=body,
                              headers=api.as_("admin", **{"If-Match": '"1"'}))
    assert replaced.status_code == 422 and error_locs(replaced) == [loc]
    # One schema: YAML import says the same thing about the same rule, at its place in the list.
    admin = api.as_("admin")
    document = yaml.safe_load(api.client.get(f"{RULES}/export", headers=admin).text)
    document["rules"].append(body)
    etag = api.client.get(RULES, headers=admin).headers["ETag"]
    imported = _import(api, yaml.safe_dump(document, allow_unicode=True), etag)
    index = len(document["rules"]) - 1
    assert imported.status_code == 422 and error_locs(imported) == [
        ["body", "rules", index, *loc[1:]]]
    assert imported.json()["details"][0]["msg"] == created.json()["details"][0]["msg"]
    assert api.client.get(f"{RULES}/history", headers=api.as_("admin")).json()["total"] == 0


def test_accepted_skills_zones_and_windows(api: Api) -> None:
    client, admin = api.client, api.as_("admin")
    ok = [
        {"then": {"skill": "billing_expert"}},  # an agent has it (routing.agent_skills)
        {"then": {"skill": "security_expert"}},  # the shipped rules use it
        {"then": {"skill": "billing"}},  # an intent name: what a rule without a skill routes on
        {"timezone": "Asia/Shanghai"},
        {"when": {"hours": [_window("09:00", "12:00"), _window("12:00", "13:00")]}},
        {"then": {"open_hours": [_window("12:00", "00:00", "sat"), _window("00:00", "12:00",
                                                                             "sun")]}},
    ]
    for position, change in enumerate(ok, start=1):
        made = client.post(RULES, json={"name": f"ok {position}", "position": position,
                                        **change}, headers=admin)
        assert made.status_code == 201, (change, made.text)
        assert "timezone" not in made.json()["body"]  # asserted, not stored
    wrong_id = client.put(f"{RULES}/ok-1", json={"id": "ok-2", "name": "ok 1"},
                          headers=api.as_("admin", **{"If-Match": '"1"'}))
    assert wrong_id.status_code == 422 and error_locs(wrong_id) == [["body", "id"]]


def test_malformed_json_bodies(api: Api) -> None:
    headers = api.as_("admin", **{"Content-Type": "application/json"})
    for content in (b"{", b"[]", b"null", b'"rule"', b"[" * 50_000):
        response = api.client.post(RULES, content=content, headers=headers)
        assert response.status_code in (400, 422), (content[:10], response.text)
        assert response.json()["status"] == response.status_code


# ---- roles -----------------------------------------------------------------------------------


READS = [("get", RULES), ("get", f"{RULES}/complaints"), ("get", f"{RULES}/history"),
         ("get", f"{RULES}/export")]
WRITES = [("post", RULES), ("put", f"{RULES}/complaints"), ("delete", f"{RULES}/complaints"),
          ("post", f"{RULES}/import")]


def test_roles(api: Api) -> None:
    client = api.client
    for method, path in READS + WRITES:
        anonymous = client.request(method, path)
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        bogus = client.request(method, path, headers={"Authorization": "Bearer ivr_x_y"})
        assert bogus.status_code == 401
    for method, path in READS:
        assert client.request(method, path, headers=api.as_("supervisor")).status_code == 200
        for role in ("agent", "security"):
            denied = client.request(method, path, headers=api.as_(role))
            assert denied.status_code == 403, (role, method, path)
    body = {"name": "Candidate", "position": 3}
    for method, path in WRITES:
        for role in ("supervisor", "agent", "security"):
            denied = client.request(method, path, json=body,
                                    headers=api.as_(role, **{"If-Match": '"1"'}))
            assert denied.status_code == 403, (role, method, path)
    assert client.get(f"{RULES}/history", headers=api.as_("admin")).json()["total"] == 0


def test_other_methods_are_405_listing_every_allowed_one(api: Api) -> None:
    allowed = {RULES: "GET, POST", f"{RULES}/history": "GET", f"{RULES}/export": "GET",
               f"{RULES}/import": "POST", f"{RULES}/complaints": "GET, PUT, DELETE"}
    for path, allow in allowed.items():
        for method in ("PATCH", "OPTIONS", "HEAD"):
            response = api.client.request(method, path, headers=api.as_("admin"))
            assert response.status_code == 405, (method, path)
            assert response.headers["Allow"] == allow, (method, path)
    # Paths beside the rule ids are not read as ids by the rule's own methods.
    put = api.client.put(f"{RULES}/history", json={"name": "x"},
                         headers=api.as_("admin", **{"If-Match": '"1"'}))
    assert put.status_code == 405 and put.headers["Allow"] == "GET"
    assert api.client.get(f"{RULES}/import", headers=api.as_("admin")).status_code == 405


# ---- effect on routing -----------------------------------------------------------------------


def test_a_change_applies_to_the_next_simulated_call(api: Api) -> None:
    client, admin = api.client, api.as_("admin")
    before = api.routing.simulate("01012345678", "billing", WEDNESDAY)
    assert before.decision.rule_id == "everyone-else"

    assert client.post(RULES, json=billing_rule(), headers=admin).status_code == 201
    routed = api.routing.simulate("01012345678", "billing", WEDNESDAY)
    assert (routed.decision.rule_id, routed.decision.region) == ("billing-north", "north")
    assert routed.decision.overflow_regions == ("east",)
    over_api = client.post("/api/v1/routing/simulate", headers=admin, json={
        "caller_number": "02012345678", "intent": "billing", "at": WEDNESDAY.isoformat()})
    assert over_api.status_code == 200
    assert over_api.json()["decision"]["region"] == "north"
    assert over_api.json()["rule"]["id"] == "billing-north"

    assert client.put(f"{RULES}/billing-north", json=billing_rule(target_region="west"),
                      headers=api.as_("admin", **{"If-Match": '"1"'})).status_code == 200
    assert api.routing.simulate("01012345678", "billing", WEDNESDAY).decision.region == "west"
    assert client.delete(f"{RULES}/billing-north",
                         headers=api.as_("admin", **{"If-Match": '"2"'})).status_code == 204
    after = api.routing.simulate("01012345678", "billing", WEDNESDAY)
    assert after.decision.rule_id == "everyone-else"


# ---- the OpenAPI document --------------------------------------------------------------------


def test_openapi_documents_every_answer(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("get", RULES): {"200", "401", "403", "503"},
        ("post", RULES): {"201", "400", "401", "403", "409", "413", "422", "503"},
        ("get", f"{RULES}/history"): {"200", "401", "403", "422", "503"},
        ("get", f"{RULES}/export"): {"200", "401", "403", "503"},
        ("post", f"{RULES}/import"): {"200", "401", "403", "412", "413", "415", "422", "428",
                                      "503"},
        ("get", f"{RULES}/{{rule_id}}"): {"200", "401", "403", "404", "405", "422", "503"},
        ("put", f"{RULES}/{{rule_id}}"): {"200", "400", "401", "403", "404", "405", "412",
                                          "413", "422", "428", "503"},
        ("delete", f"{RULES}/{{rule_id}}"): {"204", "401", "403", "404", "405", "412", "413",
                                             "422", "428", "503"},
    }
    for (method, path), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (method, path, sorted(responses))
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, code)
    assert "application/yaml" in paths[f"{RULES}/export"]["get"]["responses"]["200"]["content"]
    assert set(paths[f"{RULES}/import"]["post"]["requestBody"]["content"]) >= {
        "application/yaml", "text/plain"}
    assert "ETag" in paths[f"{RULES}/{{rule_id}}"]["get"]["responses"]["200"]["headers"]


def test_export_quotes_names_a_yaml_reader_could_take_for_numbers(api: Api) -> None:
    """A rule named 1e+100, yes or 0o17 stays a string for YAML 1.1 and 1.2 readers alike
    (found by the schema fuzzer: a 1.2 reader took an unquoted 1e+100 for a float)."""
    admin = api.as_("admin")
    for name in ("1e+100", "yes", "0o17"):
        made = api.client.post(RULES, json={"id": f"r-{name.replace('+', '')}", "name": name},
                               headers=admin)
        assert made.status_code == 201, made.text
    text = api.client.get(f"{RULES}/export", headers=admin).text
    for name in ("1e+100", "yes", "0o17"):
        assert f'name: "{name}"' in text
    names = {r["name"] for r in yaml.safe_load(text)["rules"]}
    assert {"1e+100", "yes", "0o17"} <= names
