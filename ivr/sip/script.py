"""Scripted test calls: ``ivr call --step ...`` drives a call through the flow one step at a time.

Steps (in order, each ``kind[:value][:timeout]``):

- ``wait:S``: stay on the line S seconds.
- ``keys:DIGITS``: press keys (RFC 4733 DTMF), e.g. ``keys:3`` or ``keys:13912345678#``.
- ``play:FILE.wav``: say something (the WAV is played into the call, to its end).
- ``state:NAME[|NAME...][:S]``: wait (up to S seconds, 30 by default) until the service records
  the call in one of these states (``menu``, ``verifying``, ``voice_check``, ``queued``,
  ``connected``, ``callback``...): the scripted equivalent of waiting for a prompt.
- ``routed[:S]``: wait until the call has a routing decision.
- ``agent[:S]``: wait until an agent answers (state ``connected``).
- ``code:ACCOUNT[:S]``: read the one-time code sent to ACCOUNT since the call began from the
  development outbox, and key it in followed by ``#``.
- ``hangup``: hang up now (the call is hung up after the last step anyway).

Reading the call's state and the outbox goes through the service's API with a short-lived admin
token of the command's own (deleted afterwards).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ivr.errors import IvrError

DEFAULT_TIMEOUT_S = 30.0
KINDS = ("wait", "keys", "play", "state", "routed", "agent", "code", "hangup")
_CODE = re.compile(r"code is (\d{4,10})")
_DIGITS = re.compile(r"^[0-9*#A-D]{1,64}$")


class ScriptError(IvrError):
    """A step that cannot be read, or one that did not happen in time."""


@dataclass(frozen=True)
class Step:
    """One parsed step."""

    text: str
    kind: str
    value: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S


def _seconds(text: str, step: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScriptError(f"step {step!r}: {text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise ScriptError(f"step {step!r}: seconds must be between 0 and 3600")
    return value


def parse_step(text: str) -> Step:
    """``text`` as a step, or ScriptError saying what is wrong with it."""
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ScriptError(f"unknown step {text!r}; steps: {', '.join(KINDS)}")
    if kind == "hangup":
        return Step(text, kind)
    if kind == "wait":
        return Step(text, kind, timeout_s=_seconds(rest, text))
    if kind == "keys":
        if not _DIGITS.match(rest):
            raise ScriptError(f"step {text!r}: keys are 0-9, *, # and A-D")
        return Step(text, kind, rest)
    if kind == "play":
        if not rest or not Path(rest).is_file():
            raise ScriptError(f"step {text!r}: no such WAV file")
        return Step(text, kind, rest)
    if kind in ("routed", "agent"):
        return Step(text, kind, timeout_s=_seconds(rest, text) if rest else DEFAULT_TIMEOUT_S)
    value, _, timeout = rest.partition(":")
    if not value:
        raise ScriptError(f"step {text!r} needs a value ({kind}:...)")
    return Step(text, kind, value, _seconds(timeout, text) if timeout else DEFAULT_TIMEOUT_S)


class ScriptedCall(Protocol):
    """What the steps do to the call (a :class:`ivr.sip.phone.PhoneCall`)."""

    @property
    def ended(self) -> bool:
        """Whether the call is over."""

    def send_dtmf(self, digits: str, gap_s: float = 0.25) -> None:
        """Press keys."""

    def play(self, wav: Path, wait: bool = True) -> float:
        """Play a WAV into the call."""

    def hangup(self) -> None:
        """Hang up."""


class ServiceView(Protocol):
    """What the steps read from the service."""

    def call(self) -> dict[str, Any] | None:
        """The call's record (None until the service has one)."""

    def codes(self, account_id: str, since: datetime) -> list[str]:
        """Codes sent to the account since ``since``, newest first."""


