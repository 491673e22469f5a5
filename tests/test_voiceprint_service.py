"""Tier 2 as a whole on real SQLite and the tiny random ECAPA: enrollment, replay, challenge,
lockout with an injected clock, deletion, audit chain, master key."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ivr.sip.audio import read_wav
from ivr.store.db import make_engine, migrate
from voiceprint.embedding import EmbedderOptions, load_embedder
from voiceprint.errors import AudioRejected, ConsentMissing, TemplateError
from voiceprint.service import VoiceprintService
from voiceprint.templates import MasterKey

from conftest import sql

pytestmark = pytest.mark.model

TEXTS = [
    "My account number is registered to this phone and I would like to check my recent "
    "invoices, the payment I made last week, and whether the refund has arrived already.",
    "The weather in Shanghai has been warm this autumn, and the trains to Beijing were "
    "crowded during the holiday, so I decided to stay at home and read a long book instead.",
    "Please help me understand why the service was interrupted yesterday evening, because "
    "my customers could not reach the website for almost two hours and they complained.",
]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _speech(folder: Path, name: str, text: str, voice: str = "en-us") -> np.ndarray:
    raw, wav = folder / f"{name}.raw.wav", folder / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    return read_wav(wav).samples.astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("vp-audio")
    return {
        "enroll": [_speech(folder, f"e{i}", t) for i, t in enumerate(TEXTS)],
        "other": [_speech(folder, f"o{i}", t, "en-gb") for i, t in enumerate(TEXTS)],
        "attempt": _speech(folder, "a", "three eight one nine zero four, it is really me"),
        "attempt2": _speech(folder, "b", "five two seven seven one six, please verify me"),
    }


@pytest.fixture
def service(database_url: str) -> tuple[VoiceprintService, Clock, str]:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    engine = make_engine(database_url)
    migrate(engine)
    clock = Clock()
    embedder = load_embedder(EmbedderOptions(model_dir=build_tiny_ecapa(), device="cpu"))
    key = MasterKey.from_config(os.urandom(32).hex())
    return VoiceprintService(engine, embedder, key, clock=clock), clock, database_url


def _verify(svc: VoiceprintService, sample: np.ndarray, heard: str = "381904",
            account: str = "acct-1"):  # type: ignore[no-untyped-def]
    return svc.verify(account, sample, call_id="call-1", caller_number="13800210000",
                      challenge_expected="381904", challenge_heard=heard,
                      tier_results={"tier1": "passed"})


def test_enrollment_rules_and_template_at_rest(service: tuple, audio: dict) -> None:  # type: ignore[type-arg]
    svc, _clock, db = service
    with pytest.raises(ConsentMissing):
        svc.enroll("acct-1", audio["enroll"], consent=False)
    with pytest.raises(AudioRejected) as short:
        svc.enroll("acct-1", audio["enroll"][:1], consent=True)
    assert short.value.reason == "too_short"
    silent = np.zeros(16000 * 5, dtype=np.float32)
    with pytest.raises(AudioRejected) as bad:
        svc.enroll("acct-1", [*audio["enroll"], silent], consent=True)
    assert bad.value.reason == "silent" and "sample 4" in str(bad.value)
    record = svc.enroll("acct-1", audio["enroll"], consent=True)
    assert record.kind == "enrollment" and record.decision == "enrolled"
    embedding = svc.embedder.embed(audio["enroll"]).mean(axis=0)
    embedding = (embedding / np.linalg.norm(embedding)).astype("<f4").tobytes()
    blob = sql(db, "SELECT ciphertext FROM voiceprint_templates")[0][0]
    assert embedding[:16] not in blob, "the template must not be stored in clear"


def test_verification_paths_are_decided_and_audited(service: tuple, audio: dict) -> None:  # type: ignore[type-arg]
    svc, clock, _db = service
    assert _verify(svc, audio["attempt"]).decision == "no_enrollment"
    svc.enroll("acct-1", audio["enroll"], consent=True)
    svc.enroll("acct-2", audio["other"], consent=True)
    svc.enroll("acct-3", [a[::-1].copy() for a in audio["other"]], consent=True)
    first = _verify(svc, audio["attempt"])
    assert first.decision in ("accept", "reject", "uncertain")
    assert first.raw_score is not None and first.norm_score is not None
    assert first.record.tier_results["tier2"] == first.decision
    clock.now += timedelta(minutes=1)
    replayed = _verify(svc, audio["attempt"])
    assert (replayed.decision, replayed.replay) == ("reject", True)
    clock.now += timedelta(minutes=1)
    enrollment_replay = _verify(svc, audio["enroll"][0])
    assert enrollment_replay.replay is True
    clock.now += timedelta(minutes=1)
    wrong = _verify(svc, audio["attempt2"], heard="999999")
    assert (wrong.decision, wrong.reason) == ("reject", "challenge digits not heard")
    assert svc.audit.verify().ok
    decisions = [r for r in svc.audit.records() if r.kind == "decision"]
    assert len(decisions) == 5
    assert all(r.masked_caller and "13800210000" not in r.masked_caller and r.audio_sha256
               for r in decisions)


def test_lockout_after_five_failures_with_injected_clock(service: tuple, audio: dict) -> None:  # type: ignore[type-arg]
    svc, clock, _db = service
    svc.enroll("acct-1", audio["enroll"], consent=True)
    for _ in range(5):
        clock.now += timedelta(seconds=1)
        assert _verify(svc, audio["attempt2"], heard="000000").decision == "reject"
    clock.now += timedelta(seconds=10)
    assert _verify(svc, audio["attempt2"], heard="000000").decision == "locked"
    clock.now += timedelta(seconds=31)
    assert _verify(svc, audio["attempt2"], heard="000000").decision == "reject"
    lockouts = [r for r in svc.audit.records() if r.kind == "lockout"]
    assert [r.decision for r in lockouts][:1] == ["backoff_started"]


def test_delete_removes_template_and_samples(service: tuple, audio: dict) -> None:  # type: ignore[type-arg]
    svc, _clock, db = service
    svc.enroll("acct-1", audio["enroll"], consent=True)
    svc.delete("acct-1", by="security-reviewer")
    assert sql(db, "SELECT count(*) FROM voiceprint_templates") == [(0,)]
    assert sql(db, "SELECT count(*) FROM voiceprint_fingerprints") == [(0,)]
    assert _verify(svc, audio["attempt"]).decision == "no_enrollment"


def test_another_master_key_asks_for_reenrollment(service: tuple, audio: dict) -> None:  # type: ignore[type-arg]
    svc, _clock, _db = service
    svc.enroll("acct-1", audio["enroll"], consent=True)
    other = VoiceprintService(svc.engine, svc.embedder,
                              MasterKey.from_config(os.urandom(32).hex()))
    decision = _verify(other, audio["attempt"])
    assert decision.decision == "reenroll" and "another master key" in decision.reason
    assert "another master key" in (other.status("acct-1").reenroll_reason or "")
    assert svc.status("acct-1").reenroll_reason is None  # the key it was sealed with
    # Opening it under the wrong key anyway fails loudly (AES-GCM), never scores garbage.
    with pytest.raises(TemplateError, match="wrong master key"):
        other._open(other._template_row("acct-1"))  # type: ignore[arg-type]


def test_retained_audio_is_sealed_expires_and_goes_with_delete(service: tuple,  # type: ignore[type-arg]
                                                               audio: dict) -> None:  # type: ignore[type-arg]
    from voiceprint.service import VoiceprintOptions
    from voiceprint.store import RecordingRow
    from voiceprint.templates import SealedAudio, open_audio

    svc, clock, db = service
    keeping = VoiceprintService(svc.engine, svc.embedder, svc.key, clock=clock,
                                options=VoiceprintOptions(retain_audio=timedelta(days=7)))
    keeping.enroll("acct-1", audio["enroll"], consent=True)
    _verify(keeping, audio["attempt"])
    assert keeping.status("acct-1").retained_recordings == 4
    from sqlalchemy.orm import Session

    with Session(svc.engine) as session:
        row = session.query(RecordingRow).filter_by(source="attempt").one()
        sealed = SealedAudio(row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce,
                             row.key_id, row.version, row.expires_at.replace(tzinfo=UTC))
        pcm = open_audio(sealed, row.id, "acct-1", svc.key, clock.now)
    expected = (np.clip(audio["attempt"], -1, 1) * 32767).astype("<i2").tobytes()
    assert pcm == expected and expected[:64] not in row.ciphertext
    clock.now += timedelta(days=8)
    assert keeping.status("acct-1").retained_recordings == 0  # purged after expiry
    _verify(keeping, audio["attempt2"])
    keeping.delete("acct-1", by="security-reviewer")
    assert sql(db, "SELECT count(*) FROM voiceprint_recordings") == [(0,)]


def test_revoke_keeps_replay_prints_and_reenable_lifts_a_lockout(service: tuple,  # type: ignore[type-arg]
                                                                 audio: dict) -> None:  # type: ignore[type-arg]
    svc, clock, _db = service
    svc.enroll("acct-1", audio["enroll"], consent=True)
    for _ in range(5):
        clock.now += timedelta(minutes=1)
        assert _verify(svc, audio["attempt"], heard="000000").decision == "reject"
    assert svc.status("acct-1").lockout == "backoff"
    assert svc.reenable("acct-1", by="reviewer-7") is True
    assert svc.status("acct-1").lockout == "normal"
    assert svc.reenable("acct-1", by="reviewer-7") is False  # nothing to lift
    lockouts = svc.audit.records(account_id="acct-1", kind="lockout")
    assert [r.decision for r in lockouts] == ["backoff_started", "reenabled"]
    assert lockouts[-1].reviewer == "reviewer-7"
    svc.revoke("acct-1", by="reviewer-7")
    assert svc.status("acct-1").enrolled is False
    svc.enroll("acct-1", audio["enroll"][:2] + audio["other"][:1], consent=True)
    clock.now += timedelta(minutes=1)
    # The enrollment audio of before the revocation still counts for replay checks.
    assert _verify(svc, audio["enroll"][2]).replay is True


def test_a_replay_of_an_old_attempt_is_found_under_many_later_ones(
        service: tuple, audio: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    """The key index finds an attempt buried under 60 later prints (past the few always
    compared), while each check compares only a bounded number of prints in full."""
    import voiceprint.service as service_module
    from voiceprint.replay import INDEX_CANDIDATES, fingerprint

    svc, clock, _db = service
    svc.enroll("acct-1", audio["enroll"], consent=True)
    first = _verify(svc, audio["attempt"])
    assert not first.replay
    rng = np.random.default_rng(11)
    for _ in range(60):  # later calls: other audio (shaped noise, no two alike)
        clock.now += timedelta(minutes=1)
        noise = np.convolve(rng.normal(0, 3000, 40_000), np.hanning(9), "same")
        svc._add_fingerprint("acct-1", fingerprint(noise.astype(np.int16)), clock.now, b"")
    compared: list[int] = []
    real_is_replay = service_module.is_replay

    def counting(candidate, earlier, threshold):  # type: ignore[no-untyped-def]
        earlier = list(earlier)
        compared.append(len(earlier))
        return real_is_replay(candidate, earlier, threshold)

    monkeypatch.setattr(service_module, "is_replay", counting)
    clock.now += timedelta(minutes=1)
    again = _verify(svc, audio["attempt"])
    assert again.replay and again.decision == "reject"
    assert compared[-1] <= INDEX_CANDIDATES + service_module.RECENT_PRINTS
    svc.delete("acct-1", by="reviewer")
    assert sql(_db, "SELECT count(*) FROM voiceprint_print_keys") == [(0,)]
