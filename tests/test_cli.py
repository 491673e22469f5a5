"""The `ivr` command line against a real Asterisk: `call`, `agents`, `serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ivr.asterisk.instance import AsteriskInstance, free_port
from ivr.sip.audio import dominant_frequency, read_wav

from conftest import RunningAsterisk, make_test_settings

pytestmark = pytest.mark.asterisk


def _env(asterisk: RunningAsterisk, **extra: str) -> dict[str, str]:
    return {**os.environ, "IVR_ASTERISK__INSTANCE": asterisk.instance.name, **extra}


def _ivr(*args: str) -> list[str]:
    return [sys.executable, "-m", "ivr.cli", *args]


def test_ivr_call_prints_json_and_hears_the_tone(asterisk: RunningAsterisk, sip_stack: object,
                                                 artifacts: Path, tmp_path: Path) -> None:
    heard = artifacts / "cli-heard.wav"
    env = _env(asterisk, IVR_DATA_DIR=str(tmp_path / "var"))
    proc = subprocess.run(
        _ivr("call", "--from", "075512345678", "--to", "4008109901", "--wait", "1.5",
             "--record", str(heard), "--json"),
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON object, got {proc.stdout!r}"
    result = json.loads(lines[0])
    assert result["answered"] is True
    assert result["call_id"]
    assert result["answered_by"] is None
    assert result["sip_status"] == 200
    assert abs(dominant_frequency(read_wav(heard), skip_s=0.2) - 1004.0) < 15.0
    # The short-lived token it used to ask the API who answered is gone, not just revoked.
    tokens = subprocess.run(_ivr("token", "list"), capture_output=True, text=True, env=env,
                            timeout=60, check=True)
    assert "ivr call" not in tokens.stdout


def test_ivr_call_to_a_number_nobody_serves_fails_cleanly(asterisk: RunningAsterisk,
                                                          sip_stack: object) -> None:
    proc = subprocess.run(_ivr("call", "--from", "01012345678", "--to", "99999", "--json"),
                          capture_output=True, text=True, env=_env(asterisk), timeout=60,
                          check=False)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["answered"] is False
    assert "error" in result


def test_ivr_agents_registers_and_stops_on_sigterm(asterisk: RunningAsterisk,
                                                         sip_stack: object, tmp_path: Path) -> None:
    records = tmp_path / "not" / "there" / "yet"  # made by the command
    proc = subprocess.Popen(_ivr("agents", "--region", "south", "--count", "2",
                                 "--record-dir", str(records)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(asterisk))
    try:
        assert proc.stdout is not None
        registered = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert {r["agent_id"] for r in registered} == {"agent-south-1", "agent-south-2"}
        assert records.is_dir()
        ari = asterisk.state.ari()
        endpoint = httpx.get(f"{ari.base_url}/ari/endpoints/PJSIP/agent-south-1",
                             auth=(ari.user, ari.password), timeout=5).json()
        assert endpoint["state"] == "online"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert json.loads(out.strip().splitlines()[-1]) == {
            "calls_answered": {"agent-south-1": 0, "agent-south-2": 0}}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ivr_agents_unknown_region_is_a_clear_error(asterisk: RunningAsterisk,
                                                   tmp_path: Path) -> None:
    proc = subprocess.run(_ivr("agents", "--region", "mars"), capture_output=True, text=True,
                          env=_env(asterisk), timeout=60, check=False)
    assert proc.returncode == 1
    assert "no agent accounts for region 'mars'" in proc.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = subprocess.run(_ivr("agents", "--region", "south", "--record-dir", str(blocker / "x")),
                         capture_output=True, text=True, env=_env(asterisk), timeout=60,
                         check=False)
    assert bad.returncode == 1 and "--record-dir" in bad.stderr, bad.stderr[-500:]
    assert "Traceback" not in bad.stderr


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None


def _wait_status(url: str, status: int, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = _get(url)
        if last is not None and last.status_code == status:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered {status}; last: "
                         f"{last.status_code if last else None} {last.text if last else ''}")


def _summary(log_path: Path, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"service summary"' in line:
                record: dict[str, object] = json.loads(line)
                return record
        time.sleep(0.2)
    raise AssertionError("no service summary in the log")


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_serve_reports_ready_only_while_ari_is_connected(tmp_path: Path,
                                                        stop_with: signal.Signals) -> None:
    settings = make_test_settings()
    from ivr.asterisk.provision import locate_asterisk

    instance = AsteriskInstance(locate_asterisk(), settings.instance)
    api_port = free_port()
    env = {**os.environ, "IVR_ASTERISK__INSTANCE": settings.instance,
           "IVR_ASTERISK__ARI_PORT": str(settings.ari_port),
           "IVR_ASTERISK__SIP_PORT": str(settings.sip_port),
           "IVR_ASTERISK__RTP_START": str(settings.rtp_start),
           "IVR_ASTERISK__RTP_END": str(settings.rtp_end), "IVR_API_PORT": str(api_port)}
    # Logs go to a file: an unread pipe would fill up and block the server.
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(_ivr("serve", "--with-asterisk"), stdout=log, stderr=log, env=env)
    base = f"http://127.0.0.1:{api_port}/api/v1"
    try:
        assert _wait_status(f"{base}/health", 200).json() == {"status": "ok"}
        assert _wait_status(f"{base}/ready", 200).json()["missing"] == []
        # One summary for the operator: where the console is, the SIP address, how to get in.
        summary = _summary(tmp_path / "serve.log")
        assert summary["console"] == f"http://127.0.0.1:{api_port}/"
        assert summary["ready"] is True and summary["missing"] == []
        assert summary["sip"] == f"127.0.0.1:{settings.sip_port}"
        assert summary["hotline"] == "4008101111"
        assert summary["supervisor_token"].endswith("ivr token create --role supervisor")
        # Asterisk goes away: readiness says what is missing; it comes back: ready again.
        instance.down()
        body = _wait_status(f"{base}/ready", 503).json()
        assert body["missing"] == ["ari"]
        instance.up(settings, ("north", "east", "south", "west"))
        _wait_status(f"{base}/ready", 200)
    finally:
        serve.send_signal(stop_with)
        try:
            serve.wait(timeout=30)
        finally:
            if serve.poll() is None:
                serve.kill()
        # Ctrl-C (or a service manager's SIGTERM) on `serve --with-asterisk` stops the
        # Asterisk it started.
        assert instance.pid() is None
        instance.remove()
