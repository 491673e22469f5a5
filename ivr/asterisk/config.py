"""Render the Asterisk configuration of one instance from the templates in ``dialplans/``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ivr.errors import ProvisioningError

TEMPLATE_FILES = (
    "asterisk.conf", "modules.conf", "logger.conf", "http.conf", "ari.conf", "rtp.conf",
    "musiconhold.conf", "extensions.conf", "pjsip.conf", "cdr.conf", "cel.conf", "features.conf",
    "acl.conf", "udptl.conf", "pjproject.conf", "indications.conf",
)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def dialplans_dir() -> Path:
    """Template folder: ``IVR_DIALPLANS_DIR`` or ``dialplans/`` of this checkout."""
    env = os.environ.get("IVR_DIALPLANS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "dialplans"


@dataclass(frozen=True)
class AgentAccount:
    """One agent SIP phone: endpoint id, region and digest password."""

    agent_id: str
    region: str
    password: str


@dataclass(frozen=True)
class PortPlan:
    """Ports of one instance (bound on the instance's address)."""

    ari: int
    sip: int
    rtp_start: int
    rtp_end: int

    def __post_init__(self) -> None:
        for name in ("ari", "sip", "rtp_start", "rtp_end"):
            value = getattr(self, name)
            if not 1 <= value <= 65535:
                raise ValueError(f"port {name}={value} outside 1..65535")
        if self.rtp_end - self.rtp_start < 4:
            raise ValueError("RTP range needs at least 4 ports")


@dataclass(frozen=True)
class InstanceConfig:
    """Everything the templates need for one instance."""

    ports: PortPlan
    ari_user: str
    ari_password: str
    agents: tuple[AgentAccount, ...] = field(default_factory=tuple)
    hotline_number: str = "4008101111"
    tone_number: str = "4008109901"
    echo_number: str = "4008109902"
    ari_app: str = "ivr"
    api_port: int = 8080
    address: str = "127.0.0.1"  # SIP, ARI and media listen here
    agent_proxy: str | None = None  # phones register at this proxy (host:port), not here


def _agent_sections(agents: tuple[AgentAccount, ...], proxy: str | None = None) -> str:
    if proxy is not None:
        return _proxied_agent_sections(agents, proxy)
    blocks = []
    for agent in agents:
        blocks.append(
            f"; agent in region {agent.region}\n"
            f"[{agent.agent_id}](agent-aor-template)\n\n"
            f"[{agent.agent_id}-auth](agent-auth-template)\n"
            f"username = {agent.agent_id}\n"
            f"password = {agent.password}\n\n"
            f"[{agent.agent_id}](agent-template)\n"
            f"auth = {agent.agent_id}-auth\n"
            f"aors = {agent.agent_id}\n"
            f"set_var = IVR_AGENT_REGION={agent.region}\n"
        )
    return "\n".join(blocks)


def _proxied_agent_sections(agents: tuple[AgentAccount, ...], proxy: str) -> str:
    """Phones registered at the proxy: each reached at ``sip:<id>@<proxy>``, qualified there
    every 2 s (the proxy answers 404 for a phone that is not registered, so the endpoint's
    state here follows the phone's registration), no credentials here."""
    blocks = []
    for agent in agents:
        blocks.append(
            f"; agent in region {agent.region}, registered at {proxy}\n"
            f"[{agent.agent_id}]\n"
            f"type = aor\n"
            f"contact = sip:{agent.agent_id}@{proxy}\n"
            f"qualify_frequency = 2\n"
            f"qualify_timeout = 1.0\n\n"
            f"[{agent.agent_id}](agent-template)\n"
            f"aors = {agent.agent_id}\n"
            f"set_var = IVR_AGENT_REGION={agent.region}\n"
        )
    return "\n".join(blocks)


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders; an unknown name is an error, never left in place."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ProvisioningError(f"template placeholder '{{{{{key}}}}}' has no value")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def render_instance(config: InstanceConfig, etc_dir: Path, inner_base: PurePosixPath,
                    templates: Path | None = None) -> None:
    """Write every config file for the instance into ``etc_dir`` (mode 0600)."""
    templates = templates or dialplans_dir()
    values = {
        "etc_dir": str(inner_base / "etc"),
        "lib_dir": str(inner_base / "lib"),
        "spool_dir": str(inner_base / "spool"),
        "run_dir": str(inner_base / "run"),
        "log_dir": str(inner_base / "log"),
        "ari_port": str(config.ports.ari),
        "sip_port": str(config.ports.sip),
        "rtp_start": str(config.ports.rtp_start),
        "rtp_end": str(config.ports.rtp_end),
        "ari_user": config.ari_user,
        "ari_password": config.ari_password,
        "api_port": str(config.api_port),
        "hotline_number": config.hotline_number,
        "tone_number": config.tone_number,
        "echo_number": config.echo_number,
        "ari_app": config.ari_app,
        "address": config.address,
        "agent_endpoints": _agent_sections(config.agents, config.agent_proxy),
    }
    etc_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(etc_dir, 0o700)
    for name in TEMPLATE_FILES:
        source = templates / name
        if not source.exists():
            raise ProvisioningError(f"missing Asterisk template {source}")
        target = etc_dir / name
        target.write_text(render_template(source.read_text(encoding="utf-8"), values),
                          encoding="utf-8")
        os.chmod(target, 0o600)
