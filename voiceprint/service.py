"""Tier 2 as one service: enrollment, verification, revocation — every decision audited.

A verification runs, in order: lockout check, enrollment present, sample quality, replay check
against every earlier sample of the account, spoken-challenge check (liveness), then the
embedding score, s-normalised against a cohort of other accounts' templates, and the decision
with the configured thresholds. Templates are sealed with AES-GCM under a per-template data key
wrapped by the master key; raw audio is never kept (only replay fingerprints).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from voiceprint import lockout
from voiceprint.audio_checks import check_sample, require_usable
from voiceprint.audit import AuditEntry, DecisionRecord, mask_caller
from voiceprint.audit_store import AuditStore
from voiceprint.embedding import Embedder
from voiceprint.errors import AccountLockedOut, AudioRejected, ConsentMissing
from voiceprint.replay import DEFAULT_REPLAY_THRESHOLD, Fingerprint, fingerprint, is_replay
from voiceprint.scoring import CohortNormaliser, Thresholds, cosine
from voiceprint.store import FingerprintRow, LockoutRow, RecordingRow, TemplateRow
from voiceprint.templates import MasterKey, SealedTemplate, open_template, seal, seal_audio

Audio = npt.NDArray[np.float32]


def edit_distance(expected: Sequence[Hashable], heard: Sequence[Hashable]) -> int:
    """Levenshtein distance: digits of a challenge, or words for an error rate."""
    row = list(range(len(heard) + 1))
    for i, want in enumerate(expected, 1):
        diagonal, row[0] = row[0], i
        for j, got in enumerate(heard, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (want != got))
    return row[-1]


@dataclass(frozen=True)
class VoiceprintOptions:
    """Thresholds and limits; every decision records the values it used."""

    # On s-normalised scores (z-like units); pick them with scripts/eval_voiceprint.py for the
    # target false-match rate of the deployment's model and channel.
    thresholds: Thresholds = field(default_factory=lambda: Thresholds(accept=3.0, reject=1.5))
    min_enroll_speech_s: float = 20.0
    min_verify_speech_s: float = 1.0
    replay_threshold: float = DEFAULT_REPLAY_THRESHOLD
    lockout: lockout.LockoutPolicy = field(default_factory=lockout.LockoutPolicy)
    cohort_size: int = 50
    # None: raw audio is never kept; otherwise sealed and purged after this long.
    retain_audio: timedelta | None = None
    # Digits the recogniser may get wrong (edits: substituted, dropped or extra) and the
    # challenge still count as said. The challenge proves liveness, not identity: a recording
    # comes within one edit of 6 fresh random digits about once in 10,000 tries, while the
    # CPU default Whisper drops or swaps one Mandarin digit in about half of the answers.
    challenge_max_errors: int = 1


@dataclass(frozen=True)
class VoiceStatus:
    """An account's tier-2 state, for the security team."""

    account_id: str
    enrolled: bool
    enrolled_at: datetime | None
    model_id: str | None
    lockout: str  # normal | backoff | disabled
    consecutive_failures: int
    next_allowed_at: datetime | None
    retained_recordings: int


@dataclass(frozen=True)
class VoiceprintDecision:
    """What tier 2 decided, and the record that logs it."""

    decision: str  # accept | reject | uncertain | no_enrollment | locked
    reason: str
    raw_score: float | None
    norm_score: float | None
    replay: bool
    record: DecisionRecord


