"""``/routing/rules``: the routing rules as managed data (CRUD, history, YAML export/import).

Admins write, supervisors and admins read. Writes to an existing rule, and imports of the whole
set, need ``If-Match`` with the ETag that was read: absent is 428, stale is 412 (the body says
the current ETag); a body that could never be stored is 422 even when the ETag is stale.
Validation errors are 422 with ``details[].loc`` naming the field, e.g.
``["body", "then", "target_region"]`` or, for an import, ``["body", "rules", 2, "then", "skill"]``.
Request bodies over ``security.max_body_bytes`` (1 MiB) are refused with 413 before they are
read; an import may be as large as the largest export (``MAX_EXPORT_BYTES``, 4 MiB), and every
write keeps the set within MAX_RULES rules and that export size (else 409), so an export always
imports back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from ivr.api.auth import Admin, Supervising
from ivr.api.errors import field_error
from ivr.api.guard import api_router
from ivr.api.schemas import ErrorOut
from ivr.api.services import ApiServices
from ivr.errors import RuleError
from ivr.routing.manage import (
    PreconditionFailed,
    PreconditionRequired,
    RuleBook,
    RuleChange,
    RuleExists,
    RuleNotFound,
    RuleSetFull,
    StoredRule,
)
from ivr.routing.rule_schema import MAX_RULES, RuleBody, RuleIn
from ivr.routing.service import RoutingService

IMPORT_PATH = "/api/v1/routing/rules/import"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/plain")
_LOC_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
T = TypeVar("T")


class RuleOut(BaseModel):
    """A stored rule with its version."""

    id: str
    position: int
    version: int
    etag: str
    body: RuleBody
    updated_at: datetime
    updated_by: str


class RuleSetOut(BaseModel):
    """Every rule in evaluation order and the ETag of the whole set."""

    etag: str
    rules: list[RuleOut]


class DiffOut(BaseModel):
    """One changed field (``before``/``after`` null where the field was absent)."""

    path: str = Field(examples=["then.target_region"])
    before: Any
    after: Any


class ChangeOut(BaseModel):
    """One recorded change."""

    id: int
    rule_id: str
    action: str = Field(json_schema_extra={"enum": ["create", "update", "delete", "import"]})
    version: int
    by: str
    at: datetime
    before: dict[str, Any] | None = Field(description="the rule before (null: created)")
    after: dict[str, Any] | None = Field(description="the rule after (null: deleted)")
    diff: list[DiffOut]


class HistoryOut(BaseModel):
    """A page of changes, newest first."""

    items: list[ChangeOut]
    total: int
    limit: int
    offset: int


class ImportOut(BaseModel):
    """What an import did, by rule id."""

    etag: str
    created: list[str]
    updated: list[str]
    deleted: list[str]
    unchanged: list[str]


class YamlResponse(Response):
    """A YAML document."""

    media_type = "application/yaml"


_DESCRIPTIONS = {
    400: "The body is not parseable JSON", 401: "No valid bearer token",
    403: "The token's role may not do this", 404: "Not found (no rule with this id)",
    405: "The path is one beside the rule ids (history, export, import), without this method",
    409: "A rule with this id exists, or the set would pass its limits (rules, export size)",
    412: "If-Match does not name the current ETag",
    413: "The body is over the size limit (an import: the largest export)",
    415: "The body is not YAML or plain text",
    422: "Invalid input; details[].loc names the field", 428: "If-Match is required",
    429: "Too many failed authentications from this address; see Retry-After",
    503: "Routing is not available in this process",
}
_RULE_DOCUMENT: dict[str, Any] = {  # what export writes and import reads, as YAML
    "type": "object", "required": ["rules"], "additionalProperties": False,
    "properties": {
        "timezone": {"type": "string", "description": "must be routing.timezone if given"},
        "rules": {"type": "array", "maxItems": MAX_RULES,
                  "items": {"$ref": "#/components/schemas/RuleBody"}},
    },
}
# Rules as on create: defaults may be left out, ``position`` may not.
_IMPORT_DOCUMENT: dict[str, Any] = {
    **_RULE_DOCUMENT,
    "properties": {**_RULE_DOCUMENT["properties"],
                   "rules": {"type": "array", "maxItems": MAX_RULES,
                             "items": {"$ref": "#/components/schemas/RuleIn"}}},
}
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
_ETAG_HEADER = {"ETag": {"description": "entity tag for If-Match", "schema": {"type": "string"}}}
_READ = (401, 403, 503)
_WRITE = (401, 403, 413, 422, 503)


def _errors(*codes: int, beside: str | None = None) -> dict[int | str, dict[str, Any]]:
    """Error answers for the OpenAPI document; ``beside`` a non-JSON success media type."""
    if beside is None:
        out: dict[int | str, dict[str, Any]] = {
            code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}
    else:  # a model would be documented in the route's own media type; errors are JSON
        error_json = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        out = {code: {"description": _DESCRIPTIONS[code], "content": error_json}
               for code in codes}
    if 412 in out:
        out[412]["headers"] = _ETAG_HEADER
    return out


def _loc(field: str) -> tuple[str | int, ...]:
    """A RuleError path ("rules[2].then.skill") as a validation location under the body."""
    parts: list[str | int] = ["body"]
    for name, index in _LOC_PART.findall(field):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _rule_out(rule: StoredRule) -> RuleOut:
    return RuleOut(id=rule.id, position=rule.position, version=rule.version, etag=rule.etag,
                   body=RuleBody.model_validate(rule.body), updated_at=rule.updated_at,
                   updated_by=rule.updated_by)


def _change_out(change: RuleChange) -> ChangeOut:
    return ChangeOut(id=change.id, rule_id=change.rule_id, action=change.action,
                     version=change.version, by=change.by, at=change.at,
                     before=change.before, after=change.after,
                     diff=[DiffOut(path=d.path, before=d.before, after=d.after)
                           for d in change.diff])


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a RuleBook operation off the loop and turn its errors into HTTP answers."""
    try:
        return await asyncio.to_thread(fn, *args)
    except RuleError as exc:
        raise field_error(_loc(exc.field), exc.message) from exc
    except RuleNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (RuleExists, RuleSetFull) as exc:
        raise HTTPException(409, str(exc)) from exc
    except PreconditionRequired as exc:
        raise HTTPException(428, str(exc)) from exc
    except PreconditionFailed as exc:
        headers = {"ETag": exc.current} if exc.current else None
        raise HTTPException(412, str(exc), headers=headers) from exc


