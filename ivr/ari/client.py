"""Asyncio ARI client: REST over httpx, events over the WebSocket, errors mapped to ours."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ivr.ari.events import AriEvent, parse_event
from ivr.asterisk.instance import AriCredentials
from ivr.errors import AriRequestError, AriUnavailableError


class AriClient:
    """One connection to an Asterisk's ARI for one Stasis application."""

    def __init__(self, creds: AriCredentials, timeout_s: float = 5.0) -> None:
        self.creds = creds
        self.timeout_s = timeout_s
        self._tls = ssl.create_default_context(cafile=creds.ca_file)
        # A bounded pool: under a burst, requests wait here instead of opening more sockets
        # than Asterisk's HTTP server takes (its session limit is 100).
        self._http = httpx.AsyncClient(
            base_url=creds.base_url + "/ari", auth=(creds.user, creds.password),
            timeout=timeout_s, verify=self._tls,
            limits=httpx.Limits(max_connections=40, max_keepalive_connections=40))

    async def __aenter__(self) -> AriClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: dict[str, Any] | None = None) -> Any:
        """Call an ARI REST resource; returns decoded JSON (or None for 204)."""
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TimeoutException as exc:
            raise AriUnavailableError(f"ARI {method} {path} timed out") from exc
        except httpx.TransportError as exc:
            raise AriUnavailableError(f"ARI {method} {path}: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message", response.text))
            except ValueError:
                message = response.text
            raise AriRequestError(method, path, response.status_code, message)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def subscribe(self, subscribe_all: bool = False) -> AriEventStream:
        """Open the events WebSocket (registering the Stasis app) and return the event stream."""
        url = self.creds.ws_url + ("&subscribeAll=true" if subscribe_all else "")
        token = base64.b64encode(f"{self.creds.user}:{self.creds.password}".encode()).decode()
        try:
            # Pings find a frozen PBX (the TCP connection stays open) within about two
            # request timeouts; the calls are then reconciled when it answers again.
            connection = await websockets.connect(
                url, additional_headers={"Authorization": f"Basic {token}"},
                open_timeout=self.timeout_s, max_size=2**22,
                ping_interval=self.timeout_s, ping_timeout=self.timeout_s,
                ssl=self._tls if url.startswith("wss://") else None)
        except (OSError, InvalidHandshake, InvalidStatus, TimeoutError) as exc:
            raise AriUnavailableError(f"ARI events WebSocket: {type(exc).__name__}") from exc
        return AriEventStream(connection)


class AriEventStream:
    """Events of one ARI WebSocket connection; iterate with ``async for``, then ``aclose``."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    def __aiter__(self) -> AsyncIterator[AriEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AriEvent]:
        try:
            async for message in self._connection:
                data = json.loads(message)
                if isinstance(data, dict):
                    yield parse_event(data)
        except ConnectionClosed as exc:
            raise AriUnavailableError("ARI events WebSocket closed") from exc

    async def aclose(self) -> None:
        """Close the WebSocket (the Stasis app is unregistered)."""
        await self._connection.close()
