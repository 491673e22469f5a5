"""``/api/v1/calls/{call_id}/listen``: listen, whisper and barge from the supervisor's browser.

Why audio over this WebSocket and not WebRTC: the console already holds an authenticated,
role-checked socket to this process, and the call's audio already reaches this process as RTP
from Asterisk (the same ExternalMedia path the speech recogniser uses). Relaying it needs no
SIP stack in the page, no DTLS certificates, ICE or TURN, and no second login, and it passes
any HTTP reverse proxy that passes the live board. The cost is a few tens of milliseconds of
extra delay, which monitoring tolerates. Desk phones keep working through ``POST .../monitor``.

Protocol:

- First message ``{"type": "auth", "token": ..., "mode": "listen" | "whisper" | "barge"}``
  (or a bearer header and ``?mode=``); the usual close codes for a bad token (4401), role
  (4403), malformed message (4400) and a source over its failure limit (4429).
- Refusals close the socket with ``4000 + status`` and the reason: 4404 no such live call,
  4409 whisper or barge with no agent on the call, 4422 an unknown mode, 4503 no media here.
- Then ``{"type": "started", "monitor_id", "mode", "target", "format": "s16le", "rate":
  8000, "frame_ms": 20}`` and binary frames of 320 bytes: 20 ms of 8 kHz 16-bit little-endian
  mono (telephone quality, what the phones themselves carry), what the supervisor hears
  (caller and agent mixed).
- Whisper and barge: the browser sends its microphone as binary frames of the same format,
  any whole number of samples up to 200 ms per frame. A frame of odd length or over that size
  closes the socket with 4400; in listen mode audio is not forwarded and one ``{"type":
  "error"}`` message says so. Faster than real time (plus half a second) is dropped.
- ``{"type": "stop"}`` or closing the socket ends the monitor. The call ending closes the
  socket with 1000 and the reason ``call ended``; a lost PBX connection with 1011.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ivr.api.live import LIVE_ROLES, admit, watch_token
from ivr.api.services import ApiServices
from ivr.errors import MonitorRefused
from ivr.flow.monitor import FRAME_BYTES, RATE, WHISPER, Monitor, MonitorAudio

log = logging.getLogger(__name__)

MAX_SPEAK_BYTES = RATE * 2 // 5  # 200 ms per frame from the browser
NORMAL, PBX_LOST = 1000, 1011


def monitor_audio_router(services: ApiServices) -> APIRouter:
    """The browser monitor's WebSocket."""
    router = APIRouter()

    @router.websocket("/api/v1/calls/{call_id}/listen")
    async def listen_in(websocket: WebSocket, call_id: str) -> None:
        await websocket.accept()
        admitted = await admit(websocket, LIVE_ROLES, "listen to calls")
        if admitted is None:
            return
        principal, hello = admitted
        mode = str(hello.get("mode") or websocket.query_params.get("mode") or "listen")
        if mode not in WHISPER:
            await websocket.close(4422, f"unknown mode {mode[:20]!r}; listen, whisper or barge")
            return
        start = services.supervise_in_browser
        if start is None or services.end_browser_monitor is None:
            await websocket.close(4503, "call control is not available in this process")
            return
        try:
            monitor = await start(call_id, mode, principal.label)
        except MonitorRefused as exc:
            await websocket.close(4000 + exc.status, str(exc)[:120])
            return
        audio = monitor.audio
        assert audio is not None
        reason = "supervisor left"
        try:
            await websocket.send_json({
                "type": "started", "monitor_id": monitor.id, "mode": mode,
                "target": monitor.target, "format": "s16le", "rate": RATE,
                "frame_ms": FRAME_BYTES * 1000 // (RATE * 2)})
            reason = await _relay(websocket, services, principal, monitor, audio)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            await services.end_browser_monitor(monitor, reason)
        log.info("browser monitor ended", extra={
            "call_id": call_id, "mode": mode, "reason": reason,
            "spoken_frames": audio.spoken_frames, "dropped_frames": audio.dropped_frames,
            "heard_frames": audio.receiver.stats.accepted})

    return router


async def _relay(websocket: WebSocket, services: ApiServices, principal: Any,
                 monitor: Monitor, audio: MonitorAudio) -> str:
    """Carry audio both ways until one side ends; return why it ended (the first reason)."""
    ended: dict[str, str] = {}

    async with anyio.create_task_group() as group:

        async def hear() -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                async for frame in audio.frames():
                    await websocket.send_bytes(frame)
                # The monitor ended on the PBX side: the call (or the PBX link) is gone.
                reason = ended.setdefault("reason", audio.end_reason or "call ended")
                await websocket.close(PBX_LOST if reason == "PBX connection lost" else NORMAL,
                                      reason)
            group.cancel_scope.cancel()

        async def speak() -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                ended.setdefault("reason", await _read(websocket, monitor, audio))
            group.cancel_scope.cancel()

        async def check_token() -> None:
            await watch_token(websocket, services, principal)
            ended.setdefault("reason", "token no longer valid")
            group.cancel_scope.cancel()

        group.start_soon(hear)
        group.start_soon(speak)
        group.start_soon(check_token)
    return ended.get("reason", "supervisor left")


async def _read(websocket: WebSocket, monitor: Monitor, audio: MonitorAudio) -> str:
    told_listen = False
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return "supervisor left"
        data = message.get("bytes")
        if data is not None:
            if len(data) % 2 or len(data) > MAX_SPEAK_BYTES:
                await websocket.close(4400, f"audio frames are 16-bit samples, at most "
                                      f"{MAX_SPEAK_BYTES} bytes; got {len(data)}")
                return "bad audio frame"
            if monitor.mode == "listen":
                if not told_listen:
                    told_listen = True
                    await websocket.send_json({
                        "type": "error", "message": "listen mode sends no audio; "
                        "start a whisper or barge to speak"})
                continue
            audio.speak(data)
            continue
        try:
            command = json.loads(message.get("text") or "")
        except ValueError:
            command = None
        if isinstance(command, dict) and command.get("type") == "stop":
            await websocket.close(NORMAL, "stopped by the supervisor")
            return "stopped by the supervisor"
        await websocket.send_json({"type": "error",
                                   "message": 'expected audio frames or {"type": "stop"}'})
