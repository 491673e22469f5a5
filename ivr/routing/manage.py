"""Routing rules as managed data: validated edits, optimistic concurrency and a change history.

:class:`RuleBook` is what the REST API (``ivr.api.routing``) edits the stored rules through. Every
write is validated before it touches the store, checks the caller's ``If-Match`` against the
current version, bumps the version and records who changed what (a dotted-path diff) in
``routing_rule_changes``. :class:`~ivr.routing.service.RoutingService` reads the rules fresh for
each call, so a change applies to the next call routed; calls already routed keep their decision.

Exception tree (``RuleError`` lives in ``ivr.errors``)::

    IvrError
    ├── RuleError                    a rule is invalid; ``field`` names the input
    └── RuleBookError                an edit cannot be applied as asked
        ├── RuleNotFound             no rule with that id
        ├── RuleExists               a rule with that id already exists
        ├── PreconditionRequired     no usable If-Match (absent, or ``*``)
        └── PreconditionFailed       If-Match does not name the current version

Every rule is read through the one schema (``ivr.routing.rule_schema``: shape, types, words,
times, bounds) and ``rule_from_model`` (configured regions, reserved ids, the calendar's zone,
windows that overlap within one list), the same as ``routing.rules_file``:

- a window whose start equals its end is rejected: 0 h or 24 h is ambiguous to a reader (split a
  whole day into 00:00-12:00 and 12:00-00:00, or leave the window list empty);
- windows are compared within one list only: rules are ordered and the first match wins, so
  windows overlapping across rules are how precedence is written;
- rule times are local to the one routing calendar (``routing.timezone``); a ``timezone`` key on a
  rule or at the top of a document is accepted only to assert that, so it must be a real IANA
  zone equal to the configured one, and it is not stored;
- bounds that keep the store and the evaluator sane: position and priority ranges, at most a day
  of seconds, a bounded number of windows per list and of rules per document.

Beyond that, a stored rule's skill must be known: a skill of some agent
(``routing.agent_skills``), an intent name (a rule without a skill routes on the intent's name), a
skill used by the shipped default rules, or one already used by a stored rule (so rules seeded
from a custom ``rules_file`` stay editable).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ivr.errors import IvrError, RuleError
from ivr.routing.rule_schema import (
    INTENTS,
    MAX_RULES,
    RuleIn,
    as_mapping,
    child,
    dump_yaml,
    item,
    parse,
    slug_id,
    unique_id,
)
from ivr.routing.rules import (
    RESERVED_IDS,
    check_timezone,
    document_from_yaml,
    load_default_rules,
    rule_from_model,
    rule_to_dict,
)
from ivr.routing.service import RoutingService
from ivr.store.models import RoutingRuleRow, RuleChangeRow
from ivr.store.repository import utcnow

ChangeAction = Literal["create", "update", "delete", "import"]

_BY_CHARS = {"updated_by": 64, "by": 128}  # column widths in ivr.store.models
# The largest export: every write (create, replace, import) keeps the set's export within it,
# and an import accepts a body this large, so an export always imports back.
MAX_EXPORT_BYTES = 4 << 20
_ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')


class RuleBookError(IvrError):
    """An edit of the rules cannot be applied as asked."""


class RuleNotFound(RuleBookError):
    """No rule has this id."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"no rule '{rule_id}'")
        self.rule_id = rule_id


