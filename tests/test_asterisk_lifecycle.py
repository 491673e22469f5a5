"""A real Asterisk comes up on free ports, answers ARI, and goes down leaving no process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ivr.asterisk.instance import AsteriskInstance
from ivr.asterisk.provision import locate_asterisk
from ivr.errors import PortInUseError, ProvisioningError

from conftest import make_test_settings

pytestmark = pytest.mark.asterisk


def _install():  # type: ignore[no-untyped-def]
    try:
        return locate_asterisk()
    except ProvisioningError as exc:
        pytest.skip(f"no Asterisk available: {exc}")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def test_up_reports_version_and_down_leaves_no_process() -> None:
    settings = make_test_settings()
    instance = AsteriskInstance(_install(), settings.instance)
    try:
        state = instance.up(settings, ("north",))
        info = instance.info()
        assert info is not None, "ARI did not answer /ari/asterisk/info"
        major = int(info["system"]["version"].split(".")[0])
        assert major >= 20
        assert state.ports.ari == settings.ari_port
        status = instance.status()
        assert status["running"] and status["ari_ready"]
        # Credentials are generated, kept private, and stable across restarts.
        state_file = instance.dir / "instance.json"
        assert state_file.stat().st_mode & 0o077 == 0
        assert (instance.dir / "etc" / "ari.conf").stat().st_mode & 0o077 == 0
        assert len(state.ari_password) >= 24
        assert instance.down() is True
        assert _processes_mentioning(f"instances/{settings.instance}/") == []
        again = instance.up(settings, ("north",))
        assert again.ari_password == state.ari_password
    finally:
        instance.remove()
    assert _processes_mentioning(f"instances/{settings.instance}/") == []
    assert instance.pid() is None


def test_up_with_port_taken_fails_naming_the_port() -> None:
    settings = make_test_settings()
    instance = AsteriskInstance(_install(), settings.instance)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.ari_port))
        blocker.listen()
        with pytest.raises(PortInUseError) as excinfo:
            instance.up(settings, ("north",))
        assert str(settings.ari_port) in str(excinfo.value)
        assert instance.pid() is None
        # The CLI says the same in one line and exits non-zero.
        env = {**os.environ, "IVR_ASTERISK__INSTANCE": settings.instance,
               "IVR_ASTERISK__ARI_PORT": str(settings.ari_port),
               "IVR_ASTERISK__SIP_PORT": str(settings.sip_port)}
        proc = subprocess.run([sys.executable, "-m", "ivr.cli", "asterisk", "up", "--json"],
                              capture_output=True, text=True, env=env, timeout=60, check=False)
    instance.remove()
    assert proc.returncode != 0
    assert f"port {settings.ari_port}" in proc.stderr
    assert "already in use" in proc.stderr


def test_sip_port_taken_is_reported_too() -> None:
    settings = make_test_settings()
    instance = AsteriskInstance(_install(), settings.instance)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", settings.sip_port))
        with pytest.raises(PortInUseError, match=f"UDP port {settings.sip_port} \\(SIP\\)"):
            instance.up(settings, ("north",))
    instance.remove()
