"""Lockout: back off after 5 failures, disable after 50, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from voiceprint.errors import AccountLockedOut, LockedOut
from voiceprint.lockout import (
    LockoutEvent,
    LockoutPolicy,
    LockoutState,
    check,
    record_result,
    reenable,
)

pytestmark = pytest.mark.unit

POLICY = LockoutPolicy(backoff_after=5, backoff_s=30, disable_after=50)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A fake clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def fail(state: LockoutState, clock: Clock, events: list[LockoutEvent]) -> LockoutState:
    check(state, clock.now)
    new, produced = record_result(state, False, clock.now, POLICY)
    events.extend(produced)
    return new


def test_four_failures_need_no_wait_and_the_fifth_starts_a_30_s_backoff() -> None:
    clock, events = Clock(), list[LockoutEvent]()
    state = LockoutState("acct-1")
    for _ in range(4):
        state = fail(state, clock, events)
        clock.advance(1)
    assert events == [] and state.level == "normal"
    check(state, clock.now)
    state = fail(state, clock, events)
    assert [e.kind for e in events] == ["backoff_started"]
    assert events[0].next_allowed_at == clock.now + timedelta(seconds=30)
    assert events[0].consecutive_failures == 5

    clock.advance(10)
    with pytest.raises(LockedOut) as info:
        check(state, clock.now)
    assert isinstance(info.value, AccountLockedOut)
    assert info.value.reason == "backoff"
    assert info.value.retry_after_s == 20
    clock.advance(19.5)
    with pytest.raises(AccountLockedOut) as info:
        check(state, clock.now)
    assert info.value.retry_after_s == 1  # rounded up, never 0
    clock.advance(0.5)
    check(state, clock.now)  # 30 s after the 5th failure

    # Each further failure waits again, without a new level-change event.
    state = fail(state, clock, events)
    with pytest.raises(AccountLockedOut):
        check(state, clock.advance(29))
    check(state, clock.advance(1))
    assert len(events) == 1


def test_success_resets_the_counter_and_leaving_backoff_is_an_event() -> None:
    clock, events = Clock(), list[LockoutEvent]()
    state = LockoutState("acct-2")
    for _ in range(3):
        state = fail(state, clock, events)
    state, produced = record_result(state, True, clock.now, POLICY)
    assert produced == [] and state.consecutive_failures == 0
    for _ in range(5):
        state = fail(state, clock, events)
        clock.advance(30)
    state, produced = record_result(state, True, clock.now, POLICY)
    assert [e.kind for e in produced] == ["reset"]
    assert state == LockoutState("acct-2")
    check(state, clock.now)
    for _ in range(4):  # the count starts again from zero
        state = fail(state, clock, events)
    check(state, clock.now)


def test_fifty_failures_disable_until_a_person_reenables() -> None:
    clock, events = Clock(), list[LockoutEvent]()
    state = LockoutState("acct-3")
    for _ in range(50):
        state = fail(state, clock, events)
        clock.advance(30)
    assert [e.kind for e in events] == ["backoff_started", "disabled"]
    assert events[1].consecutive_failures == 50
    assert state.disabled and state.disabled_at is not None
    clock.advance(86_400 * 365)
    with pytest.raises(AccountLockedOut) as info:
        check(state, clock.now)
    assert info.value.reason == "disabled" and info.value.retry_after_s is None
    # A success reported anyway does not lift it.
    still, produced = record_result(state, True, clock.now, POLICY)
    assert still.disabled and produced == []

    state, produced = reenable(state, by="supervisor-7", now=clock.now)
    assert [(e.kind, e.by) for e in produced] == [("reenabled", "supervisor-7")]
    check(state, clock.now)
    assert state.consecutive_failures == 0
    with pytest.raises(ValueError, match="name of the person"):
        reenable(state, by=" ", now=clock.now)


def test_naive_times_and_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check(LockoutState("a"), datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        LockoutPolicy(backoff_after=10, disable_after=5)
