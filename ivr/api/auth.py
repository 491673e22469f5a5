"""Who may call what: bearer tokens checked on every request, one role per token.

Every endpoint declares its roles with :func:`allow`; no token (or an unknown, expired or
revoked one) is 401 with ``WWW-Authenticate: Bearer``, a valid token of another role is 403.
Only ``/health``, ``/ready``, the OpenAPI document and the console's static page are public.
A source address with too many failed authentications in a window gets 429 with
``Retry-After`` for the rest of the window, whatever token it sends (``security.auth_*``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import Scope

from ivr.auth.throttle import FailureThrottle, Limited
from ivr.auth.tokens import ROLES, Principal, Role, TokenStore

bearer = HTTPBearer(auto_error=False, description="`ivr token create --role ROLE`")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class Unauthorized(HTTPException):
    """401: no usable token."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": "Bearer"})


def token_store(request: Request) -> TokenStore | None:
    """The app's token store (None in a bare process: then nothing but public paths works)."""
    store: TokenStore | None = getattr(request.app.state, "tokens", None)
    return store


class TooManyFailures(HTTPException):
    """429: this source failed authentication too often; ``Retry-After`` says how long."""

    def __init__(self, limited: Limited) -> None:
        super().__init__(429, str(limited),
                         headers={"Retry-After": str(limited.retry_after_s)})


def bearer_token(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def client_source(scope: Scope) -> str:
    """The address a request came from (what failed authentication is counted by)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def failure_throttle(request: Request) -> FailureThrottle | None:
    """The app's failed-authentication throttle (None: not throttled)."""
    failures: FailureThrottle | None = getattr(request.app.state, "auth_failures", None)
    return failures


async def authenticate(tokens: TokenStore | None, token: str | None, source: str | None = None,
                       failures: FailureThrottle | None = None) -> Principal:
    """The principal of ``token``; :class:`Unauthorized`, or :class:`TooManyFailures` when
    ``source`` is over its failure limit (then the token is not looked at)."""
    if failures is not None and source is not None:
        try:
            failures.check(source)
        except Limited as exc:
            raise TooManyFailures(exc) from exc
    if not token:
        raise Unauthorized("a bearer token is required")
    if tokens is None:
        raise Unauthorized("no token store in this process")
    principal = await asyncio.to_thread(tokens.check, token)
    if principal is None:
        if failures is not None and source is not None:
            try:
                await asyncio.to_thread(failures.failed, source)
            except Limited as exc:
                raise TooManyFailures(exc) from exc
        raise Unauthorized("the token is unknown, expired or revoked")
    return principal


def allow(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only ``roles`` and returns the caller's principal."""
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")

    async def check(request: Request, credentials: Credentials) -> Principal:
        # Requests with a body were authenticated by the guard before it was read.
        principal: Principal | None = request.scope.get("state", {}).get("principal")
        if principal is None:
            principal = await authenticate(
                token_store(request), credentials.credentials if credentials else None,
                client_source(request.scope), failure_throttle(request))
        if principal.role not in roles:
            raise HTTPException(403, f"role {principal.role!r} may not do this; "
                                f"allowed: {', '.join(roles)}")
        return principal

    check.roles = roles  # type: ignore[attr-defined]  # read by the role matrix test
    return check


Admin = Annotated[Principal, Depends(allow("admin"))]
Supervising = Annotated[Principal, Depends(allow("admin", "supervisor"))]
Security = Annotated[Principal, Depends(allow("security"))]
