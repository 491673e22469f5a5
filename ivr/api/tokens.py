"""``/tokens``: administrators issue, list and revoke API tokens (the CLI does the same)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from ivr.api.auth import Admin
from ivr.api.services import ApiServices
from ivr.auth.tokens import Role, TokenInfo, TokenStore


class TokenIn(BaseModel):
    """A token to issue."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field("", max_length=128)
    ttl_days: float = Field(30.0, ge=1 / 1440, le=366)  # at least a minute


class TokenOut(BaseModel):
    """A token as listed (the secret is shown once, on creation)."""

    id: str
    role: str
    name: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    """A new token, with its secret (shown only now)."""

    token: str


def _out(info: TokenInfo) -> TokenOut:
    return TokenOut(id=info.id, role=info.role, name=info.name, created_at=info.created_at,
                    expires_at=info.expires_at, revoked_at=info.revoked_at)


def tokens_router(services: ApiServices) -> APIRouter:
    """Token administration."""
    router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

    def store() -> TokenStore:
        if services.tokens is None:
            raise HTTPException(503, "no token store in this process")
        return services.tokens

    @router.get("", response_model=list[TokenOut])
    async def list_tokens(_: Admin) -> list[TokenOut]:
        """Every token, newest first."""
        return [_out(t) for t in await asyncio.to_thread(store().listing)]

    @router.post("", response_model=NewTokenOut, status_code=201)
    async def create_token(body: TokenIn, _: Admin) -> NewTokenOut:
        """Issue a token; the response is the only place its secret appears."""
        token, info = await asyncio.to_thread(store().create, body.role, body.name,
                                              timedelta(days=body.ttl_days))
        return NewTokenOut(**_out(info).model_dump(), token=token)

    @router.delete("/{token_id}", status_code=204)
    async def revoke_token(token_id: str, _: Admin) -> None:
        """Revoke a token; the next request with it gets 401."""
        if not await asyncio.to_thread(store().revoke, token_id):
            raise HTTPException(404, f"no token {token_id!r}")

    return router
