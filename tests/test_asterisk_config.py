"""Configuration rendering and provisioning helpers (no Asterisk process needed)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from ivr.asterisk.config import (
    AgentAccount,
    InstanceConfig,
    PortPlan,
    dialplans_dir,
    render_instance,
    render_template,
)
from ivr.asterisk.provision import host_debian_mirror, parse_version
from ivr.errors import ProvisioningError

pytestmark = pytest.mark.unit


def _config() -> InstanceConfig:
    return InstanceConfig(PortPlan(18088, 15060, 20000, 20100), "ivr", "s3cret-pass",
                          (AgentAccount("agent-north-1", "north", "pw-n1"),
                           AgentAccount("agent-south-1", "south", "pw-s1")))


def test_every_template_renders_without_leftover_placeholders(tmp_path: Path) -> None:
    render_instance(_config(), tmp_path, PurePosixPath("/srv/ivr/instances/x"))
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert "{{" not in text, path.name
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} must be private"
    assert "bindport = 18088" in (tmp_path / "http.conf").read_text()
    assert "bindaddr = 127.0.0.1" in (tmp_path / "http.conf").read_text()
    pjsip = (tmp_path / "pjsip.conf").read_text()
    assert "bind = 127.0.0.1:15060" in pjsip
    assert "[agent-south-1](agent-template)" in pjsip
    assert "password = pw-s1" in pjsip
    extensions = (tmp_path / "extensions.conf").read_text()
    assert "exten => 4008101111,1" in extensions and "Stasis(ivr)" in extensions
    assert "rtpstart = 20000" in (tmp_path / "rtp.conf").read_text()
    assert "astrundir => /srv/ivr/instances/x/run" in (tmp_path / "asterisk.conf").read_text()


def test_no_password_is_shipped_in_templates() -> None:
    for path in dialplans_dir().iterdir():
        for line in path.read_text().splitlines():
            if line.replace(" ", "").startswith("password="):
                assert "{{" in line, f"{path.name}: literal password: {line}"


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(ProvisioningError, match="nope"):
        render_template("x = {{nope}}", {})


def test_port_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        PortPlan(0, 5060, 10000, 10100)
    with pytest.raises(ValueError):
        PortPlan(8088, 5060, 10000, 10001)


def test_version_parsing() -> None:
    assert parse_version("Asterisk 22.10.1+dfsg+~cs6.17.60671434-1\n") == "22.10.1"
    assert parse_version("Asterisk 20.5.0") == "20.5.0"
    assert parse_version("command not found") is None


def test_mirror_comes_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert host_debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_comes_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\n")
    assert host_debian_mirror(tmp_path) == "http://m.example/debian"


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(ProvisioningError, match="no Debian archive"):
        host_debian_mirror(tmp_path)