class RuleExists(RuleBookError):
    """A rule with this id exists already."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"a rule '{rule_id}' already exists")
        self.rule_id = rule_id


class RuleSetFull(RuleBookError):
    """The write would take the set past MAX_RULES rules or MAX_EXPORT_BYTES of export."""


class PreconditionRequired(RuleBookError):
    """The write did not say which version it replaces."""


class PreconditionFailed(RuleBookError):
    """The write names a version that is no longer current; ``current`` is the ETag now."""

    def __init__(self, message: str, current: str | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class StoredRule:
    """One stored rule with its version and who changed it last."""

    id: str
    position: int
    version: int
    body: dict[str, Any]
    updated_at: datetime
    updated_by: str

    @property
    def etag(self) -> str:
        """The HTTP entity tag of this version (quoted)."""
        return rule_etag(self.version)


@dataclass(frozen=True)
class RuleSet:
    """Every rule in evaluation order and the ETag of the whole set."""

    rules: tuple[StoredRule, ...]
    etag: str


@dataclass(frozen=True)
class DiffEntry:
    """One changed field: its dotted path and the values before and after (None: absent)."""

    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class RuleChange:
    """One recorded change of one rule."""

    id: int
    rule_id: str
    action: ChangeAction
    version: int
    by: str
    at: datetime
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    diff: tuple[DiffEntry, ...]


@dataclass(frozen=True)
class HistoryPage:
    """A page of changes, newest first, and how many match in all."""

    changes: tuple[RuleChange, ...]
    total: int


@dataclass(frozen=True)
class ImportOutcome:
    """What an import did, by rule id, and the ETag of the resulting set."""

    etag: str
    created: tuple[str, ...]
    updated: tuple[str, ...]
    deleted: tuple[str, ...]
    unchanged: tuple[str, ...]


F = TypeVar("F", bound=Callable[..., Any])


def _refreshes(method: F) -> F:
    """After a change is committed, the routing snapshot is refreshed before returning, so the
    next call is routed by the new rules."""

    @functools.wraps(method)
    def wrapper(self: RuleBook, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self.routing.refresh()
        return result

    return wrapper  # type: ignore[return-value]


def rule_etag(version: int) -> str:
    """The quoted entity tag of a rule version."""
    return f'"{version}"'


def set_etag(rules: Iterable[tuple[str, int]]) -> str:
    """The quoted entity tag of a rule set from its (id, version) pairs in order.

    Versions never repeat for an id (a re-created rule continues after its deleted versions),
    so equal tags mean equal sets.
    """
    digest = hashlib.sha256("\n".join(f"{i}:{v}" for i, v in rules).encode("utf-8"))
    return f'"rs-{digest.hexdigest()[:24]}"'


def parse_if_match(header: str | None) -> tuple[str, ...]:
    """The strong entity tags an If-Match header lists; PreconditionRequired when unusable."""
    if header is None or not header.strip():
        raise PreconditionRequired("send If-Match with the ETag you read (lost-update guard)")
    if header.strip() == "*":
        raise PreconditionRequired("If-Match: * would overwrite blindly; send the ETag you read")
    tags: list[str] = []
    position = 0
    text = header.strip()
    while position < len(text):
        match = _ENTITY_TAG.match(text, position)
        if match is None:
            return ()  # not entity tags at all: matches nothing, answered as stale
        if match[1] is None:  # If-Match compares strongly: a weak tag never matches
            tags.append(match[2])
        position = match.end()
    return tuple(tags)


def diff_bodies(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
                ) -> tuple[DiffEntry, ...]:
    """Leaf-by-leaf differences as dotted paths (lists compare as whole values)."""
    old, new = _flatten(before or {}, ""), _flatten(after or {}, "")
    paths = list(dict.fromkeys([*new, *old]))
    return tuple(DiffEntry(p, old.get(p), new.get(p)) for p in paths if old.get(p) != new.get(p)
                 or (p in old) != (p in new))


def _flatten(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = child(path, key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, where))
        else:
            out[where] = value
    return out


def _fit(text: str, column: str) -> str:
    limit = _BY_CHARS[column]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stored(row: RoutingRuleRow) -> StoredRule:
    return StoredRule(row.id, row.position, row.version, dict(row.body), row.updated_at,
                      row.updated_by)


def _change(row: RuleChangeRow) -> RuleChange:
    diff = tuple(DiffEntry(str(d.get("path", "")), d.get("before"), d.get("after"))
                 for d in row.diff if isinstance(d, Mapping))
    return RuleChange(row.id, row.rule_id, cast(ChangeAction, row.action), row.version, row.by,
                      row.at, row.before, row.after, diff)


class RuleBook:
    """Create, replace, delete, import and export the stored rules, with history."""

    def __init__(self, routing: RoutingService) -> None:
        self.routing = routing
        self._sessions = sessionmaker(routing.store.engine, expire_on_commit=False)
        # One writer at a time in this process; the version-checked statements below guard
        # against writers in other processes.
        self._write = threading.Lock()
        skills = {skill for values in routing.settings.agent_skills.values() for skill in values}
        shipped = {r.actions.skill for r in load_default_rules(routing.regions) if r.actions.skill}
        self._base_skills = frozenset(skills | shipped | set(INTENTS))

    # ---- reading -------------------------------------------------------------------------

    def rule_set(self) -> RuleSet:
        """Every rule in evaluation order, and the set's ETag."""
        with self._sessions() as session:
            return self._rule_set(session)

    def get(self, rule_id: str) -> StoredRule:
        """One rule, or RuleNotFound."""
        with self._sessions() as session:
            row = session.get(RoutingRuleRow, rule_id)
            if row is None:
                raise RuleNotFound(rule_id)
            return _stored(row)

    def history(self, rule_id: str | None = None, limit: int = 50, offset: int = 0
                ) -> HistoryPage:
        """Recorded changes, newest first, of one rule or of all."""
        query = select(RuleChangeRow)
        count = select(func.count()).select_from(RuleChangeRow)
        if rule_id is not None:
            query = query.where(RuleChangeRow.rule_id == rule_id)
            count = count.where(RuleChangeRow.rule_id == rule_id)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(RuleChangeRow.id.desc())
                                   .limit(limit).offset(offset)).all()
            total = session.scalar(count) or 0
            return HistoryPage(tuple(_change(r) for r in rows), total)

    def export_yaml(self) -> tuple[str, str]:
        """The whole set as YAML (what import_yaml and rules_file read) and its ETag."""
        current = self.rule_set()
        return self._export_text([r.body for r in current.rules]), current.etag

    def _export_text(self, bodies: Sequence[Mapping[str, Any]]) -> str:
        zone = self.routing.calendar.timezone.key
        header = (f"# Hotline routing rules. Times are local to {zone} (routing.timezone);\n"
                  "# the first enabled rule that matches, by position, decides.\n")
        # Stored bodies are already in rule_to_dict form, so this is what rules_to_yaml writes.
        return header + dump_yaml({"rules": list(bodies)})

    def _check_bounds(self, bodies: Sequence[Mapping[str, Any]]) -> None:
        """RuleSetFull unless the set of ``bodies`` is one an export and import can carry."""
        if len(bodies) > MAX_RULES:
            raise RuleSetFull(f"the rule set would hold {len(bodies)} rules; at most "
                              f"{MAX_RULES} (the same limit as an import); delete some first")
        size = len(self._export_text(bodies).encode())
        if size > MAX_EXPORT_BYTES:
            raise RuleSetFull(f"the rule set would export to {size} bytes, over the "
                              f"{MAX_EXPORT_BYTES} an import accepts; shorten or merge rules")

    # ---- validation ----------------------------------------------------------------------

    def validate(self, body: Mapping[str, Any] | RuleIn, index: int | None = None,
                 extra_skills: Iterable[str] = ()) -> dict[str, Any]:
        """The normalized dict form of a rule, or RuleError naming the field.

        ``index`` places the rule in an imported document (paths read ``rules[index]....``).
        """
        path = item("rules", index) if index is not None else ""
        model = body if isinstance(body, RuleIn) else parse(RuleIn, as_mapping(body, path), path)
        rule = rule_from_model(model, regions=self.routing.regions, path=path,
                               timezone=self.routing.calendar.timezone.key)
        skill = rule.actions.skill
        if skill is not None and skill not in self._base_skills and skill not in extra_skills:
            raise RuleError(child(path, "then.skill"),
                            f"unknown skill '{skill}' (no agent has it and no rule uses it; "
                            "add it to routing.agent_skills first)")
        return rule_to_dict(rule)

    # ---- writing -------------------------------------------------------------------------

    @_refreshes
    def create(self, body: Mapping[str, Any], by: str) -> StoredRule:
        """Add a rule; without ``position`` it goes last, without ``id`` one is made from the name.

        RuleExists when an explicit id is taken.
        """
        data = dict(as_mapping(body, ""))
        with self._write, self._sessions() as session, session.begin():
            rows = self._rows(session)
            taken = {r.id for r in rows}
            if data.get("position") is None:
                data["position"] = max((r.position for r in rows), default=0) + 10
            name = data.get("name")
            if data.get("id") is None and isinstance(name, str) and name.strip():
                data["id"] = unique_id(slug_id(name.strip()), taken | RESERVED_IDS)
            normalized = self.validate(data, extra_skills=self._skills_in(rows))
            rule_id = str(normalized["id"])
            if rule_id in taken:
                raise RuleExists(rule_id)
            self._check_bounds([*(r.body for r in rows), normalized])
            stored = self._insert(session, normalized, by, "create")
            try:
                session.flush()
            except IntegrityError as exc:  # another process created it meanwhile
                raise RuleExists(rule_id) from exc
            return stored

    @_refreshes
    def replace(self, rule_id: str, body: Mapping[str, Any], if_match: str | None, by: str
                ) -> StoredRule:
        """Replace a rule (``position`` kept when not given); the version goes up by one."""
        data = dict(as_mapping(body, ""))
        with self._write, self._sessions() as session, session.begin():
            rows = self._rows(session)
            row = next((r for r in rows if r.id == rule_id), None)
            if row is None:
                raise RuleNotFound(rule_id)
            current = _stored(row)
            tags = parse_if_match(if_match)
            if data.get("id") is None:
                data["id"] = rule_id
            elif data["id"] != rule_id:
                raise RuleError("id", f"must be the id in the path, '{rule_id}' (ids are "
                                "permanent; create a new rule and delete this one to rename)")
            if data.get("position") is None:
                data["position"] = row.position
            normalized = self.validate(data, extra_skills=self._skills_in(rows))
            # Content before the version: a body that can never be stored is 422, not 412.
            self._check_match(current.etag, tags, f"rule '{rule_id}'")
            if normalized == current.body:
                return current  # nothing to record; the version stays
            self._check_bounds([normalized if r.id == rule_id else r.body for r in rows])
            return self._update(session, current, normalized, by, "update")

    @_refreshes
    def delete(self, rule_id: str, if_match: str | None, by: str) -> None:
        """Remove a rule; its history stays."""
        with self._write, self._sessions() as session, session.begin():
            row = session.get(RoutingRuleRow, rule_id)
            if row is None:
                raise RuleNotFound(rule_id)
            current = _stored(row)
            self._check_match(current.etag, parse_if_match(if_match), f"rule '{rule_id}'")
            self._remove(session, current, by, "delete")

    @_refreshes
    def import_yaml(self, text: str, if_match: str | None, by: str) -> ImportOutcome:
        """Replace the whole set from a YAML document, all or nothing.

        Rules that did not change keep their version and get no history entry; every rule
        added, changed or removed gets one entry with action ``import``.
        """
        tags = parse_if_match(if_match)
        with self._write, self._sessions() as session, session.begin():
            rows = self._rows(session)
            current = {r.id: _stored(r) for r in rows}
            wanted = self._validate_document(text, self._skills_in(rows))
            self._check_bounds(wanted)
            self._check_match(set_etag((r.id, r.version) for r in rows), tags, "the rule set")
            created: list[str] = []
            updated: list[str] = []
            unchanged: list[str] = []
            for body in wanted:
                rule_id = str(body["id"])
                before = current.get(rule_id)
                if before is None:
                    self._insert(session, body, by, "import")
                    created.append(rule_id)
                elif before.body != body:
                    self._update(session, before, body, by, "import")
                    updated.append(rule_id)
                else:
                    unchanged.append(rule_id)
            keep = {str(body["id"]) for body in wanted}
            deleted = [rule_id for rule_id in current if rule_id not in keep]
            for rule_id in deleted:
                self._remove(session, current[rule_id], by, "import")
            session.flush()
            session.expire_all()  # the rows above were changed by version-checked statements
            etag = self._rule_set(session).etag
        return ImportOutcome(etag, tuple(created), tuple(updated), tuple(deleted),
                             tuple(unchanged))

    def _validate_document(self, text: str, skills: frozenset[str]) -> list[dict[str, Any]]:
        """Every rule of a ``{rules: [...], timezone?: ZONE}`` document, normalized."""
        document = document_from_yaml(text)
        if document.timezone is not None:
            check_timezone(document.timezone, self.routing.calendar.timezone.key, "timezone")
        return [self.validate(rule, index=index, extra_skills=skills)
                for index, rule in enumerate(document.rules)]

    # ---- store helpers -------------------------------------------------------------------

    @staticmethod
    def _rows(session: Session) -> list[RoutingRuleRow]:
        return list(session.scalars(select(RoutingRuleRow).order_by(RoutingRuleRow.position,
                                                                    RoutingRuleRow.id)))

    def _rule_set(self, session: Session) -> RuleSet:
        rules = tuple(_stored(r) for r in self._rows(session))
        return RuleSet(rules, set_etag((r.id, r.version) for r in rules))

    @staticmethod
    def _skills_in(rows: Sequence[RoutingRuleRow]) -> frozenset[str]:
        skills = (r.body.get("then", {}).get("skill") for r in rows
                  if isinstance(r.body.get("then"), Mapping))
        return frozenset(s for s in skills if isinstance(s, str))

    @staticmethod
    def _check_match(etag: str, tags: Sequence[str], what: str) -> None:
        if etag not in tags:
            raise PreconditionFailed(f"{what} changed since it was read; its ETag is now {etag}",
                                     etag)

    def _insert(self, session: Session, body: dict[str, Any], by: str, action: ChangeAction
                ) -> StoredRule:
        rule_id = str(body["id"])
        # A re-created id continues after its deleted versions, so no ETag is ever reused.
        last = session.scalar(select(func.max(RuleChangeRow.version))
                              .where(RuleChangeRow.rule_id == rule_id))
        version = (last or 0) + 1
        now = utcnow()
        session.add(RoutingRuleRow(id=rule_id, position=int(body["position"]), body=body,
                                   version=version, updated_at=now,
                                   updated_by=_fit(by, "updated_by")))
        self._record(session, rule_id, action, version, by, now, None, body)
        return StoredRule(rule_id, int(body["position"]), version, body, now,
                          _fit(by, "updated_by"))

    def _update(self, session: Session, current: StoredRule, body: dict[str, Any], by: str,
                action: ChangeAction) -> StoredRule:
        now, version = utcnow(), current.version + 1
        result = session.execute(
            update(RoutingRuleRow)
            .where(RoutingRuleRow.id == current.id, RoutingRuleRow.version == current.version)
            .values(position=int(body["position"]), body=body, version=version, updated_at=now,
                    updated_by=_fit(by, "updated_by"))
            .execution_options(synchronize_session=False))
        if cast(CursorResult[Any], result).rowcount != 1:
            raise PreconditionFailed(f"rule '{current.id}' changed meanwhile", None)
        self._record(session, current.id, action, version, by, now, current.body, body)
        return StoredRule(current.id, int(body["position"]), version, body, now,
                          _fit(by, "updated_by"))

    def _remove(self, session: Session, current: StoredRule, by: str, action: ChangeAction
                ) -> None:
        result = session.execute(
            delete(RoutingRuleRow)
            .where(RoutingRuleRow.id == current.id, RoutingRuleRow.version == current.version)
            .execution_options(synchronize_session=False))
        if cast(CursorResult[Any], result).rowcount != 1:
            raise PreconditionFailed(f"rule '{current.id}' changed meanwhile", None)
        self._record(session, current.id, action, current.version, by, utcnow(), current.body,
                     None)

    @staticmethod
    def _record(session: Session, rule_id: str, action: ChangeAction, version: int, by: str,
                at: datetime, before: dict[str, Any] | None, after: dict[str, Any] | None
                ) -> None:
        diff = [{"path": d.path, "before": d.before, "after": d.after}
                for d in diff_bodies(before, after)]
        session.add(RuleChangeRow(rule_id=rule_id, action=action, version=version,
                                  by=_fit(by, "by"), at=at, before=before, after=after,
                                  diff=diff))
