"""``/tokens``: administrators issue, list and revoke API tokens (the CLI does the same)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ivr.api.auth import Admin
from ivr.api.errors import field_error
from ivr.api.guard import api_router
from ivr.api.services import ApiServices
from ivr.auth.tokens import (
    MAX_NAME_CHARS,
    AgentTokenExists,
    Role,
    TokenInfo,
    TokenRefused,
    TokenStore,
    check_name,
)


class TokenIn(BaseModel):
    """A token to issue."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    name: Annotated[str, AfterValidator(check_name)] = Field("", max_length=MAX_NAME_CHARS)
    # Agent tokens only, and required there: the agent record (GET /agents) the token acts for.
    agent_id: str | None = Field(None, min_length=1, max_length=64)
    ttl_days: float = Field(30.0, ge=1 / 1440, le=366)  # at least a minute


class TokenOut(BaseModel):
    """A token as listed (the secret is shown once, on creation)."""

    id: str
    role: str
    name: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    agent_id: str | None = None


class NewTokenOut(TokenOut):
    """A new token, with its secret (shown only now)."""

    token: str


def _out(info: TokenInfo) -> TokenOut:
    return TokenOut(id=info.id, role=info.role, name=info.name, created_at=info.created_at,
                    expires_at=info.expires_at, revoked_at=info.revoked_at,
                    agent_id=info.agent_id)


def tokens_router(services: ApiServices) -> APIRouter:
    """Token administration."""
    router = api_router(prefix="/api/v1/tokens", tags=["tokens"])

    def store() -> TokenStore:
        if services.tokens is None:
            raise HTTPException(503, "no token store in this process")
        return services.tokens

    @router.get("", response_model=list[TokenOut])
    async def list_tokens(_: Admin) -> list[TokenOut]:
        """Every token, newest first."""
        return [_out(t) for t in await asyncio.to_thread(store().listing)]

    @router.post("", response_model=NewTokenOut, status_code=201,
                 responses={409: {"description": "the agent already has a live token"}})
    async def create_token(body: TokenIn, _: Admin) -> NewTokenOut:
        """Issue a token; the response is the only place its secret appears. An agent token
        names the agent record it acts for (``agent_id``); an agent has one live token."""
        try:
            token, info = await asyncio.to_thread(store().create, body.role, body.name,
                                                  timedelta(days=body.ttl_days), body.agent_id)
        except AgentTokenExists as exc:
            raise HTTPException(409, str(exc)) from exc
        except TokenRefused as exc:
            raise field_error(("body", "agent_id"), str(exc)) from exc
        return NewTokenOut(**_out(info).model_dump(), token=token)

    @router.delete("/{token_id}", status_code=204)
    async def revoke_token(token_id: str, _: Admin) -> None:
        """Revoke a token; the next request with it gets 401."""
        if not await asyncio.to_thread(store().revoke, token_id):
            raise HTTPException(404, f"no token {token_id!r}")

    return router
