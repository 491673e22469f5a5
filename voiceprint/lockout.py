"""Per-account lockout against voice-verification guessing: back off, then disable.

Pure functions over an immutable ``LockoutState``; the caller passes the time in and stores the
state it gets back. Lockout levels are ``normal`` -> ``backoff`` (at ``backoff_after``
consecutive failures every further attempt waits ``backoff_s``) -> ``disabled`` (at
``disable_after``, until a person calls ``reenable``). Each change of level yields one
``LockoutEvent`` for the audit log; failures that do not change the level yield none (the
attempt itself is audited as a decision).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from voiceprint.errors import AccountLockedOut

LockoutEventKind = Literal["backoff_started", "disabled", "reset", "reenabled"]


@dataclass(frozen=True)
class LockoutPolicy:
    """When to slow down and when to stop voice verification for an account."""

    backoff_after: int = 5
    backoff_s: float = 30.0
    disable_after: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.backoff_after <= self.disable_after:
            raise ValueError("need 0 < backoff_after <= disable_after")
        if self.backoff_s <= 0:
            raise ValueError("backoff_s must be positive")


@dataclass(frozen=True)
class LockoutState:
    """What the lockout knows about one account; store it between calls."""

    account_id: str
    consecutive_failures: int = 0
    disabled: bool = False
    next_allowed_at: datetime | None = None
    disabled_at: datetime | None = None

    @property
    def level(self) -> Literal["normal", "backoff", "disabled"]:
        """The lockout level; events are emitted when it changes."""
        if self.disabled:
            return "disabled"
        return "backoff" if self.next_allowed_at is not None else "normal"


@dataclass(frozen=True)
class LockoutEvent:
    """A change of lockout level, to be written to the audit log."""

    kind: LockoutEventKind
    account_id: str
    at: datetime
    consecutive_failures: int
    next_allowed_at: datetime | None = None
    by: str | None = None


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("lockout times must be timezone-aware")


def check(state: LockoutState, now: datetime) -> None:
    """Return if an attempt is allowed at ``now``; otherwise raise ``AccountLockedOut``."""
    _require_aware(now)
    if state.disabled:
        raise AccountLockedOut("disabled", None, "until a person re-enables it")
    if state.next_allowed_at is not None and now < state.next_allowed_at:
        wait = (state.next_allowed_at - now).total_seconds()
        raise AccountLockedOut("backoff", float(math.ceil(wait)))


def record_result(
    state: LockoutState, success: bool, now: datetime, policy: LockoutPolicy
) -> tuple[LockoutState, list[LockoutEvent]]:
    """The state after an attempt that succeeded or failed at ``now``, and the level changes.

    A success on a disabled account does not re-enable it; only ``reenable`` does.
    """
    _require_aware(now)
    if success:
        if state.disabled:
            return state, []
        new = dataclasses.replace(state, consecutive_failures=0, next_allowed_at=None)
        events = []
        if state.level == "backoff":
            events.append(LockoutEvent("reset", state.account_id, now, 0))
        return new, events

    failures = state.consecutive_failures + 1
    if state.disabled or failures >= policy.disable_after:
        new = dataclasses.replace(
            state,
            consecutive_failures=failures,
            disabled=True,
            next_allowed_at=None,
            disabled_at=state.disabled_at or now,
        )
        if state.disabled:
            return new, []
        return new, [LockoutEvent("disabled", state.account_id, now, failures)]
    if failures >= policy.backoff_after:
        next_allowed = now + timedelta(seconds=policy.backoff_s)
        new = dataclasses.replace(
            state, consecutive_failures=failures, next_allowed_at=next_allowed
        )
        if state.level == "backoff":
            return new, []
        return new, [
            LockoutEvent("backoff_started", state.account_id, now, failures, next_allowed)
        ]
    return dataclasses.replace(state, consecutive_failures=failures), []


def reenable(
    state: LockoutState, by: str, now: datetime
) -> tuple[LockoutState, list[LockoutEvent]]:
    """Re-enable voice verification (a person's decision, recorded with ``by``)."""
    _require_aware(now)
    if not by.strip():
        raise ValueError("reenable needs the name of the person who decided it")
    new = LockoutState(account_id=state.account_id)
    if state == new:
        return new, []
    return new, [LockoutEvent("reenabled", state.account_id, now, 0, by=by)]