def _pcm16(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class VoiceprintService:
    """Enrollment and verification for accounts, on one database and one embedder."""

    def __init__(self, engine: Engine, embedder: Embedder, master_key: MasterKey,
                 options: VoiceprintOptions | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.embedder = embedder
        self.key = master_key
        self.options = options or VoiceprintOptions()
        self.clock = clock
        self.audit = AuditStore(engine, clock)

    # -- enrollment --------------------------------------------------------------------------

    def enroll(self, account_id: str, samples: Sequence[Audio], *, consent: bool,
               call_id: str | None = None, by: str | None = None) -> DecisionRecord:
        """Enroll from samples with enough net speech; replaces an earlier template."""
        if not consent:
            raise ConsentMissing(f"account {account_id}: no recorded consent to enroll")
        speech = 0.0
        for index, sample in enumerate(samples):
            quality = check_sample(sample, self.embedder.sample_rate)
            try:
                require_usable(quality, min_speech_s=0.5)
            except AudioRejected as exc:
                raise AudioRejected(exc.reason, f"sample {index + 1}: {exc.detail}") from exc
            speech += quality.speech_s
        if speech < self.options.min_enroll_speech_s:
            raise AudioRejected("too_short", f"{speech:.1f} s of speech in all samples, "
                                f"{self.options.min_enroll_speech_s:.0f} s needed")
        embeddings = self.embedder.embed(list(samples))
        mean = embeddings.mean(axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-9)
        template_id = uuid.uuid4().hex
        sealed = seal(mean, template_id, account_id, self.key)
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            session.execute(delete(TemplateRow).where(TemplateRow.account_id == account_id))
            session.add(TemplateRow(
                id=template_id, account_id=account_id, ciphertext=sealed.ciphertext,
                nonce=sealed.nonce, wrapped_key=sealed.wrapped_key, key_nonce=sealed.key_nonce,
                key_id=sealed.key_id, version=sealed.version, model_id=self.embedder.model_id,
                created_at=now))
            for sample in samples:
                session.add(FingerprintRow(account_id=account_id, source="enrollment",
                                           data=fingerprint(_pcm16(sample)).data,
                                           created_at=now))
                self._retain(session, account_id, "enrollment", _pcm16(sample), now)
        return self.audit.append(AuditEntry(
            kind="enrollment", call_id=call_id, account_id=account_id,
            tier_results={"samples": len(samples), "speech_s": round(speech, 1),
                          "consent": True},
            model_id=self.embedder.model_id, model_version=self.embedder.model_version,
            decision="enrolled", reviewer=by))

    def delete(self, account_id: str, by: str) -> DecisionRecord:
        """Remove the template, every sample fingerprint and every retained recording."""
        with Session(self.engine) as session, session.begin():
            session.execute(delete(TemplateRow).where(TemplateRow.account_id == account_id))
            session.execute(delete(FingerprintRow).where(FingerprintRow.account_id == account_id))
            session.execute(delete(RecordingRow).where(RecordingRow.account_id == account_id))
        return self.audit.append(AuditEntry(kind="deletion", account_id=account_id,
                                            decision="deleted", reviewer=by))

    def revoke(self, account_id: str, by: str) -> DecisionRecord:
        """Stop using the template (re-enrollment needed); fingerprints stay for replay checks."""
        with Session(self.engine) as session, session.begin():
            gone = session.execute(delete(TemplateRow).where(
                TemplateRow.account_id == account_id)).rowcount  # type: ignore[attr-defined]
        return self.audit.append(AuditEntry(
            kind="deletion", account_id=account_id, decision="revoked", reviewer=by,
            tier_results={"templates_removed": int(gone or 0), "fingerprints_kept": True}))

    def reenable(self, account_id: str, by: str) -> bool:
        """A person re-enables voice verification after a lockout; audited. False if not locked."""
        state = self._lockout_state(account_id)
        new_state, events = lockout.reenable(state, by, self.clock())
        if not events:
            return False
        self._save_lockout(new_state)
        for event in events:
            self.audit.append(AuditEntry(
                kind="lockout", account_id=account_id, reviewer=by, decision=event.kind,
                tier_results={"event": event.kind, "previous_failures":
                              state.consecutive_failures}))
        return True

    def status(self, account_id: str) -> VoiceStatus:
        """Enrollment and lockout state of an account."""
        self.purge_expired()
        with Session(self.engine) as session:
            row = session.scalars(select(TemplateRow).where(
                TemplateRow.account_id == account_id)).first()
            kept = len(session.scalars(select(RecordingRow.id).where(
                RecordingRow.account_id == account_id)).all())
        state = self._lockout_state(account_id)
        return VoiceStatus(account_id, row is not None,
                           _aware(row.created_at) if row else None,
                           row.model_id if row else None, state.level,
                           state.consecutive_failures, state.next_allowed_at, kept)

    def purge_expired(self) -> int:
        """Delete retained recordings past their expiry; how many went."""
        with Session(self.engine) as session, session.begin():
            gone = session.execute(delete(RecordingRow).where(
                RecordingRow.expires_at <= self.clock())).rowcount  # type: ignore[attr-defined]
        return int(gone or 0)

    def _retain(self, session: Session, account_id: str, source: str, pcm: bytes,
                now: datetime) -> None:
        if self.options.retain_audio is None:
            return
        recording_id = uuid.uuid4().hex
        sealed = seal_audio(pcm, recording_id, account_id, now + self.options.retain_audio,
                            self.key)
        session.add(RecordingRow(
            id=recording_id, account_id=account_id, source=source,
            ciphertext=sealed.ciphertext, nonce=sealed.nonce, wrapped_key=sealed.wrapped_key,
            key_nonce=sealed.key_nonce, key_id=sealed.key_id, version=sealed.version,
            expires_at=sealed.expires_at, created_at=now))

    # -- verification ------------------------------------------------------------------------

    def verify(self, account_id: str, sample: Audio, *, call_id: str | None,
               caller_number: str | None, challenge_expected: str | None,
               challenge_heard: str | None, tier_results: dict[str, Any]) -> VoiceprintDecision:
        """Decide whether ``sample`` is the account holder's voice; always audited."""
        now = self.clock()
        audio_hash = hashlib.sha256(_pcm16(sample)).hexdigest()
        thresholds = {"accept": self.options.thresholds.accept,
                      "reject": self.options.thresholds.reject,
                      "replay": self.options.replay_threshold,
                      "challenge_max_errors": self.options.challenge_max_errors}
        base: dict[str, Any] = {
            "call_id": call_id, "account_id": account_id,
            # The log never holds the full number: only what mask_caller() keeps.
            "masked_caller": mask_caller(caller_number) if caller_number else None,
            "tier_results": tier_results, "challenge_expected": challenge_expected,
            "challenge_heard": challenge_heard, "model_id": self.embedder.model_id,
            "model_version": self.embedder.model_version, "threshold": thresholds,
            "audio_sha256": audio_hash}
        state = self._lockout_state(account_id)
        try:
            lockout.check(state, now)
        except AccountLockedOut as exc:
            return self._log(base, "locked", f"lockout: {exc.reason}", None, None, False)
        template = self._template(account_id)
        if template is None:
            return self._log(base, "no_enrollment", "no template for the account", None, None,
                             False)
        pcm = _pcm16(sample)
        print_now = fingerprint(pcm)
        replay, best = is_replay(print_now, self._fingerprints(account_id),
                                 self.options.replay_threshold)
        self._add_fingerprint(account_id, print_now, now, pcm)
        if replay:
            return self._finish(base, state, "reject", f"replay of earlier audio ({best:.2f})",
                                None, None, True, now)
        try:
            require_usable(check_sample(sample, self.embedder.sample_rate),
                           self.options.min_verify_speech_s)
        except AudioRejected as exc:
            return self._finish(base, state, "uncertain", f"sample unusable: {exc.reason}",
                                None, None, False, now)
        if challenge_expected is not None and edit_distance(
                challenge_expected, challenge_heard or "") > self.options.challenge_max_errors:
            return self._finish(base, state, "reject", "challenge digits not heard", None,
                                None, False, now)
        test = self.embedder.embed([sample])[0]
        raw = cosine(template, test)
        cohort = self._cohort(exclude=account_id)
        norm = (CohortNormaliser(cohort).score(template, test) if len(cohort) >= 2 else raw)
        decision = self.options.thresholds.decide(norm)
        return self._finish(base, state, decision, "scored", raw, norm, False, now)

    def _finish(self, base: dict[str, Any], state: lockout.LockoutState, decision: str,
                reason: str, raw: float | None, norm: float | None, replay: bool,
                now: datetime) -> VoiceprintDecision:
        new_state, events = lockout.record_result(state, decision == "accept", now,
                                                  self.options.lockout)
        self._save_lockout(new_state)
        result = self._log(base, decision, reason, raw, norm, replay)
        for event in events:
            self.audit.append(AuditEntry(
                kind="lockout", account_id=event.account_id, call_id=base["call_id"],
                tier_results={"event": event.kind, "consecutive_failures":
                              event.consecutive_failures},
                decision=event.kind))
        return result

    def _log(self, base: dict[str, Any], decision: str, reason: str, raw: float | None,
             norm: float | None, replay: bool) -> VoiceprintDecision:
        tiers = {**base["tier_results"], "tier2": decision, "tier2_reason": reason}
        record = self.audit.append(AuditEntry(
            kind="decision", **{**base, "tier_results": tiers}, raw_score=raw, norm_score=norm,
            decision=decision, replay=replay))
        return VoiceprintDecision(decision, reason, raw, norm, replay, record)

    # -- storage helpers ---------------------------------------------------------------------

    def _template(self, account_id: str) -> npt.NDArray[np.float32] | None:
        with Session(self.engine) as session:
            row = session.scalars(select(TemplateRow).where(
                TemplateRow.account_id == account_id)).first()
        if row is None:
            return None
        return open_template(SealedTemplate(row.ciphertext, row.nonce, row.wrapped_key,
                                            row.key_nonce, row.key_id, row.version),
                             row.id, account_id, self.key)

    def _cohort(self, exclude: str) -> list[npt.NDArray[np.float32]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(TemplateRow).where(TemplateRow.account_id != exclude)
                                   .limit(self.options.cohort_size)).all()
        return [open_template(SealedTemplate(r.ciphertext, r.nonce, r.wrapped_key, r.key_nonce,
                                             r.key_id, r.version), r.id, r.account_id, self.key)
                for r in rows]

    def _fingerprints(self, account_id: str) -> list[Fingerprint]:
        with Session(self.engine) as session:
            rows = session.scalars(select(FingerprintRow).where(
                FingerprintRow.account_id == account_id)).all()
        return [Fingerprint(r.data) for r in rows]

    def _add_fingerprint(self, account_id: str, print_now: Fingerprint, now: datetime,
                         pcm: bytes) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(FingerprintRow(account_id=account_id, source="attempt",
                                       data=print_now.data, created_at=now))
            self._retain(session, account_id, "attempt", pcm, now)

    def _lockout_state(self, account_id: str) -> lockout.LockoutState:
        with Session(self.engine) as session:
            row = session.get(LockoutRow, account_id)
        if row is None:
            return lockout.LockoutState(account_id)
        return lockout.LockoutState(account_id, row.consecutive_failures, row.disabled,
                                    _aware(row.next_allowed_at), _aware(row.disabled_at))

    def _save_lockout(self, state: lockout.LockoutState) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(LockoutRow, state.account_id)
            if row is None:
                row = LockoutRow(account_id=state.account_id)
                session.add(row)
            row.consecutive_failures = state.consecutive_failures
            row.disabled = state.disabled
            row.next_allowed_at = state.next_allowed_at
            row.disabled_at = state.disabled_at


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
