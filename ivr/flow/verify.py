"""Tier 1 of account security in the call flow: a one-time code entered on the keypad.

The result is written on the call (``verification``) and used by the routing rules (each
verification state is given the state to go on with, ``then``): a caller
who fails tier 1 never reaches tier 2 and goes to the security experts (tier 3). A passed tier 1
leads to the voiceprint (:mod:`ivr.flow.voice`) when tier 2 is available (voiceprint service and
speech path); otherwise it is recorded as ``tier2: not_available`` and the decision stays
``none``: a code alone unlocks nothing, and neither does a voiceprint.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivr.auth.throttle import Limited
from ivr.flow.session import CallSession
from ivr.flow.voice import VerifyVoice

if TYPE_CHECKING:
    from ivr.flow.states import State


@dataclass
class VerifyCode:
    """Send a code to the account's registered phone and have the caller key it in."""

    then: State  # where the call goes once the check is decided (routing)
    name: str = "verifying"

    async def run(self, s: CallSession) -> State | None:
        services = s.ctx.verification
        if services is None:
            await self._done(s, {"tier1": "not_available", "decision": "none"})
            return self.then
        account = await asyncio.to_thread(services.accounts.find_by_number,
                                          s.call.caller_number)
        if account is None:
            await self._done(s, {"tier1": "no_account", "decision": "none"})
            return self.then
        try:
            code_id = await asyncio.to_thread(services.codes.issue, account, s.call_id)
        except Limited as exc:
            # Too many codes for this account lately: no SMS; a person (tier 3) decides.
            await s.record("code_rate_limited", {"account_id": account.id,
                                                 "retry_after_s": exc.retry_after_s})
            await self._done(s, {"account_id": account.id, "tier1": "rate_limited",
                                 "decision": "none"})
            return self.then
        result: dict[str, Any] = {"account_id": account.id, "tier1": "sent"}
        await s.record("code_sent", {"account_id": account.id}, state=self.name,
                       verification=result)
        heard = await s.play(["otp_sent"])
        reason = "no_input"
        while True:
            digits = await s.keyed_digits(heard, max_digits=12)
            check = await asyncio.to_thread(services.codes.check, code_id, digits)
            await s.record("code_checked", {"ok": check.ok, "reason": check.reason,
                                            "attempts_left": check.attempts_left})
            if check.ok:
                await s.play(["verified"], interruptible=False)
                passed = {**result, "tier1": "passed"}
                if s.ctx.voice is not None and s.ctx.speech is not None:
                    await s.record("code_passed", {"account_id": account.id},
                                   verification=passed)
                    return VerifyVoice(self.then, account.id, passed)
                await self._done(s, {**passed, "tier2": "not_available", "decision": "none"})
                return self.then
            reason = check.reason
            if check.attempts_left <= 0 or check.reason != "wrong":
                break
            heard = await s.play(["otp_wrong"])
        await s.play(["otp_failed"], interruptible=False)
        await self._done(s, {**result, "tier1": "failed", "tier1_reason": reason,
                             "decision": "reject"})
        return self.then

    async def _done(self, s: CallSession, verification: dict[str, Any]) -> None:
        await s.record("verification", verification, verification=verification)
