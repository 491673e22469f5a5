"""The security team's endpoints on a real database: notes as new records, tamper detection of
the decision log named by record, and the voiceprint tier's start-up checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from api_app import WiredApi, wired_api
from fastapi.testclient import TestClient

from ivr.health import Readiness
from ivr.service import load_voice_tier
from ivr.settings import Settings
from ivr.store.db import url_of
from ivr.store.opening import master_key_path, open_store
from voiceprint.audit import AuditEntry
from voiceprint.errors import MasterKeyError

from conftest import sql

pytestmark = [pytest.mark.unit, pytest.mark.model]


@pytest.fixture()
def api(tmp_path: Path, database_url: str) -> WiredApi:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    return wired_api(tmp_path, build_tiny_ecapa(), database_url=database_url)


def _security(api: WiredApi) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens['security']}"}


def test_notes_are_new_records_and_tampering_is_named(api: WiredApi, tmp_path: Path) -> None:
    service = api.services.voiceprint
    assert service is not None
    for decision in ("reject", "uncertain", "accept", "reject"):
        service.audit.append(AuditEntry(kind="decision", call_id="c1", account_id="acct-1",
                                        masked_caller="*********00", decision=decision))
    client = TestClient(api.app)
    note = client.post("/api/v1/voiceprint/attempts/3/notes", json={"note": "caller was ill"},
                       headers=_security(api))
    assert note.status_code == 201 and note.json()["refers_to_seq"] == 3
    assert client.post("/api/v1/voiceprint/attempts/999/notes", json={"note": "x"},
                       headers=_security(api)).status_code == 404
    assert client.get("/api/v1/voiceprint/audit/verify", headers=_security(api)).json() == {
        "ok": True, "checked": 6, "first_broken_seq": None, "reason": None}
    sql(url_of(api.services.store.engine),  # type: ignore[union-attr]
        "UPDATE voiceprint_audit SET decision='accept' WHERE seq=3")
    verdict = client.get("/api/v1/voiceprint/audit/verify", headers=_security(api)).json()
    assert verdict["ok"] is False and verdict["first_broken_seq"] == 3
    listed = client.get("/api/v1/voiceprint/attempts", params={"decision": "reject"},
                        headers=_security(api)).json()["items"]
    assert [r["seq"] for r in listed] == [2, 5]


def test_the_log_answers_without_a_model_or_key(api: WiredApi) -> None:
    """The security team's records are data in the database: with the model and key gone
    (a fresh install without a key, a model that failed to load) they still answer; only
    enrollment says 503, naming what is missing."""
    from voiceprint.service import VoiceprintService

    loaded = api.services.voiceprint
    assert loaded is not None
    loaded.audit.append(AuditEntry(kind="decision", account_id="acct-1", decision="reject",
                                   masked_caller="*********00"))
    api.services.voiceprint = VoiceprintService(
        loaded.engine, None, None, unavailable="model is not loaded (pretrained.pt is missing)")
    client = TestClient(api.app)
    headers = _security(api)
    attempts = client.get("/api/v1/voiceprint/attempts", headers=headers)
    assert attempts.status_code == 200 and len(attempts.json()["items"]) == 2
    assert client.get("/api/v1/voiceprint/attempts", params={"format": "csv"},
                      headers=headers).text.count("\n") == 3
    assert client.get("/api/v1/voiceprint/audit/verify", headers=headers).json()["ok"] is True
    state = client.get("/api/v1/voiceprint/accounts/acct-1", headers=headers)
    assert state.status_code == 200 and state.json()["enrolled"] is False
    enroll = client.post("/api/v1/voiceprint/accounts/acct-1/enrollment",
                         json={"consent": True, "samples": ["UklGRg=="]}, headers=headers)
    assert enroll.status_code in (422, 503)  # the sample is no WAV; a real one gets 503:
    import base64
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(48000) / 5) * 8000).astype("<i2").tobytes())
    enroll = client.post("/api/v1/voiceprint/accounts/acct-1/enrollment",
                         json={"consent": True, "samples": [base64.b64encode(
                             out.getvalue()).decode()]}, headers=headers)
    assert enroll.status_code == 503 and "pretrained.pt is missing" in enroll.json()["message"]
    assert client.get("/api/v1/voiceprint/attempts",
                      headers={"Authorization": f"Bearer {api.tokens['supervisor']}"}
                      ).status_code == 403


def test_enrollment_upload_rejects_bad_audio_with_a_reason(api: WiredApi) -> None:
    import base64
    import io
    import wave

    def wav(rate: int, seconds: float, channels: int = 1) -> str:
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(b"\0\0" * int(rate * seconds) * channels)
        return base64.b64encode(out.getvalue()).decode()

    client = TestClient(api.app)
    url = "/api/v1/voiceprint/accounts/acct-1/enrollment"
    for samples, reason in (([wav(16000, 3.0)], "silent"), ([wav(44100, 1.0)], "bad_format"),
                            ([wav(16000, 1.0, channels=2)], "bad_format"),
                            (["not base64!"], "not base64")):
        response = client.post(url, json={"consent": True, "samples": samples},
                               headers=_security(api))
        assert response.status_code == 422, response.text
        assert reason in response.json()["details"][0]["msg"]
    assert client.post("/api/v1/voiceprint/accounts/nobody/enrollment",
                       json={"consent": True, "samples": [wav(16000, 1.0)]},
                       headers=_security(api)).status_code == 404


def test_voice_tier_start_up_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    monkeypatch.setenv("IVR_CACHE_DIR", str(tmp_path / "cache"))

    def tier(**voiceprint: object) -> tuple[object, Readiness]:
        settings = Settings(data_dir=tmp_path, voiceprint=voiceprint)
        readiness = Readiness()
        loaded = asyncio.run(load_voice_tier(settings, open_store(settings, seal=False), readiness))
        return loaded, readiness

    loaded, readiness = tier(model="ecapa", model_dir=build_tiny_ecapa(),
                             generate_master_key=False)
    assert loaded is None and "master key is not configured" in readiness.degraded()[
        "voiceprint"]
    loaded, readiness = tier(model="ecapa", model_dir=tmp_path / "missing",
                             master_key="ab" * 32)
    assert loaded is None and "unusable" in readiness.degraded()["voiceprint"]
    loaded, readiness = tier(model="dvector", model_dir=tmp_path / "missing",
                             master_key="ab" * 32)
    assert loaded is None and "pretrained.pt is missing" in readiness.degraded()["voiceprint"]
    with pytest.raises(MasterKeyError):
        tier(model="ecapa", model_dir=build_tiny_ecapa(), master_key="too-short")
    key_file = tmp_path / "key"
    key_file.write_text("cd" * 32)
    # A key file other users can read is refused, like ssh refuses such a private key.
    for mode in (0o644, 0o640, 0o604):
        key_file.chmod(mode)
        with pytest.raises(MasterKeyError, match=f"open to other users \\(mode 0{mode:o}\\)"):
            tier(model="ecapa", model_dir=build_tiny_ecapa(), master_key_file=key_file)
    key_file.chmod(0o600)
    loaded, readiness = tier(model="ecapa", model_dir=build_tiny_ecapa(),
                             master_key_file=key_file)
    # Tier 2 runs; the only thing said is that its model is the random-weight test one.
    assert loaded is not None and list(readiness.degraded()) == ["voiceprint_model"]
    # Nothing configured: a key is made once per install (0600, in a 0700 folder) and reused.
    loaded, readiness = tier(model="ecapa", model_dir=build_tiny_ecapa())
    made = master_key_path()
    assert loaded is not None and list(readiness.degraded()) == ["voiceprint_model"]
    assert made.is_relative_to(tmp_path / "cache") and made.stat().st_mode & 0o777 == 0o600
    assert made.parent.stat().st_mode & 0o777 == 0o700
    first = made.read_text()
    assert tier(model="ecapa", model_dir=build_tiny_ecapa())[0] is not None
    assert made.read_text() == first and len(bytes.fromhex(first.strip())) == 32
