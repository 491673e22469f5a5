"""Routing as the rest of the service sees it: caller facts + stored rules -> a decision."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ivr import phone
from ivr.routing.region import RegionResolution, RegionResolver
from ivr.routing.rules import (
    Calendar,
    CallFacts,
    RoutingDecision,
    Rule,
    decide,
    load_default_rules,
    rule_from_dict,
    rule_to_dict,
    rules_from_yaml,
)
from ivr.settings import RoutingSettings
from ivr.store.repository import Store


@dataclass(frozen=True)
class Simulation:
    """A dry-run decision with the facts it used."""

    decision: RoutingDecision
    resolution: RegionResolution
    rule: Rule | None


class RoutingService:
    """Resolves regions and applies the stored rules; also seeds them on first start."""

    def __init__(self, store: Store, settings: RoutingSettings, regions: Sequence[str]) -> None:
        self.store = store
        self.settings = settings
        self.regions = tuple(regions)
        self.resolver = RegionResolver.from_yaml(settings.regions_file,
                                                 default_region=settings.default_region)
        self.calendar = Calendar(ZoneInfo(settings.timezone), frozenset(settings.holidays))
        self._vip = frozenset(phone.canonical(n) for n in settings.vip_numbers)
        self._lock = threading.Lock()
        self._rules: tuple[Rule, ...] | None = None
        self._stamp: tuple[tuple[str, int], ...] = ()

    def seed_rules(self) -> bool:
        """Load the configured (or shipped) rules into an empty store; True when loaded."""
        if self.settings.rules_file is not None:
            rules = rules_from_yaml(self.settings.rules_file.read_text(encoding="utf-8"),
                                    regions=self.regions, timezone=self.settings.timezone)
        else:
            rules = load_default_rules(self.regions)
        return self.store.seed_rules([rule_to_dict(rule) for rule in rules])

    def refresh(self) -> bool:
        """Re-read and re-validate the stored rules if they changed (ids and versions); True
        when the snapshot was replaced. Blocking: call it in a worker thread."""
        stamp = self.store.rule_stamp()
        if self._rules is not None and stamp == self._stamp:
            return False
        rules = tuple(rule_from_dict(body, regions=self.regions, index=i,
                                     timezone=self.settings.timezone)
                      for i, body in enumerate(self.store.rule_bodies()))
        with self._lock:
            self._rules, self._stamp = rules, stamp
        return True

    def rules(self) -> list[Rule]:
        """The rules in force: an in-memory snapshot, so routing a call never touches the
        database on the event loop. Changes through the API refresh it before they return
        (the next call sees them); changes by other processes within ``refresh_every_s``."""
        if self._rules is None:
            self.refresh()
        return list(self._rules or ())

    def is_vip(self, caller_number: str) -> bool:
        """Whether the number is on the VIP list (both in E.164: ``+86 138...``,
        ``0086138...`` and ``138...`` are one number)."""
        return phone.canonical(caller_number) in self._vip

    def decide_for(self, caller_number: str, region: str, intent: str, language: str = "zh",
                   verification: str | None = None,
                   now: dt.datetime | None = None) -> tuple[RoutingDecision, Rule | None]:
        """Decision for a call whose region is already resolved."""
        facts = CallFacts(caller_number=caller_number, region=region, intent=intent,
                          vip=self.is_vip(caller_number), verification=verification,
                          language=language)
        rules = self.rules()
        decision = decide(facts, rules, now or dt.datetime.now(dt.UTC), self.calendar,
                          self.regions)
        rule = next((r for r in rules if r.id == decision.rule_id), None)
        return decision, rule

    def simulate(self, caller_number: str, intent: str,
                 at: dt.datetime | None = None) -> Simulation:
        """Resolve the region and decide, without a call."""
        resolution = self.resolver.resolve(caller_number)
        decision, rule = self.decide_for(caller_number, resolution.region, intent, now=at)
        return Simulation(decision, resolution, rule)
