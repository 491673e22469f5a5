"""Tier 2 of account security in the call flow: the voiceprint with a spoken challenge.

After tier 1 passed, an enrolled caller is asked to say a random string of digits. The
recogniser must hear those digits (liveness: a recording of an earlier call says other digits)
and the voice must match the account's template; :class:`VoiceprintService` decides and logs
every attempt. A caller without a voiceprint is offered enrollment (consent by keypad, then the
caller repeats prompted phrases) and goes on to tier 3 for this call.

The decision written on the call drives routing: ``accept`` only when tier 1 passed *and* the
voice matched; everything else (``reject``, ``uncertain``, ``none``) goes to the experts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.numbers import DIGIT_PROMPTS, spoken_digits
from ivr import phone
from ivr.auth.throttle import Limited, Throttle
from ivr.flow.events import Dtmf, SpeechStarted, Spoken
from ivr.flow.session import CallSession
from ivr.settings import VoiceprintSettings
from voiceprint.audio_checks import check_sample, require_usable
from voiceprint.errors import AudioRejected, VoiceprintError
from voiceprint.wav import pcm16_to_float

if TYPE_CHECKING:
    from ivr.flow.states import State
    from voiceprint.service import VoiceprintService

log = logging.getLogger(__name__)

# How long an answer may take once the caller has started speaking (the VAD ends the turn).
_SPEAKING_LIMIT_S = 20.0
# Speech that began this long before a prompt ended still counts as the answer to it.
_EARLY_START_S = 1.0


@dataclass
class VoiceTier:
    """What tier 2 needs in the flow: the service, its settings, and the per-account limit on
    verification attempts (each challenge asked counts; None: unlimited)."""

    service: VoiceprintService
    settings: VoiceprintSettings
    attempts: AttemptLimit | None = None


@dataclass
class AttemptLimit:
    """At most ``limit`` voice challenges per account in ``window_s`` (in the database)."""

    throttle: Throttle
    limit: int
    window_s: int

    def take(self, account_id: str) -> None:
        """Count one attempt; :class:`Limited` past the limit."""
        self.throttle.take(f"voice:{account_id}", self.limit, self.window_s,
                           "voice verification attempts for this account")


async def hear_answer(s: CallSession, asked_at: float, within_s: float) -> Spoken | None:
    """The caller's next utterance begun after ``asked_at``; None if they stay silent."""
    clock = s.ctx.clock
    deadline = clock() + within_s
    speaking = False
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return None
        event = await s.next_event(remaining)
        if event is None:
            return None
        if isinstance(event, SpeechStarted) and not speaking:
            speaking = True
            deadline = max(deadline, clock() + _SPEAKING_LIMIT_S)
        elif isinstance(event, Spoken) and event.started_at >= asked_at - _EARLY_START_S:
            return event


def expect_digits(s: CallSession, hangover_ms: int | None) -> None:
    """Tell the caller's recogniser that digits come next, read with pauses up to
    ``hangover_ms`` (Whisper gets a digits prompt in the call's language); None: no longer."""
    prompt = DIGIT_PROMPTS.get(s.language) if hangover_ms is not None else None
    for listener in s.listeners:
        if listener.speaker == "caller":
            listener.expect(prompt, hangover_ms)


def challenge_prompts(digits: str) -> list[str]:
    """Prompt keys that read the challenge digit by digit."""
    return [f"digit_{d}" for d in digits]