def run_steps(call: ScriptedCall, steps: list[Step], view: ServiceView,
              sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Run ``steps`` on ``call``; one result per step run. Stops at the first step that fails
    (the result says why, ``ok: false``)."""
    started_at = datetime.now(UTC)
    origin = time.monotonic()
    results: list[dict[str, Any]] = []
    for step in steps:
        began = time.monotonic()
        outcome: dict[str, Any] = {"step": step.text, "ok": True}
        try:
            detail = _run(step, call, view, started_at, sleep)
            if detail is not None:
                outcome["detail"] = detail
        except (ScriptError, IvrError) as exc:
            outcome.update(ok=False, error=str(exc))
        outcome["at_s"] = round(began - origin, 2)
        outcome["took_s"] = round(time.monotonic() - began, 2)
        results.append(outcome)
        if not outcome["ok"] or step.kind == "hangup":
            break
    return results


def _run(step: Step, call: ScriptedCall, view: ServiceView, started_at: datetime,
         sleep: Callable[[float], None]) -> Any:
    if step.kind == "wait":
        deadline = time.monotonic() + step.timeout_s
        while time.monotonic() < deadline and not call.ended:
            sleep(0.05)
        return None
    if call.ended:
        raise ScriptError("the call ended before this step")
    if step.kind == "keys":
        call.send_dtmf(step.value)
        return None
    if step.kind == "play":
        return {"seconds": round(call.play(Path(step.value)), 2)}
    if step.kind == "hangup":
        call.hangup()
        return None
    if step.kind == "code":
        code = _until(lambda: next(iter(view.codes(step.value, started_at)), None), step,
                      call, sleep, f"a code sent to {step.value}")
        call.send_dtmf(code + "#")
        return {"account_id": step.value}
    wanted = (set(step.value.split("|")) if step.kind == "state"
              else {"connected"} if step.kind == "agent" else set())

    def reached() -> dict[str, Any] | None:
        record = view.call()
        if record is None:
            return None
        if step.kind == "routed":
            return record if record.get("route_decision") else None
        return record if record.get("state") in wanted else None

    record = _until(reached, step, call, sleep, "the call to be routed" if step.kind == "routed"
                    else f"state {' or '.join(sorted(wanted))}")
    return {"state": record.get("state"), "agent_id": (record.get("route") or {}).get(
        "agent_id")}


def _until(check: Callable[[], Any], step: Step, call: ScriptedCall,
           sleep: Callable[[float], None], what: str) -> Any:
    deadline = time.monotonic() + step.timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        if call.ended:
            raise ScriptError(f"the call ended while waiting for {what}")
        sleep(0.2)
    raise ScriptError(f"no {what} within {step.timeout_s:g} s")


class ApiView:
    """The service's API seen with a bearer token: the call by its SIP Call-ID, the outbox."""

    def __init__(self, base: str, token: str, sip_call_id: Callable[[], str | None]) -> None:
        import httpx

        self._client = httpx.Client(base_url=base, timeout=3.0,
                                    headers={"Authorization": f"Bearer {token}"})
        self._sip_call_id = sip_call_id

    def __enter__(self) -> ApiView:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def _get(self, path: str, **params: Any) -> Any:
        import httpx

        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ScriptError(f"the service's API is not reachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ScriptError(f"GET {path}: {response.status_code} {response.text[:200]}")
        return response.json()

    def call(self) -> dict[str, Any] | None:
        """The call's record."""
        sip_call_id = self._sip_call_id()
        if not sip_call_id:
            return None
        record: dict[str, Any] | None = self._get(f"/calls/{sip_call_id}")
        return record

    def codes(self, account_id: str, since: datetime) -> list[str]:
        """Codes in the development outbox for the account, sent since ``since``."""
        messages = self._get("/verification/outbox", account_id=account_id) or []
        found = []
        for message in messages:
            sent = datetime.fromisoformat(message["created_at"])
            if sent.tzinfo is None:
                sent = sent.replace(tzinfo=UTC)
            match = _CODE.search(message["body"])
            if match and sent >= since:
                found.append(match.group(1))
        return found
