"""``/api/v1/live``: a WebSocket of everything supervisors watch, resumable by sequence number.

Protocol (JSON text frames):

- The client authenticates with an ``Authorization: Bearer`` header or, from a browser, with a
  first message ``{"type": "auth", "token": ..., "last_seq": N, "epoch": E}`` (``last_seq`` and
  ``epoch`` only when resuming; at most 4 KiB and 4 levels deep). Bad or missing token: close
  code 4401; wrong role: 4403; a malformed auth message: 4400; a source over its
  failed-authentication limit: 4429.
- The token is re-checked while the socket is open: at once when this process revokes it,
  every ``security.live_recheck_s`` for a revocation elsewhere and for expiry. A revoked or
  expired token closes the socket with 1008 (policy violation).
- New client, or one whose events are no longer kept: ``{"type": "snapshot", "seq", "epoch",
  "calls", "agents", "waiting"}`` then every event after ``seq``.
- Resuming client: the events it missed (``seq`` > ``last_seq``), then live ones.
- Events: ``{"type": "event", "seq", "kind", "call_id", "data"}`` with kinds ``call``
  (every recorded call event with the call's board row), ``transcript.partial``,
  ``transcript.final``, ``acd`` (agents and queues). Numbers are masked and transcripts redacted
  before they leave, as in the REST API.
- If this client fell behind and the bus dropped events for it, a fresh snapshot follows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.exceptions import HTTPException

from ivr.api.auth import authenticate, client_source, token_store
from ivr.api.calls import mask_number, masked_data
from ivr.api.guard import MessageRefused, bounded_json
from ivr.api.services import ApiServices
from ivr.auth.tokens import Principal
from ivr.bus import BusEvent, EventBus
from ivr.redaction import redact

LIVE_ROLES = ("admin", "supervisor")
AUTH_TIMEOUT_S = 5.0
AUTH_MAX_CHARS = 4096  # a token is about 100 characters
AUTH_MAX_DEPTH = 4
POLICY_VIOLATION = 1008


def redact_event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """What a supervisor may see of one bus event."""
    if kind.startswith("transcript") and isinstance(data.get("text"), str):
        return {**data, "text": redact(data["text"])}
    if kind == "call":
        out = dict(data)
        if isinstance(out.get("call"), dict):
            out["call"] = redact_row(out["call"])
        if isinstance(out.get("data"), dict):
            out["data"] = masked_data(out["data"])
        return out
    return data


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    """A board row with the caller's number masked."""
    return {**row, "caller_number": mask_number(row.get("caller_number"))}


