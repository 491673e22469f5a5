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

Validation beyond ``rule_from_dict`` (which checks shape, types, intents, regions and windows
that overlap within one list):

- a skill must be known: a skill of some agent (``routing.agent_skills``), an intent name (a rule
  without a skill routes on the intent's name), a skill used by the shipped default rules, or one
  already used by a stored rule (so rules seeded from a custom ``rules_file`` stay editable);
- a window whose start equals its end is rejected: 0 h or 24 h is ambiguous to a reader (split a
  whole day into 00:00-12:00 and 12:00-00:00, or leave the window list empty);
- windows are compared within one list only: rules are ordered and the first match wins, so
  windows overlapping across rules are how precedence is written;
- rule times are local to the one routing calendar (``routing.timezone``); a ``timezone`` key on a
  rule or at the top of an imported document is accepted only to assert that, so it must be a
  real IANA zone equal to the configured one, and it is not stored;
- bounds that keep the store and the evaluator sane: position and priority ranges, at most a day
  of seconds, a bounded number of windows per list and of rules per document.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ivr.errors import IvrError, RuleError
from ivr.routing.rule_schema import (
    as_list,
    as_mapping,
    check_keys,
    child,
    dump_yaml,
    item,
    load_yaml,
    slug_id,
)
from ivr.routing.rules import (
    INTENTS,
    Rule,
    TimeWindow,
    load_default_rules,
    rule_from_dict,
    rule_to_dict,
)
from ivr.routing.service import RoutingService
from ivr.store.models import RoutingRuleRow, RuleChangeRow
from ivr.store.repository import utcnow

ChangeAction = Literal["create", "update", "delete", "import"]

# Bounds: the store's integer columns are 64-bit; beyond these a value is a typo, not a policy.
MAX_POSITION = 1_000_000_000
MAX_PRIORITY = 1_000_000
MAX_SECONDS = 86_400.0
MAX_NAME_CHARS = 200
MAX_WINDOWS = 50  # per list; the overlap check compares every pair
MAX_RULES = 1_000  # per imported document
# Path segments beside rule ids under /routing/rules: a rule with such an id could not be read.
RESERVED_IDS = frozenset({"history", "export", "import"})
_BY_CHARS = {"updated_by": 64, "by": 128}  # column widths in ivr.store.models
_SECONDS_FIELDS = ("overflow_after_s", "ring_timeout_s", "max_wait_s")
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


def _window_lists(rule: Rule) -> Iterable[tuple[str, int, TimeWindow]]:
    for path, windows in (("when.hours", rule.conditions.windows),
                          ("then.open_hours", rule.actions.open_hours)):
        for index, window in enumerate(windows):
            yield path, index, window


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
        zone = self.routing.calendar.timezone.key
        header = (f"# Hotline routing rules. Times are local to {zone} (routing.timezone);\n"
                  "# the first enabled rule that matches, by position, decides.\n")
        # Stored bodies are already in rule_to_dict form, so this is what rules_to_yaml writes.
        return header + dump_yaml({"rules": [r.body for r in current.rules]}), current.etag

    # ---- validation ----------------------------------------------------------------------

    def validate(self, body: Mapping[str, Any], index: int | None = None,
                 extra_skills: Iterable[str] = ()) -> dict[str, Any]:
        """The normalized dict form of a rule, or RuleError naming the field.

        ``index`` places the rule in an imported document (paths read ``rules[index]....``).
        """
        path = item("rules", index) if index is not None else ""
        data = dict(as_mapping(body, path))
        if "timezone" in data:
            self._check_timezone(data.pop("timezone"), child(path, "timezone"))
        for section, key in (("when", "hours"), ("then", "open_hours")):
            part = data.get(section)
            if isinstance(part, Mapping) and isinstance(part.get(key), list | tuple) \
                    and len(part[key]) > MAX_WINDOWS:
                raise RuleError(child(child(path, section), key),
                                f"at most {MAX_WINDOWS} windows")
        rule = rule_from_dict(data, regions=self.routing.regions, index=index)
        if rule.id in RESERVED_IDS:
            raise RuleError(child(path, "id"), f"'{rule.id}' is reserved (one of "
                            f"{', '.join(sorted(RESERVED_IDS))}); choose another id")
        self._check_bounds(rule, path)
        skill = rule.actions.skill
        if skill is not None and skill not in self._base_skills and skill not in extra_skills:
            raise RuleError(child(path, "then.skill"),
                            f"unknown skill '{skill}' (no agent has it and no rule uses it; "
                            "add it to routing.agent_skills first)")
        for where, number, window in _window_lists(rule):
            if window.start == window.end:
                raise RuleError(child(path, f"{where}[{number}].end"),
                                "equals start, which is ambiguous (0 or 24 hours); split a "
                                'whole day into "00:00"-"12:00" and "12:00"-"00:00"')
        return rule_to_dict(rule)

    def _check_timezone(self, value: object, path: str) -> None:
        configured = self.routing.calendar.timezone.key
        if not isinstance(value, str) or not value.strip():
            raise RuleError(path, "expected an IANA time zone name such as 'Asia/Shanghai'")
        try:
            zoneinfo.ZoneInfo(value)
        except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise RuleError(path, f"unknown time zone '{value[:64]}'") from exc
        if value != configured:
            raise RuleError(path, f"rule times are local to {configured} (routing.timezone); "
                            f"'{value}' is not supported per rule")

    @staticmethod
    def _check_bounds(rule: Rule, path: str) -> None:
        if len(rule.name) > MAX_NAME_CHARS:
            raise RuleError(child(path, "name"), f"at most {MAX_NAME_CHARS} characters")
        if abs(rule.position) > MAX_POSITION:
            raise RuleError(child(path, "position"), f"must be within ±{MAX_POSITION}")
        if abs(rule.actions.priority) > MAX_PRIORITY:
            raise RuleError(child(path, "then.priority"), f"must be within ±{MAX_PRIORITY}")
        for key in _SECONDS_FIELDS:
            if getattr(rule.actions, key) > MAX_SECONDS:
                raise RuleError(child(path, f"then.{key}"), f"at most {MAX_SECONDS:g} seconds")

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
                data["id"] = _unique(slug_id(name.strip()), taken | RESERVED_IDS)
            normalized = self.validate(data, extra_skills=self._skills_in(rows))
            rule_id = str(normalized["id"])
            if rule_id in taken:
                raise RuleExists(rule_id)
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
            wanted = self._validate_entries(self._document_entries(text), self._skills_in(rows))
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

    def _document_entries(self, text: str) -> list[Any]:
        """The rule entries of a ``{rules: [...], timezone?: ZONE}`` document."""
        document = _load_document(text)
        check_keys(document, ("rules", "timezone"), "")
        if "timezone" in document:
            self._check_timezone(document["timezone"], "timezone")
        if "rules" not in document:
            raise RuleError("rules", "is required")
        entries = as_list(document["rules"], "rules")
        if len(entries) > MAX_RULES:
            raise RuleError("rules", f"at most {MAX_RULES} rules")
        return entries

    def _validate_entries(self, entries: list[Any], skills: frozenset[str]
                          ) -> list[dict[str, Any]]:
        """Every rule of a document, normalized; ids made from names where absent, no repeats."""
        explicit = {e["id"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("id"),
                                                                                       str)}
        taken: set[str] = set()
        first_use: dict[str, int] = {}
        out: list[dict[str, Any]] = []
        for index, entry in enumerate(entries):
            if isinstance(entry, Mapping) and entry.get("id") is None:
                name = entry.get("name")
                if isinstance(name, str) and name.strip():
                    # Two rules may share a name; their generated ids must still differ.
                    entry = {**entry, "id": _unique(slug_id(name.strip()),
                                                    taken | explicit | RESERVED_IDS)}
            body = self.validate(entry, index=index, extra_skills=skills)
            rule_id = str(body["id"])
            if rule_id in first_use:
                raise RuleError(child(item("rules", index), "id"),
                                f"duplicate id '{rule_id}' (also rules[{first_use[rule_id]}])")
            first_use[rule_id] = index
            taken.add(rule_id)
            out.append(body)
        return out

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


def _unique(base: str, taken: set[str]) -> str:
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}-{suffix}", suffix + 1
    return candidate


def _load_document(text: str) -> Mapping[str, Any]:
    """The top-level object of an imported document, or RuleError naming the body."""
    try:
        document = load_yaml(text)
    except RuleError as exc:
        raise RuleError("", exc.message) from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2024-02-30
        raise RuleError("", f"invalid YAML value: {exc}") from exc
    except RecursionError as exc:
        raise RuleError("", "invalid YAML: nested too deeply") from exc
    if document is None:
        raise RuleError("", "the document is empty; expected an object with a 'rules' list")
    if not isinstance(document, Mapping):
        raise RuleError("", "expected an object with a 'rules' list at the top")
    return as_mapping(document, "")
