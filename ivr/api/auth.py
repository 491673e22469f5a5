"""Who may call what: bearer tokens checked on every request, one role per token.

Every endpoint declares its roles with :func:`allow`; no token (or an unknown, expired or
revoked one) is 401 with ``WWW-Authenticate: Bearer``, a valid token of another role is 403.
Only ``/health``, ``/ready``, the OpenAPI document and the console's static page are public.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


async def authenticate(tokens: TokenStore | None, token: str | None) -> Principal:
    """The principal of ``token``, or :class:`Unauthorized`."""
    if not token:
        raise Unauthorized("a bearer token is required")
    if tokens is None:
        raise Unauthorized("no token store in this process")
    principal = await asyncio.to_thread(tokens.check, token)
    if principal is None:
        raise Unauthorized("the token is unknown, expired or revoked")
    return principal


def allow(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only ``roles`` and returns the caller's principal."""
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")

    async def check(request: Request, credentials: Credentials) -> Principal:
        principal = await authenticate(token_store(request),
                                       credentials.credentials if credentials else None)
        if principal.role not in roles:
            raise HTTPException(403, f"role {principal.role!r} may not do this; "
                                f"allowed: {', '.join(roles)}")
        return principal

    check.roles = roles  # type: ignore[attr-defined]  # read by the role matrix test
    return check


Admin = Annotated[Principal, Depends(allow("admin"))]
Supervising = Annotated[Principal, Depends(allow("admin", "supervisor"))]
Security = Annotated[Principal, Depends(allow("security"))]
