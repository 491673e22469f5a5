"""Settings layering and the placeholder API (in-process, no Asterisk)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ivr.api.app import create_app
from ivr.health import Readiness
from ivr.settings import load_settings

pytestmark = pytest.mark.unit


def test_env_overrides_file_overrides_defaults(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().asterisk.sip_port == 5060
    config = tmp_path / "ivr.yaml"
    config.write_text("api_port: 9000\nasterisk:\n  sip_port: 5070\n  ari_port: 8090\n")
    monkeypatch.setenv("IVR_CONFIG_FILE", str(config))
    settings = load_settings()
    assert (settings.api_port, settings.asterisk.sip_port, settings.asterisk.ari_port) == (
        9000, 5070, 8090)
    monkeypatch.setenv("IVR_ASTERISK__SIP_PORT", "5080")
    assert load_settings().asterisk.sip_port == 5080
    assert load_settings().asterisk.ari_port == 8090


def test_bad_values_are_rejected_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVR_ASTERISK__SIP_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="sip_port"):
        load_settings()
    monkeypatch.setenv("IVR_ASTERISK__SIP_PORT", "5060")
    monkeypatch.setenv("IVR_ASTERISK__RTP_END", "10001")
    with pytest.raises(ValidationError, match="rtp_end"):
        load_settings()


def test_rtp_range_is_sized_for_the_concurrency_target() -> None:
    settings = load_settings(asterisk={"concurrent_calls": 100, "rtp_start": 20000})
    assert settings.asterisk.rtp_last_port() == 20999  # 100 calls x 4 streams x 2 ports x 1.25
    pinned = load_settings(asterisk={"rtp_start": 20000, "rtp_end": 20100})
    assert pinned.asterisk.rtp_last_port() == 20100
    with pytest.raises(ValidationError, match="65535"):
        load_settings(asterisk={"concurrent_calls": 5000, "rtp_start": 60000})


def test_health_and_readiness_say_what_is_missing() -> None:
    readiness = Readiness()
    client = TestClient(create_app(readiness))
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    response = client.get("/api/v1/ready")
    assert response.status_code == 503
    assert response.json()["missing"] == ["ari"]
    readiness.set("ari", True)
    response = client.get("/api/v1/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "missing": [], "checks": {"ari": True},
                               "degraded": {}, "reasons": {}}
    readiness.degrade("asr", "no model: keypad only")
    assert client.get("/api/v1/ready").json()["degraded"] == {"asr": "no model: keypad only"}
    # A missing check says why; it recovers by itself when the check passes again.
    readiness.set("database", False, "database cannot be written: database is locked")
    response = client.get("/api/v1/ready")
    assert response.status_code == 503
    assert response.json()["reasons"] == {
        "database": "database cannot be written: database is locked"}
    readiness.set("database", True)
    assert client.get("/api/v1/ready").status_code == 200
    # A supervised part that stopped: /health says so (the process then exits non-zero).
    readiness.fail("call controller stopped: RuntimeError")
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json() == {"status": "failed",
                               "reason": "call controller stopped: RuntimeError"}


def test_unknown_path_uses_the_error_shape() -> None:
    response = TestClient(create_app(Readiness())).get("/api/v1/nope")
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"status", "error_id", "message", "details"}
    assert body["status"] == 404
    assert "openapi" in TestClient(create_app(Readiness())).get("/openapi.json").json()


def test_logs_are_json_with_personal_data_masked() -> None:
    import json
    import logging

    from ivr.logs import JsonFormatter

    record = logging.LogRecord("ivr.test", logging.INFO, __file__, 1, "call started", None, None)
    record.caller_number = "13800210000"
    record.digits = "123456"
    record.channel = "1795237741.0"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "call started"
    assert line["caller_number"] == "138******00"
    assert line["digits"] == "<6 chars masked>"
    assert line["channel"] == "1795237741.0"
    assert "13800210000" not in json.dumps(line)