def _rule_body(body: RuleIn) -> dict[str, Any]:
    """The fields the client sent, nested sections included (defaults are the validator's)."""
    return body.model_dump(exclude_unset=True)


def rules_router(services: ApiServices) -> APIRouter:
    """CRUD, history, export and import of the routing rules."""
    router = api_router(prefix="/api/v1/routing", tags=["routing"])
    built: list[tuple[RoutingService, RuleBook]] = []

    def book() -> RuleBook:
        routing = services.need_routing()
        if not built or built[0][0] is not routing:
            built[:] = [(routing, RuleBook(routing))]
        return built[0][1]

    @router.get("/rules", response_model=RuleSetOut,
                responses={200: {"headers": _ETAG_HEADER}, **_errors(*_READ)})
    async def list_rules(_: Supervising, response: Response) -> RuleSetOut:
        """Every rule in evaluation order; the ETag is the one import needs."""
        rules = await _call(book().rule_set)
        response.headers["ETag"] = rules.etag
        return RuleSetOut(etag=rules.etag, rules=[_rule_out(r) for r in rules.rules])

    @router.post("/rules", response_model=RuleOut, status_code=201,
                 responses={201: {"headers": {**_ETAG_HEADER, "Location": {
                     "description": "the new rule", "schema": {"type": "string"}}}},
                     **_errors(400, 409, *_WRITE)})
    async def create_rule(body: RuleIn, principal: Admin, response: Response) -> RuleOut:
        """Add a rule (409 when its id is taken)."""
        rule = await _call(book().create, _rule_body(body), principal.label)
        response.headers["ETag"] = rule.etag
        response.headers["Location"] = f"{router.prefix}/rules/{rule.id}"
        return _rule_out(rule)

    # Declared before /rules/{rule_id} so these paths are not read as rule ids.
    @router.get("/rules/history", response_model=HistoryOut, responses=_errors(422, *_READ))
    async def rule_history(
        _: Supervising,
        rule_id: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    ) -> HistoryOut:
        """Who changed what and when, newest first, with a dotted-path diff per change."""
        page = await _call(book().history, rule_id, limit, offset)
        return HistoryOut(items=[_change_out(c) for c in page.changes], total=page.total,
                          limit=limit, offset=offset)

    @router.get("/rules/export", response_class=YamlResponse,
                responses={200: {"headers": _ETAG_HEADER, "content": {
                    YamlResponse.media_type: {"schema": _RULE_DOCUMENT}}},
                           # 404, 413, 422 and 429 too: the app documents them for every
                           # route, and in this route's media type unless told otherwise.
                           **_errors(404, 413, 422, 429, *_READ,
                                     beside=YamlResponse.media_type)})
    async def export_rules(_: Supervising) -> YamlResponse:
        """The whole set as YAML, as import (and ``routing.rules_file``) reads it."""
        text, etag = await _call(book().export_yaml)
        return YamlResponse(text, headers={"ETag": etag})

    @router.post("/rules/import", response_model=ImportOut,
                 responses={200: {"headers": _ETAG_HEADER},
                            **_errors(409, 412, 415, 428, *_WRITE)},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     media: {"schema": _IMPORT_DOCUMENT if "yaml" in media else {
                         "type": "string", "description": "the YAML document as text"}}
                     for media in YAML_TYPES}}})
    async def import_rules(
        request: Request, principal: Admin, response: Response,
        if_match: Annotated[str | None, Header(description="the ETag of GET /rules")] = None,
    ) -> ImportOut:
        """Replace the whole set from YAML, all or nothing; one history entry per rule changed."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media not in YAML_TYPES:
            raise HTTPException(415, f"send the rules as one of {', '.join(YAML_TYPES)}")
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise field_error(("body",), "the document is not UTF-8 text") from exc
        outcome = await _call(book().import_yaml, text, if_match, principal.label)
        response.headers["ETag"] = outcome.etag
        return ImportOut(etag=outcome.etag, created=list(outcome.created),
                         updated=list(outcome.updated), deleted=list(outcome.deleted),
                         unchanged=list(outcome.unchanged))

    def refuse_other_methods(path: str, *allowed: str) -> None:
        """405 with an Allow header that lists every method of ``path``, not just one route's."""
        allow = ", ".join(allowed)

        async def method_not_allowed() -> Response:
            raise HTTPException(405, "Method Not Allowed", headers={"Allow": allow})

        router.add_api_route(path, method_not_allowed, include_in_schema=False,
                             methods=[m for m in _HTTP_METHODS if m not in allowed])

    refuse_other_methods("/rules", "GET", "POST")
    # Before /rules/{rule_id}, which would otherwise take e.g. PUT /rules/history.
    for fixed, method in (("history", "GET"), ("export", "GET"), ("import", "POST")):
        refuse_other_methods(f"/rules/{fixed}", method)

    @router.get("/rules/{rule_id}", response_model=RuleOut,
                responses={200: {"headers": _ETAG_HEADER}, **_errors(404, 405, 422, *_READ)})
    async def get_rule(rule_id: str, _: Supervising, response: Response) -> RuleOut:
        """One rule; its ETag is its version."""
        rule = await _call(book().get, rule_id)
        response.headers["ETag"] = rule.etag
        return _rule_out(rule)

    @router.put("/rules/{rule_id}", response_model=RuleOut,
                responses={200: {"headers": _ETAG_HEADER},
                           **_errors(400, 404, 405, 409, 412, 428, *_WRITE)})
    async def replace_rule(
        rule_id: str, body: RuleIn, principal: Admin, response: Response,
        if_match: Annotated[str | None, Header(description="the ETag of the rule")] = None,
    ) -> RuleOut:
        """Replace a rule; the version goes up by one (unchanged bodies keep theirs)."""
        rule = await _call(book().replace, rule_id, _rule_body(body), if_match, principal.label)
        response.headers["ETag"] = rule.etag
        return _rule_out(rule)

    @router.delete("/rules/{rule_id}", status_code=204,
                   responses=_errors(404, 405, 412, 428, *_WRITE))
    async def delete_rule(
        rule_id: str, principal: Admin,
        if_match: Annotated[str | None, Header(description="the ETag of the rule")] = None,
    ) -> None:
        """Remove a rule (its history stays)."""
        await _call(book().delete, rule_id, if_match, principal.label)

    refuse_other_methods("/rules/{rule_id}", "GET", "PUT", "DELETE")
    return router