def live_router(services: ApiServices) -> APIRouter:
    """The live WebSocket."""
    router = APIRouter()

    @router.websocket("/api/v1/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        bus = services.bus
        admitted = await admit(websocket, LIVE_ROLES, "watch live calls")
        if admitted is None:
            return
        principal, hello = admitted
        if bus is None:
            await websocket.close(1011, "no live events in this process")
            return
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await _until_gone(websocket, _stream(websocket, services, bus, hello),
                              watch_token(websocket, services, principal))

    return router


async def admit(websocket: WebSocket, roles: tuple[str, ...], what: str
                ) -> tuple[Principal, dict[str, Any]] | None:
    """Authenticate an accepted socket and check its role; on failure close it with the
    matching code and return None."""
    try:
        principal, hello = await authenticate_socket(websocket)
    except HTTPException as exc:
        code = {401: 4401, 429: 4429}.get(exc.status_code, 4403)
        await websocket.close(code, str(exc.detail)[:120])
        return None
    except MessageRefused as exc:
        with contextlib.suppress(RuntimeError):
            await websocket.close(4400, f"auth message refused: {exc}"[:120])
        return None
    except (WebSocketDisconnect, ValueError, TimeoutError):
        with contextlib.suppress(RuntimeError):
            await websocket.close(4400, "expected an auth message")
        return None
    if principal.role not in roles:
        await websocket.close(4403, f"role {principal.role!r} may not {what}")
        return None
    return principal, hello


async def watch_token(websocket: WebSocket, services: ApiServices, principal: Principal
                       ) -> None:
    """Return (ending the socket) once the token is revoked or expired, after closing 1008."""
    tokens = services.tokens
    if tokens is None:
        await asyncio.Event().wait()
        return
    every = services.security.live_recheck_s
    loop = asyncio.get_running_loop()
    revoked_here = asyncio.Event()

    def wake(token_id: str) -> None:  # called from the thread that revoked
        if token_id == principal.token_id:
            loop.call_soon_threadsafe(revoked_here.set)

    unsubscribe = tokens.on_revoke(wake)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(revoked_here.wait(), every)
            still = await asyncio.to_thread(tokens.still_valid, principal.token_id)
            if still is not None:
                break
    finally:
        unsubscribe()
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(POLICY_VIOLATION, f"token {still}")


async def _until_gone(websocket: WebSocket, stream: Coroutine[Any, Any, None],
                      watch_token: Coroutine[Any, Any, None]) -> None:
    """Run ``stream`` until it ends or the client goes away.

    The stream only sends, so without a reader a closed connection would be noticed at the next
    event only: until then its subscription lingers and a server shutdown waits for it. An anyio
    task group (not bare asyncio tasks) so that the server's own cancellation stays in its scope.
    """
    async with anyio.create_task_group() as group:

        async def send_all() -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await stream
            group.cancel_scope.cancel()

        async def watch() -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await _until_disconnect(websocket)
            group.cancel_scope.cancel()

        async def check_token() -> None:
            await watch_token
            group.cancel_scope.cancel()

        group.start_soon(send_all)
        group.start_soon(watch)
        group.start_soon(check_token)


async def _until_disconnect(websocket: WebSocket) -> None:
    # Clients send nothing after the auth message; anything else is read and ignored.
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def authenticate_socket(websocket: WebSocket) -> tuple[Principal, dict[str, Any]]:
    """The token of a WebSocket (header, or a first ``auth`` message) and that message."""
    header = websocket.headers.get("authorization", "")
    hello: dict[str, Any] = {}
    token: str | None = None
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    else:
        message = await asyncio.wait_for(websocket.receive(), AUTH_TIMEOUT_S)
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if not isinstance(text, str):
            raise MessageRefused("the auth message must be a text frame")
        hello = bounded_json(text, AUTH_MAX_CHARS, AUTH_MAX_DEPTH)
        if not isinstance(hello, dict) or hello.get("type") != "auth":
            raise ValueError("first message must be an auth message")
        token = str(hello.get("token") or "")
    failures = getattr(websocket.app.state, "auth_failures", None)
    principal = await authenticate(token_store(websocket), token,  # type: ignore[arg-type]
                                   client_source(websocket.scope), failures)
    return principal, hello


async def _stream(websocket: WebSocket, services: ApiServices, bus: EventBus,
                  hello: dict[str, Any]) -> None:
    sub = bus.subscribe()
    try:
        last = hello.get("last_seq")
        missed = (bus.since(int(last)) if isinstance(last, int) and last >= 0
                  and hello.get("epoch") == bus.epoch else None)
        if missed is None:
            sent = await _snapshot(websocket, services, bus)
        else:
            sent = int(last)  # type: ignore[arg-type]
            for event in missed:
                await _send(websocket, event)
                sent = event.seq
        epoch = bus.epoch
        while True:
            if sub.dropped:
                sub.dropped = 0  # this client fell behind: start it over from a snapshot
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sent = await _snapshot(websocket, services, bus)
                epoch = bus.epoch
            event = await sub.queue.get()
            if bus.epoch != epoch:
                # The numbering changed under us (the broker was away and is back): what this
                # client holds may be missing events, so it starts over from a snapshot.
                sent, epoch = await _snapshot(websocket, services, bus), bus.epoch
            if event.seq > sent:
                await _send(websocket, event)
                sent = event.seq
    finally:
        bus.unsubscribe(sub)


async def _snapshot(websocket: WebSocket, services: ApiServices, bus: EventBus) -> int:
    seq = bus.last_seq
    state: dict[str, Any] = {"calls": [], "agents": [], "waiting": []}
    if services.snapshot is not None:
        state = await services.snapshot()
    await websocket.send_json({
        "type": "snapshot", "seq": seq, "epoch": bus.epoch,
        "calls": [redact_row(c) for c in state.get("calls", [])],
        "agents": state.get("agents", []), "waiting": state.get("waiting", [])})
    return seq


async def _send(websocket: WebSocket, event: BusEvent) -> None:
    await websocket.send_json({"type": "event", "seq": event.seq, "kind": event.kind,
                               "call_id": event.call_id,
                               "data": redact_event(event.kind, event.data)})
