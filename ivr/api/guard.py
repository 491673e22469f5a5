"""What every request passes before an endpoint sees it: a size cap, and the token first.

:class:`RequestGuard` (ASGI middleware) answers a request that carries a body

- 413 when its ``Content-Length`` is over the cap, before a byte of it is read; a streamed
  (chunked) body is counted as it arrives and refused with 413 as soon as it passes the cap;
- 401 (or 429 for a source over the failed-authentication limit) when it has no valid token,
  before the body is read: a stranger cannot make the process read, hold and parse megabytes.
  The principal found is kept in the request's state, so the endpoint's role check does not
  look the token up again.

:class:`GuardedRoute` parses JSON bodies of ``security.offload_json_bytes`` or more in a worker
thread (the event loop carries every call's audio and events). :func:`bounded_json` reads small
JSON messages (the live socket's auth message) with a size and nesting limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute, APIRouter
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ivr.api.auth import authenticate, bearer_token, client_source
from ivr.api.errors import error_body
from ivr.settings import SecuritySettings

# Paths anyone may call (none of them takes a body).
PUBLIC = frozenset({"/api/v1/health", "/api/v1/ready", "/openapi.json", "/docs", "/redoc",
                    "/docs/oauth2-redirect", "/"})
PUBLIC_PREFIXES = ("/console/",)


class BodyTooLarge(HTTPException):
    """413: the body is over the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is over {limit} bytes")


def is_public(path: str) -> bool:
    """Whether ``path`` is served without a token."""
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


class RequestGuard:
    """Body cap and authentication before the body (see the module docstring)."""

    def __init__(self, app: ASGIApp, security: SecuritySettings,
                 limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.security = security
        # Paths with a cap of their own (a rules import holds a whole rule set).
        self.limits = {path: max(limit, security.max_body_bytes)
                       for path, limit in (limits or {}).items()}

    def limit_for(self, path: str) -> int:
        """The body cap of ``path``."""
        return self.limits.get(path, self.security.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it on with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(scope["path"])
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if declared is not None and not declared.strip().isdigit():
            await _answer(scope, receive, send, HTTPException(400, "Content-Length is not a "
                                                                   "number"))
            return
        if declared is not None and int(declared) > limit:
            await _answer(scope, receive, send, BodyTooLarge(limit))
            return
        has_body = chunked or (declared is not None and int(declared) > 0)
        if not has_body:
            await self.app(scope, receive, send)
            return
        if not is_public(scope["path"]):
            app_state = scope["app"].state
            try:
                principal = await authenticate(
                    getattr(app_state, "tokens", None), bearer_token(headers),
                    client_source(scope), getattr(app_state, "auth_failures", None))
            except HTTPException as exc:
                await _answer(scope, receive, send, exc)
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, _counting(receive, limit), send)


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once the body passes ``limit`` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


async def _answer(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
    """Answer with the error shape, without reading the body (the server closes the
    connection after a response to a request whose body was left unread)."""
    response = JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code,
                            headers={**(exc.headers or {}), "Connection": "close"})
    await response(scope, receive, send)


class GuardedRoute(APIRoute):
    """A route whose large JSON bodies are parsed in a worker thread."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The normal handler, after parsing a large JSON body off the loop."""
        handler = super().get_route_handler()

        async def offloaded(request: Request) -> Response:
            security: SecuritySettings | None = getattr(request.app.state, "security", None)
            threshold = security.offload_json_bytes if security else 64 << 10
            declared = request.headers.get("content-length", "")
            large = not declared.isdigit() or int(declared) >= threshold
            if (request.method in ("POST", "PUT", "PATCH") and large
                    and "json" in request.headers.get("content-type", "")):
                body = await request.body()
                if len(body) >= threshold:
                    try:
                        request._json = await asyncio.to_thread(json.loads, body)
                    except (ValueError, RecursionError):
                        pass  # parsed again by FastAPI, which names the error (422)
            return await handler(request)

        return offloaded


def api_router(**options: Any) -> APIRouter:
    """An APIRouter whose routes are :class:`GuardedRoute`."""
    return APIRouter(route_class=GuardedRoute, **options)


class MessageRefused(ValueError):
    """A JSON message over the size or nesting limit, or not JSON."""


def bounded_json(text: str, max_chars: int, max_depth: int) -> Any:
    """``json.loads(text)`` for small messages only: at most ``max_chars`` characters and
    ``max_depth`` levels of nesting, checked before parsing (deep nesting would make the
    parser recurse until Python's stack limit)."""
    if len(text) > max_chars:
        raise MessageRefused(f"message over {max_chars} characters")
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise MessageRefused(f"message nested over {max_depth} levels")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MessageRefused(f"not JSON: {exc.msg}" if isinstance(exc, json.JSONDecodeError)
                             else "not JSON") from exc
