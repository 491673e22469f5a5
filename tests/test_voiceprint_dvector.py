"""The default speaker model: the trained GE2E d-vector encoder on real voices (flite's four
speakers and Asterisk's recorded prompts), its installer, and what a model change does to
enrolled accounts."""

from __future__ import annotations

import os
import subprocess
import threading
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from ivr.store.db import make_engine, migrate, sqlite_url
from voiceprint import dvector
from voiceprint.calibration import load as load_calibration
from voiceprint.errors import EmbeddingModelError, VoiceprintUnavailable
from voiceprint.service import VoiceprintOptions, VoiceprintService
from voiceprint.templates import MasterKey

pytestmark = pytest.mark.model

VOICES = ("kal", "awb", "rms", "slt")  # four real people's voices
SENTENCES = (
    "I would like to check the balance of my account and the last three payments.",
    "Somebody changed the password of my account yesterday and I did not do it.",
    "My internet connection drops every evening at about eight o'clock.",
    "Please tell me when the engineer will arrive to repair the line.",
    "Nine five two seven one three, that is the number I was given.",
)
Audio = npt.NDArray[np.float32]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    folder = dvector.installed_dir()
    if not (folder / dvector.VERIFIED_MARK).is_file():
        try:
            folder = dvector.install()
        except EmbeddingModelError as exc:  # no package index reachable
            pytest.skip(f"d-vector weights not installed ({exc}); run make models")
    return folder


@pytest.fixture(scope="session")
def encoder(model_dir: Path) -> dvector.DvectorEmbedder:
    return dvector.load_dvector(model_dir, "cpu")


def _flite(folder: Path, voice: str, text: str) -> Audio:
    raw, wav = folder / f"{voice}-{abs(hash(text))}.raw.wav", folder / f"{voice}.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)],
                   check=True)
    from ivr.sip.audio import read_wav

    return read_wav(wav).samples.astype(np.float32)


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Audio]]:
    folder = tmp_path_factory.mktemp("flite")
    return {voice: [_flite(folder, voice, text) for text in SENTENCES] for voice in VOICES}


