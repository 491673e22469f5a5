"""Tier 2 as one service: enrollment, verification, revocation — every decision audited.

A verification runs, in order: lockout check, enrollment present and made by the model and
master key in use (otherwise the account must re-enroll), replay check against the account's
earlier samples (those its key index finds, and the latest few), sample quality,
spoken-challenge check (liveness), then the embedding score — raw cosine or s-normalised
against a cohort of other accounts' templates of the same model, as the model's calibration
says — and the decision with the thresholds. Each decision
records the false-match rate its score had on the evaluation set (``voiceprint.calibration``).
Templates are sealed with AES-GCM under a per-template data key wrapped by the master key; raw
audio is never kept (only replay fingerprints).

Without a model or a master key the service still serves the decision log, account state,
revocation, deletion and lockout changes; enrollment and verification raise
``VoiceprintUnavailable`` naming what is missing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from voiceprint import calibration, lockout
from voiceprint.audio_checks import check_sample, require_usable
from voiceprint.audit import AuditEntry, DecisionRecord, mask_caller
from voiceprint.audit_store import AuditStore
from voiceprint.calibration import Calibration
from voiceprint.embedding import Embedder
from voiceprint.errors import (
    AccountLockedOut,
    AudioRejected,
    ConsentMissing,
    VoiceprintUnavailable,
)
from voiceprint.replay import (
    DEFAULT_REPLAY_THRESHOLD,
    Fingerprint,
    candidates,
    fingerprint,
    index_keys,
    informative_keys,
    is_replay,
    offset_votes,
)
from voiceprint.scoring import CohortNormaliser, Thresholds, cosine
from voiceprint.store import FingerprintRow, LockoutRow, PrintKeyRow, RecordingRow, TemplateRow
from voiceprint.templates import MasterKey, SealedTemplate, open_template, seal, seal_audio

Audio = npt.NDArray[np.float32]
_LOCKOUTS = cast(Table, LockoutRow.__table__)
# Earlier prints always compared in full, whatever the key index says (a safety net that
# keeps the cost bounded).
RECENT_PRINTS = 8


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

    # None: the model's calibration (voiceprint/calibration/<model>.json, chosen with
    # scripts/eval_voiceprint.py for a stated false-match rate); on the calibration's score kind.
    thresholds: Thresholds | None = None
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
    model_version: str | None
    # Why the template cannot be used any more (another model or master key), else None.
    reenroll_reason: str | None
    lockout: str  # normal | backoff | disabled
    consecutive_failures: int
    next_allowed_at: datetime | None
    retained_recordings: int


@dataclass(frozen=True)
class VoiceprintDecision:
    """What tier 2 decided, and the record that logs it."""

    decision: str  # accept | reject | uncertain | no_enrollment | reenroll | locked
    reason: str
    raw_score: float | None
    norm_score: float | None
    replay: bool
    record: DecisionRecord


def _pcm16(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class VoiceprintService:
    """Enrollment and verification for accounts, on one database and one embedder."""

    def __init__(self, engine: Engine, embedder: Embedder | None, master_key: MasterKey | None,
                 options: VoiceprintOptions | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 unavailable: str = "", previous_keys: Sequence[MasterKey] = ()) -> None:
        self.engine = engine
        self._embedder = embedder
        self._key = master_key
        # During a key rotation: what the previous master keys sealed still opens (until the
        # rotation has re-wrapped it); new templates are sealed under ``master_key``.
        self._keys = {k.key_id: k for k in (*previous_keys, *((master_key,) if master_key
                                                              else ()))}
        self.options = options or VoiceprintOptions()
        self.clock = clock
        self.audit = AuditStore(engine, clock)
        self._unavailable = unavailable
        self.calibration: Calibration | None = (
            calibration.load(embedder.model_id) if embedder is not None else None)
        if self.calibration is not None and self.options.thresholds is None:
            self.thresholds: Thresholds | None = Thresholds(accept=self.calibration.accept,
                                                            reject=self.calibration.reject)
        else:
            self.thresholds = self.options.thresholds

    @property
    def embedder(self) -> Embedder:
        """The speaker model, or VoiceprintUnavailable naming what is missing."""
        if self._embedder is None:
            raise VoiceprintUnavailable(self._unavailable or "model is not loaded")
        return self._embedder

    @property
    def key(self) -> MasterKey:
        """The master key, or VoiceprintUnavailable naming what is missing."""
        if self._key is None:
            raise VoiceprintUnavailable(self._unavailable or "master key is not configured")
        return self._key

    def _ready(self) -> Embedder:
        """The embedder, when both it and the master key are loaded; else
        VoiceprintUnavailable."""
        self.key  # noqa: B018 - raises when the key is missing
        return self.embedder

    @property
    def can_verify(self) -> bool:
        """Whether enrollment and verification can run (model and master key loaded)."""
        return self._embedder is not None and self._key is not None

    def reenroll_reason(self, row: TemplateRow) -> str | None:
        """Why ``row`` cannot be scored with the model and key in use, or None when it can."""
        if self._embedder is None or self._key is None:
            return None
        model, version = self._embedder.model_id, self._embedder.model_version
        if row.model_id != model:
            return (f"template made by speaker model '{row.model_id}', the service now uses "
                    f"'{model}': re-enrollment needed")
        if row.model_version != version:
            old = (row.model_version or "unrecorded")[:19]
            return (f"template made by other '{model}' weights ({old}), the service now uses "
                    f"{version[:19]}: re-enrollment needed")
        if row.key_id not in self._keys:
            return ("template sealed under another master key "
                    f"({row.key_id}): re-enrollment needed")
        return None

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
                model_version=self.embedder.model_version, created_at=now))
            for sample in samples:
                _store_print(session, account_id, "enrollment", fingerprint(_pcm16(sample)),
                             now)
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
            session.execute(delete(PrintKeyRow).where(PrintKeyRow.account_id == account_id))
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
                           row.model_id if row else None, row.model_version if row else None,
                           self.reenroll_reason(row) if row else None, state.level,
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

    def log_challenge(self, account_id: str, digits: str, *, call_id: str | None,
                      caller_number: str | None, attempt: int) -> DecisionRecord:
        """Record the digits a caller is asked to say (kind ``challenge``), before they are
        spoken: the security log is the only place they are kept."""
        return self.audit.append(AuditEntry(
            kind="challenge", call_id=call_id, account_id=account_id,
            masked_caller=mask_caller(caller_number) if caller_number else None,
            tier_results={"attempt": attempt}, challenge_expected=digits))

    def verify(self, account_id: str, sample: Audio, *, call_id: str | None,
               caller_number: str | None, challenge_expected: str | None,
               challenge_heard: str | None, tier_results: dict[str, Any]) -> VoiceprintDecision:
        """Decide whether ``sample`` is the account holder's voice; always audited."""
        embedder = self._ready()
        assert self.calibration is not None and self.thresholds is not None
        now = self.clock()
        audio_hash = hashlib.sha256(_pcm16(sample)).hexdigest()
        thresholds = {"accept": self.thresholds.accept, "reject": self.thresholds.reject,
                      "score_kind": self.calibration.score,
                      "replay": self.options.replay_threshold,
                      "challenge_max_errors": self.options.challenge_max_errors}
        base: dict[str, Any] = {
            "call_id": call_id, "account_id": account_id,
            # The log never holds the full number: only what mask_caller() keeps.
            "masked_caller": mask_caller(caller_number) if caller_number else None,
            "tier_results": tier_results, "challenge_expected": challenge_expected,
            "challenge_heard": challenge_heard, "model_id": embedder.model_id,
            "model_version": embedder.model_version, "threshold": thresholds,
            "audio_sha256": audio_hash}
        state = self._lockout_state(account_id)
        try:
            lockout.check(state, now)
        except AccountLockedOut as exc:
            return self._log(base, "locked", f"lockout: {exc.reason}", None, None, False)
        row = self._template_row(account_id)
        if row is None:
            return self._log(base, "no_enrollment", "no template for the account", None, None,
                             False)
        stale = self.reenroll_reason(row)
        if stale is not None:  # never score against another model's (or key's) template
            return self._log(base, "reenroll", stale, None, None, False)
        template = self._open(row)
        pcm = _pcm16(sample)
        print_now = fingerprint(pcm)
        replay, best = is_replay(print_now, self._replay_candidates(account_id, print_now),
                                 self.options.replay_threshold)
        self._add_fingerprint(account_id, print_now, now, pcm)
        liveness: dict[str, Any] = {"replay_similarity": round(best, 3)}
        base["tier_results"] = {**tier_results, "liveness": liveness}
        if replay:
            return self._finish(base, state, "reject", f"replay of earlier audio ({best:.2f})",
                                None, None, True, now)
        try:
            require_usable(check_sample(sample, embedder.sample_rate),
                           self.options.min_verify_speech_s)
        except AudioRejected as exc:
            return self._finish(base, state, "uncertain", f"sample unusable: {exc.reason}",
                                None, None, False, now)
        if challenge_expected is not None:
            edits = edit_distance(challenge_expected, challenge_heard or "")
            liveness.update(challenge_edits=edits,
                            challenge="heard" if edits <= self.options.challenge_max_errors
                            else "not_heard")
            if edits > self.options.challenge_max_errors:
                return self._finish(base, state, "reject", "challenge digits not heard", None,
                                    None, False, now)
        else:
            liveness["challenge"] = "not_asked"
        test = embedder.embed([sample])[0]
        raw = cosine(template, test)
        cohort = self._cohort(exclude=account_id)
        norm = CohortNormaliser(cohort).score(template, test) if len(cohort) >= 2 else None
        score = raw if self.calibration.score == "raw" else norm
        if score is None:
            return self._finish(base, state, "uncertain", "s-norm needs templates of at least "
                                "2 other accounts of this model", raw, None, False, now)
        base["tier_results"] = {**base["tier_results"],
                                "evidence": self.calibration.evidence(score)}
        decision = self.thresholds.decide(score)
        return self._finish(base, state, decision, "scored", raw, norm, False, now)

    def _finish(self, base: dict[str, Any], state: lockout.LockoutState, decision: str,
                reason: str, raw: float | None, norm: float | None, replay: bool,
                now: datetime) -> VoiceprintDecision:
        events = self._count_result(state.account_id, decision == "accept", now)
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

    def _template_row(self, account_id: str) -> TemplateRow | None:
        with Session(self.engine) as session:
            return session.scalars(select(TemplateRow).where(
                TemplateRow.account_id == account_id)).first()

    def _open(self, row: TemplateRow) -> npt.NDArray[np.float32]:
        return open_template(SealedTemplate(row.ciphertext, row.nonce, row.wrapped_key,
                                            row.key_nonce, row.key_id, row.version),
                             row.id, row.account_id, self._keys.get(row.key_id, self.key))

    def _cohort(self, exclude: str) -> list[npt.NDArray[np.float32]]:
        """Other accounts' templates of the model, weights and key in use (per-model cohort)."""
        with Session(self.engine) as session:
            rows = session.scalars(select(TemplateRow).where(
                TemplateRow.account_id != exclude,
                TemplateRow.model_id == self.embedder.model_id,
                TemplateRow.model_version == self.embedder.model_version,
                TemplateRow.key_id.in_(list(self._keys))).limit(self.options.cohort_size)
            ).all()
        return [self._open(r) for r in rows]

    def _replay_candidates(self, account_id: str, print_now: Fingerprint) -> list[Fingerprint]:
        """The earlier prints of the account worth a full comparison: those the key index
        finds (many shared keys at one offset) and the most recent few, whatever the index
        says. The cost stays flat as an account's history grows."""
        keys, _frames = index_keys(print_now)
        wanted_keys = np.unique(keys).tolist()
        with Session(self.engine) as session:
            counts = session.execute(select(PrintKeyRow.key, func.count()).where(
                PrintKeyRow.account_id == account_id, PrintKeyRow.key.in_(wanted_keys))
                .group_by(PrintKeyRow.key)).all()
            hits = session.execute(select(PrintKeyRow.fingerprint_id, PrintKeyRow.key,
                                          PrintKeyRow.frame).where(
                PrintKeyRow.account_id == account_id,
                PrintKeyRow.key.in_(informative_keys(counts)))).all() if counts else []
            votes = offset_votes(print_now, [h[0] for h in hits], [h[1] for h in hits],
                                 [h[2] for h in hits])
            recent = session.scalars(select(FingerprintRow.id).where(
                FingerprintRow.account_id == account_id).order_by(
                FingerprintRow.id.desc()).limit(RECENT_PRINTS)).all()
            wanted = set(candidates(votes)) | set(recent)
            rows = session.scalars(select(FingerprintRow.data).where(
                FingerprintRow.id.in_(wanted))).all() if wanted else []
        return [Fingerprint(data) for data in rows]

    def _add_fingerprint(self, account_id: str, print_now: Fingerprint, now: datetime,
                         pcm: bytes) -> None:
        with Session(self.engine) as session, session.begin():
            _store_print(session, account_id, "attempt", print_now, now)
            self._retain(session, account_id, "attempt", pcm, now)

    def _lockout_state(self, account_id: str) -> lockout.LockoutState:
        with Session(self.engine) as session:
            row = session.get(LockoutRow, account_id)
        if row is None:
            return lockout.LockoutState(account_id)
        return lockout.LockoutState(account_id, row.consecutive_failures, row.disabled,
                                    _aware(row.next_allowed_at), _aware(row.disabled_at))

    def _count_result(self, account_id: str, success: bool, now: datetime
                      ) -> list[lockout.LockoutEvent]:
        """Count one attempt's result in the store, atomically: the failure count is
        incremented by the database (``UPDATE ... SET n = n + 1``), so parallel calls verifying
        one account cannot each read the same count and lose failures. The statement locks the
        row (PostgreSQL) or the database (SQLite) until the new level is written."""
        table = _LOCKOUTS
        with Session(self.engine) as session, session.begin():
            session.execute(_insert_missing(self.engine, account_id))
            if success:  # a disabled account stays disabled: only a person re-enables it
                ended = session.execute(
                    update(table).where(table.c.account_id == account_id,
                                        table.c.disabled.is_(False),
                                        table.c.next_allowed_at.is_not(None))
                    .values(consecutive_failures=0, next_allowed_at=None)
                    .returning(table.c.account_id)).first()
                session.execute(update(table).where(table.c.account_id == account_id,
                                                    table.c.disabled.is_(False))
                                .values(consecutive_failures=0))
                return [lockout.LockoutEvent("reset", account_id, now, 0)] if ended else []
            row = session.execute(
                update(table).where(table.c.account_id == account_id)
                .values(consecutive_failures=table.c.consecutive_failures + 1)
                .returning(table.c.consecutive_failures, table.c.disabled,
                           table.c.next_allowed_at, table.c.disabled_at)).one()
            before = lockout.LockoutState(account_id, row.consecutive_failures - 1, row.disabled,
                                          _aware(row.next_allowed_at), _aware(row.disabled_at))
            after, events = lockout.record_result(before, False, now, self.options.lockout)
            session.execute(update(table).where(table.c.account_id == account_id).values(
                disabled=after.disabled, next_allowed_at=after.next_allowed_at,
                disabled_at=after.disabled_at))
            return events

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


def _store_print(session: Session, account_id: str, source: str, print_now: Fingerprint,
                 now: datetime) -> None:
    """A fingerprint and its lookup keys."""
    row = FingerprintRow(account_id=account_id, source=source, data=print_now.data,
                         created_at=now)
    session.add(row)
    session.flush()  # its id
    keys, frames = index_keys(print_now)
    session.execute(insert(PrintKeyRow), [
        {"fingerprint_id": row.id, "key": key, "frame": frame, "account_id": account_id}
        for key, frame in zip(keys.tolist(), frames.tolist(), strict=True)])


def _insert_missing(engine: Engine, account_id: str) -> Any:
    """INSERT the account's lockout row unless it exists (either dialect)."""
    table = _LOCKOUTS
    values = {"account_id": account_id, "consecutive_failures": 0, "disabled": False}
    if engine.dialect.name == "postgresql":
        return postgresql_insert(table).values(**values).on_conflict_do_nothing()
    return sqlite_insert(table).values(**values).on_conflict_do_nothing()


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