@dataclass
class VerifyVoice:
    """Tier 2: say the challenge digits; the voiceprint service decides."""

    then: State  # where the call goes once the check is decided (routing)
    account_id: str
    result: dict[str, Any]
    name: str = "voice_check"

    async def run(self, s: CallSession) -> State | None:
        tier = s.ctx.voice
        assert tier is not None
        service, settings = tier.service, tier.settings
        status = await asyncio.to_thread(service.status, self.account_id)
        if not status.enrolled:
            await s.record("voice_not_enrolled", {"account_id": self.account_id},
                           state=self.name)
            return EnrollVoice(self.then, self.account_id,
                               {**self.result, "tier2": "no_enrollment", "decision": "none"})
        if status.reenroll_reason is not None:
            # Never scored against another model's template: this call goes to tier 3 and
            # the caller is offered a new enrollment.
            await s.record("voice_reenroll_needed", {"account_id": self.account_id,
                                                     "reason": status.reenroll_reason},
                           state=self.name)
            return EnrollVoice(self.then, self.account_id,
                               {**self.result, "tier2": "reenroll",
                                "tier2_reason": status.reenroll_reason, "decision": "none"})
        await s.record("state", {"state": self.name}, state=self.name)
        verdict: dict[str, Any] = {"tier2": "no_answer", "decision": "uncertain"}
        for attempt in range(1, settings.challenge_attempts + 1):
            if tier.attempts is not None:
                try:
                    await asyncio.to_thread(tier.attempts.take, self.account_id)
                except Limited as exc:
                    await s.record("voice_rate_limited", {"attempt": attempt,
                                                          "retry_after_s": exc.retry_after_s})
                    verdict = {"tier2": "rate_limited", "decision": "none"}
                    break
            digits = "".join(secrets.choice("0123456789")
                             for _ in range(settings.challenge_digits))
            # Their value is that nobody could know them before the call (so a recording
            # cannot say them). They go to the security log only, never to the call's events
            # that supervisors watch.
            await asyncio.to_thread(service.log_challenge, self.account_id, digits,
                                    call_id=s.call_id,
                                    caller_number=phone.national(s.call.caller_number),
                                    attempt=attempt)
            await s.record("voice_challenge", {"attempt": attempt})
            intro = "voice_challenge" if attempt == 1 else "voice_retry"
            expect_digits(s, settings.answer_hangover_ms)
            try:
                await s.play([intro, *challenge_prompts(digits), "voice_go"],
                             interruptible=False)
                asked_at = s.ctx.clock()
                await s.record("voice_listening", {"attempt": attempt})
                answer = await hear_answer(s, asked_at, settings.answer_timeout_s)
            finally:
                expect_digits(s, None)
            if answer is None:
                await s.record("voice_no_answer", {"attempt": attempt})
                continue
            heard = spoken_digits(answer.text)
            decision = await asyncio.to_thread(
                service.verify, self.account_id, pcm16_to_float(answer.pcm),
                call_id=s.call_id, caller_number=phone.national(s.call.caller_number),
                challenge_expected=digits, challenge_heard=heard,
                tier_results={"tier1": self.result.get("tier1"), "attempt": attempt})
            # What was asked and heard is in the audit record (audit_seq), not on the call.
            verdict = {"tier2": decision.decision, "tier2_reason": decision.reason,
                       "raw_score": decision.raw_score, "norm_score": decision.norm_score,
                       "replay": decision.replay, "audit_seq": decision.record.seq,
                       "decision": _overall(decision.decision)}
            await s.record("voice_decision", verdict)
            # A misheard challenge or a poor sample deserves one more go; a mismatch does not.
            retry = decision.decision in ("reject", "uncertain") and not decision.replay and (
                decision.reason.startswith("challenge") or decision.reason.startswith("sample"))
            if not retry:
                break
        accepted = verdict["decision"] == "accept"
        await s.play(["voice_accepted" if accepted else "voice_not_verified"],
                     interruptible=False)
        verification = {**self.result, **verdict}
        await s.record("verification", verification, verification=verification)
        return self.then


def _overall(tier2: str) -> str:
    # Tier 1 has passed when tier 2 runs; lockout and missing templates are "no result".
    return tier2 if tier2 in ("accept", "reject", "uncertain") else "none"


@dataclass
class EnrollVoice:
    """Offer a voiceprint to a caller who passed tier 1 and has none (consent by keypad)."""

    then: State  # where the call goes afterwards (routing)
    account_id: str
    result: dict[str, Any]
    name: str = "voice_enrollment"
    samples: list[np.ndarray[Any, Any]] = field(default_factory=list)

    async def run(self, s: CallSession) -> State | None:
        tier = s.ctx.voice
        assert tier is not None
        await s.record("state", {"state": self.name}, state=self.name)
        consent = await self._consent(s)
        await s.record("voice_consent", {"consent": consent})
        outcome = "declined"
        if consent:
            outcome = await self._enroll(s, tier)
        verification = {**self.result, "enrollment": outcome}
        await s.record("verification", verification, verification=verification)
        return self.then

    async def _consent(self, s: CallSession) -> bool:
        heard = await s.play(["voice_consent"])
        if heard is None:
            heard = await s.wait_input(s.ctx.settings.menu_timeout_s)
        return isinstance(heard, Dtmf) and heard.digit == "1"

    async def _enroll(self, s: CallSession, tier: VoiceTier) -> str:
        settings = tier.settings
        await s.play(["enroll_intro"], interruptible=False)
        for _round in range(2):  # a second pass when the first did not give enough speech
            for index in range(1, settings.enroll_phrases + 1):
                await s.play([f"enroll_phrase_{(index - 1) % 3 + 1}"], interruptible=False)
                asked_at = s.ctx.clock()
                await s.record("enroll_listening", {"phrase": index})
                answer = await hear_answer(s, asked_at, settings.answer_timeout_s)
                if answer is None:
                    continue
                sample = pcm16_to_float(answer.pcm)
                try:  # one poor repetition is dropped, not the whole enrollment
                    require_usable(check_sample(sample, 16000), min_speech_s=0.5)
                except AudioRejected as exc:
                    await s.record("enroll_sample_rejected", {"reason": exc.reason})
                    continue
                self.samples.append(sample)
            await s.record("enroll_samples", {"samples": len(self.samples)})
            try:
                record = await asyncio.to_thread(
                    tier.service.enroll, self.account_id, list(self.samples), consent=True,
                    call_id=s.call_id)
            except AudioRejected as exc:
                await s.record("enroll_rejected", {"reason": exc.reason})
                if exc.reason == "too_short":
                    continue
                break
            except VoiceprintError as exc:
                log.warning("enrollment failed", extra={"call_id": s.call_id,
                                                        "error": type(exc).__name__})
                break
            await s.record("enrolled", {"audit_seq": record.seq})
            await s.play(["enroll_done"], interruptible=False)
            return "enrolled"
        await s.play(["enroll_failed"], interruptible=False)
        return "failed"