def test_loads_with_identity_and_embeds_unit_rows(encoder: dvector.DvectorEmbedder,
                                                  model_dir: Path) -> None:
    assert (encoder.model_id, encoder.dim, encoder.device) == ("dvector", 256, "cpu")
    assert encoder.model_version.startswith("sha256:")
    rows = encoder.embed([np.zeros(8000, np.float32), np.ones(32000, np.float32) * 0.01])
    assert rows.shape == (2, 256)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert (model_dir / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_same_voice_scores_above_other_voices(encoder: dvector.DvectorEmbedder,
                                              speech: dict[str, list[Audio]]) -> None:
    rows = {voice: encoder.embed(utterances) for voice, utterances in speech.items()}
    for voice, own in rows.items():
        template = own[:3].mean(axis=0)
        template /= np.linalg.norm(template)
        same = own[3:] @ template
        others = np.concatenate([rows[v] @ template for v in rows if v != voice])
        # Every held-out utterance of the speaker beats every utterance of the other three.
        assert same.min() > others.max(), (voice, same, others.max())


def test_batched_equals_alone_and_call_order_does_not_matter(
        encoder: dvector.DvectorEmbedder, speech: dict[str, list[Audio]]) -> None:
    first = encoder.embed([speech["slt"][0]])[0]
    encoder.embed([speech["kal"][1], speech["awb"][2]])  # the detector must not carry state
    batch = encoder.embed([speech["rms"][0], speech["slt"][0]])
    assert float(batch[1] @ first) > 0.99999


def test_long_pauses_are_cut_short_ones_kept(speech: dict[str, list[Audio]]) -> None:
    voice = speech["awb"][0]
    gap = np.zeros(16000 * 2, np.float32)
    cut = dvector.cut_pauses(np.concatenate([voice, gap, voice]))
    assert len(cut) < 2 * len(voice) + 0.2 * 16000  # the 2 s gap is gone
    assert len(cut) > 1.6 * len(voice)  # speech, with its own short pauses, is kept
    silence = np.zeros(16000, np.float32)
    assert len(dvector.cut_pauses(silence)) == len(silence)  # nothing to keep: keep it all


def test_windows_cover_the_utterance() -> None:
    assert dvector.partial_starts(100) == [0]
    starts = dvector.partial_starts(16000 * 4)
    assert starts[0] == 0 and all(b - a == 77 for a, b in zip(starts, starts[1:], strict=False))
    last_end = (starts[-1] + dvector.PARTIAL_FRAMES) * dvector.HOP
    assert last_end >= 16000 * 4 * 0.95


def _wheel(path: Path, weights: bytes, licence: bytes = b"Apache License") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("resemblyzer/pretrained.pt", weights)
        archive.writestr("Resemblyzer-0.1.4.dist-info/LICENSE", licence)
    return path


def test_installer_checks_every_file(tmp_path: Path, model_dir: Path) -> None:
    spec = dvector.load_spec()
    real = (model_dir / "pretrained.pt").read_bytes()
    licence = (model_dir / "LICENSE").read_bytes()
    good = dvector.install(spec, tmp_path / "a", _wheel(tmp_path / "good.whl", real, licence))
    assert (good / "pretrained.pt").read_bytes() == real
    assert dvector.install(spec, tmp_path / "a") == good  # verified: not fetched again
    with pytest.raises(EmbeddingModelError, match="pretrained.pt sha256 differs"):
        dvector.install(spec, tmp_path / "b", _wheel(tmp_path / "bad.whl", real[:-1] + b"x",
                                                     licence))
    assert not dvector.installed_dir(spec, tmp_path / "b").exists()  # no half-made folder
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other.txt", "nothing")
    with pytest.raises(EmbeddingModelError, match="cannot unpack"):
        dvector.install(spec, tmp_path / "c", empty)


def test_broken_weights_fail_at_load(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "pretrained.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EmbeddingModelError, match="corrupt"):
        dvector.load_dvector(tmp_path, "cpu")
    torch.save({"model_state": {"lstm.weight_ih_l0": torch.zeros(1)}}, tmp_path / "pretrained.pt")
    with pytest.raises(EmbeddingModelError, match="lacks"):
        dvector.load_dvector(tmp_path, "cpu")
    with pytest.raises(EmbeddingModelError, match="missing"):
        dvector.load_dvector(tmp_path / "nowhere", "cpu")


# ---- the service on the trained model -----------------------------------------------------


def _service(tmp_path: Path, embedder: object, key: MasterKey | None = None,
             **options: object) -> VoiceprintService:
    engine = make_engine(sqlite_url(tmp_path))
    migrate(engine)
    return VoiceprintService(engine, embedder, key or MasterKey(b"k" * 32),  # type: ignore[arg-type]
                             VoiceprintOptions(min_enroll_speech_s=8.0, **options))  # type: ignore[arg-type]


def _verify(service: VoiceprintService, account: str, sample: Audio, heard: str = "952713"):  # type: ignore[no-untyped-def]
    return service.verify(account, sample, call_id="c", caller_number="13800210000",
                          challenge_expected="952713", challenge_heard=heard,
                          tier_results={"tier1": "passed"})


def test_enrolled_voice_accepted_other_voice_rejected(
        tmp_path: Path, encoder: dvector.DvectorEmbedder,
        speech: dict[str, list[Audio]]) -> None:
    service = _service(tmp_path, encoder)
    calibration = load_calibration("dvector")
    assert service.thresholds is not None and service.thresholds.accept == calibration.accept
    service.enroll("acct-slt", speech["slt"][:3], consent=True)
    own = _verify(service, "acct-slt", speech["slt"][4])
    assert own.decision == "accept", own
    evidence = own.record.tier_results["evidence"]
    assert evidence["score_kind"] == "raw" and evidence["fmr_at_score"] is not None
    assert own.record.tier_results["liveness"]["challenge"] == "heard"
    assert own.record.model_id == "dvector" and own.record.threshold["score_kind"] == "raw"
    impostor = _verify(service, "acct-slt", speech["kal"][4])
    assert impostor.decision == "reject", impostor
    assert impostor.raw_score is not None and own.raw_score is not None
    assert impostor.raw_score < own.raw_score


def test_a_model_change_asks_for_reenrollment(tmp_path: Path, encoder: dvector.DvectorEmbedder,
                                              speech: dict[str, list[Audio]]) -> None:
    from voiceprint.embedding import EmbedderOptions, load_embedder
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    ecapa = load_embedder(EmbedderOptions(build_tiny_ecapa(), device="cpu"))
    old = _service(tmp_path, ecapa)
    for account, voice in (("acct-1", "slt"), ("acct-2", "kal"), ("acct-3", "awb")):
        old.enroll(account, speech[voice][:3], consent=True)
    new = VoiceprintService(old.engine, encoder, old.key, old.options)
    status = new.status("acct-1")
    assert status.enrolled and status.model_id == "ecapa"
    assert status.reenroll_reason is not None and "'ecapa'" in status.reenroll_reason
    decision = _verify(new, "acct-1", speech["slt"][4])
    assert (decision.decision, decision.raw_score) == ("reenroll", None)
    assert decision.record.model_id == "dvector"
    assert new._cohort(exclude="acct-1") == []  # other models' templates are no cohort
    new.enroll("acct-1", speech["slt"][:3], consent=True)
    assert new.status("acct-1").reenroll_reason is None
    assert _verify(new, "acct-1", speech["slt"][3]).decision == "accept"
    assert new.audit.verify().ok


def test_records_work_without_model_or_key(tmp_path: Path, encoder: dvector.DvectorEmbedder,
                                           speech: dict[str, list[Audio]]) -> None:
    full = _service(tmp_path, encoder)
    full.enroll("acct-1", speech["rms"][:3], consent=True)
    _verify(full, "acct-1", speech["rms"][4])
    bare = VoiceprintService(full.engine, None, None, unavailable="model is not loaded")
    assert not bare.can_verify
    assert [r.kind for r in bare.audit.records()] == ["enrollment", "decision"]
    assert bare.audit.verify().ok
    status = bare.status("acct-1")
    assert status.enrolled and status.model_id == "dvector" and status.reenroll_reason is None
    with pytest.raises(VoiceprintUnavailable, match="model is not loaded"):
        bare.enroll("acct-2", speech["kal"][:3], consent=True)
    with pytest.raises(VoiceprintUnavailable):
        _verify(bare, "acct-1", speech["rms"][4])
    bare.revoke("acct-1", by="reviewer")
    assert not full.status("acct-1").enrolled


def test_parallel_failures_are_all_counted(tmp_path: Path, encoder: dvector.DvectorEmbedder,
                                           speech: dict[str, list[Audio]]) -> None:
    """Eight calls failing for one account at once: every failure counts, and the lockout
    starts once (the count is one atomic UPDATE, not read-modify-write)."""
    service = _service(tmp_path, encoder)
    service.enroll("acct-1", speech["awb"][:3], consent=True)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def attempt(index: int) -> None:
        try:
            start.wait()
            sample = np.roll(speech["kal"][index % 5], 4000 * index)  # no two alike (replay)
            _verify(service, "acct-1", sample, heard="000000")  # challenge not heard: a fail
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    status = service.status("acct-1")
    decisions = [r.decision for r in service.audit.records(kind="decision")]
    assert status.consecutive_failures == decisions.count("reject") + decisions.count(
        "uncertain")
    assert status.consecutive_failures >= 5 and status.lockout == "backoff"
    lockouts = [r.decision for r in service.audit.records(kind="lockout")]
    assert lockouts == ["backoff_started"]


def test_generated_master_key_is_never_logged(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ivr.settings import Settings
    from ivr.store.opening import master_key, master_key_path

    monkeypatch.setenv("IVR_CACHE_DIR", str(tmp_path))
    with caplog.at_level("DEBUG"):
        key = master_key(Settings(data_dir=tmp_path))
    assert key is not None
    text = master_key_path().read_text().strip()
    assert bytes.fromhex(text) == key.key
    assert all(text not in record.getMessage() and text not in str(record.__dict__)
               for record in caplog.records)
    assert any("generated" in record.getMessage() for record in caplog.records)
    assert os.stat(master_key_path()).st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_benchmark_reports_every_section(model_dir: Path) -> None:
    """scripts/bench_voiceprint.py on a small history: one JSON object, the replay check
    compares a bounded number of prints in full however many there are."""
    import json
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "bench_voiceprint.py"),
                           "--attempts", "3", "--batch", "4", "--history", "10,120"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["model"] == "dvector" and report["embedding"]["per_utterance_ms"] > 0
    assert [r["earlier_prints"] for r in report["replay"]] == [10, 120]
    from voiceprint.replay import INDEX_CANDIDATES
    from voiceprint.service import RECENT_PRINTS

    assert all(r["compared_in_full"] <= INDEX_CANDIDATES + RECENT_PRINTS
               for r in report["replay"])


def test_a_configured_key_file_that_is_missing_is_made_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container points the key file at its data volume: the first start makes it there;
    with generation off a missing file is an error, not a silent new key."""
    from ivr.settings import Settings
    from ivr.store.opening import master_key
    from voiceprint.errors import MasterKeyError

    monkeypatch.setenv("IVR_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "var" / "secrets" / "voiceprint-master.key"
    key = master_key(Settings(data_dir=tmp_path, voiceprint={"master_key_file": target}))
    assert key is not None and bytes.fromhex(target.read_text().strip()) == key.key
    assert not (tmp_path / "cache" / "secrets").exists()
    again = master_key(Settings(data_dir=tmp_path, voiceprint={"master_key_file": target}))
    assert again == key
    with pytest.raises(MasterKeyError, match="unreadable"):
        master_key(Settings(data_dir=tmp_path, voiceprint={
            "master_key_file": tmp_path / "nowhere.key", "generate_master_key": False}))
