"""One running Asterisk: render its config, start it, wait for ARI, report status, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from ivr.asterisk.config import AgentAccount, InstanceConfig, PortPlan, render_instance
from ivr.asterisk.provision import AsteriskInstall, cache_dir
from ivr.errors import AsteriskError, AsteriskStartError, PortInUseError
from ivr.settings import AsteriskSettings

STATE_FILE = "instance.json"


@dataclass(frozen=True)
class AriCredentials:
    """Where and how to reach an instance's ARI."""

    base_url: str
    user: str
    password: str
    app: str
    ca_file: str | None = None  # https/wss: the CA that signed the PBX's certificate

    @property
    def ws_url(self) -> str:
        """Events WebSocket URL for the Stasis application."""
        scheme, sep, rest = self.base_url.partition("://")
        ws = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
        return f"{ws}{sep}{rest}/ari/events?app={self.app}"


@dataclass(frozen=True)
class InstanceState:
    """What ``up`` decided for an instance; kept (mode 0600) in the instance folder."""

    name: str
    ports: PortPlan
    ari_user: str
    ari_password: str
    ari_app: str
    hotline_number: str
    agents: tuple[AgentAccount, ...]
    sounds_dir: str = ""  # the spoken prompts, as Asterisk sees the folder
    # Supervisors' own SIP phones: rung for listen / whisper / barge, never given calls.
    supervisors: tuple[AgentAccount, ...] = ()
    address: str = "127.0.0.1"  # where SIP, ARI and media listen

    @property
    def pbx(self) -> str:
        """host:port of its SIP transport."""
        return f"{self.address}:{self.ports.sip}"

    def ari(self) -> AriCredentials:
        """ARI connection facts."""
        return AriCredentials(f"http://{self.address}:{self.ports.ari}", self.ari_user,
                              self.ari_password, self.ari_app)

    def to_json(self) -> dict[str, Any]:
        """Serialisable form."""
        data = asdict(self)
        data["agents"] = [asdict(agent) for agent in self.agents]
        data["supervisors"] = [asdict(phone) for phone in self.supervisors]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceState:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=data["name"], ports=PortPlan(**data["ports"]), ari_user=data["ari_user"],
            ari_password=data["ari_password"], ari_app=data["ari_app"],
            hotline_number=data["hotline_number"],
            agents=tuple(AgentAccount(**agent) for agent in data["agents"]),
            sounds_dir=str(data.get("sounds_dir", "")),
            supervisors=tuple(AgentAccount(**phone) for phone in data.get("supervisors", [])),
            address=str(data.get("address", "127.0.0.1")),
        )


def check_port_free(port: int, proto: str, purpose: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUseError` if ``port`` cannot be bound on ``host``."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if proto == "tcp":
            # Asterisk binds with SO_REUSEADDR too: connections in TIME_WAIT must not count,
            # a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(port, proto, purpose) from exc


def free_port(proto: str = "tcp") -> int:
    """A port the kernel says is free right now on 127.0.0.1."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AsteriskInstance:
    """A named Asterisk instance with its own config, logs, state and ports."""

    def __init__(self, install: AsteriskInstall, name: str) -> None:
        self.install = install
        self.name = name
        self.inner_dir = install.runtime_base() / name
        self.dir = install.host_path(self.inner_dir)

    @property
    def log_file(self) -> Path:
        """Asterisk's own log of this instance."""
        return self.dir / "log" / "messages.log"

    @property
    def pid_file(self) -> Path:
        """Pid file written by Asterisk."""
        return self.dir / "run" / "asterisk.pid"

    def _conf_arg(self) -> str:
        return str(self.inner_dir / "etc" / "asterisk.conf")

    def load_state(self) -> InstanceState | None:
        """The saved state of this instance, or None if it was never brought up."""
        path = self.dir / STATE_FILE
        if not path.exists():
            return None
        return InstanceState.from_json(json.loads(path.read_text(encoding="utf-8")))

    def _save_state(self, state: InstanceState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        path = self.dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state.to_json(), handle, indent=2)
        os.replace(tmp, path)

    def pid(self) -> int | None:
        """Pid of the running Asterisk of this instance, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # A recycled pid belonging to something else is not ours.
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"asterisk" not in cmdline:
                return None
        return pid

    def _plan_state(self, settings: AsteriskSettings, regions: tuple[str, ...]) -> InstanceState:
        previous = self.load_state()
        ports = PortPlan(settings.ari_port, settings.sip_port, settings.rtp_start,
                         settings.rtp_last_port())
        # Credentials are generated once per instance and kept across restarts.
        password = previous.ari_password if previous else secrets.token_urlsafe(24)
        known = ({a.agent_id: a for a in (*previous.agents, *previous.supervisors)}
                 if previous else {})
        agents = []
        for region in regions:
            for index in range(1, settings.agents_per_region + 1):
                agent_id = f"agent-{region}-{index}"
                old = known.get(agent_id)
                agents.append(old if old and old.region == region
                              else AgentAccount(agent_id, region, secrets.token_urlsafe(16)))
        supervisors = []
        for index in range(1, settings.supervisors + 1):
            phone_id = f"supervisor-{index}"
            old = known.get(phone_id)
            supervisors.append(old or AgentAccount(phone_id, "supervisor",
                                                   secrets.token_urlsafe(16)))
        return InstanceState(self.name, ports, "ivr", password, settings.ari_app,
                             settings.hotline_number, tuple(agents),
                             str(self.inner_dir / "sounds"), tuple(supervisors),
                             str(settings.address))

    def up(self, settings: AsteriskSettings, regions: tuple[str, ...],
           api_port: int = 8080) -> InstanceState:
        """Render config, start Asterisk and wait until ARI answers; idempotent when running."""
        state = self._plan_state(settings, regions)
        if self.pid() is not None:
            previous = self.load_state()
            if (previous is not None and previous.ports == state.ports
                    and previous.address == state.address):
                self._wait_for_ari(previous, settings.start_timeout_s, None)
                return previous
            raise AsteriskError(f"instance '{self.name}' is already running with other ports; "
                                "run `ivr asterisk down` first")
        check_port_free(state.ports.ari, "tcp", "ARI HTTP", state.address)
        check_port_free(state.ports.sip, "udp", "SIP", state.address)
        self._save_state(state)
        for sub in ("etc", "lib", "spool", "run", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._install_prompts()
        with contextlib.suppress(FileNotFoundError):
            self.log_file.unlink()
        render_instance(
            InstanceConfig(state.ports, state.ari_user, state.ari_password,
                           (*state.agents, *state.supervisors),
                           hotline_number=state.hotline_number, ari_app=state.ari_app,
                           api_port=api_port, address=state.address,
                           agent_proxy=settings.agent_proxy),
            self.dir / "etc", self.inner_dir,
        )
        startup_log = self.dir / "log" / "startup.log"
        with startup_log.open("w", encoding="utf-8") as out:
            proc = subprocess.run(self.install.command("-C", self._conf_arg()), stdout=out,
                                  stderr=subprocess.STDOUT, timeout=60, check=False)
        if proc.returncode != 0:
            raise AsteriskStartError("launch", f"asterisk exited with {proc.returncode}",
                                     str(startup_log))
        self._wait_for_ari(state, settings.start_timeout_s, startup_log)
        return state

    def _install_prompts(self) -> None:
        """Copy the spoken prompts (built once into the cache) where this Asterisk reads them."""
        from ivr.prompts.build import build_prompts

        built = build_prompts(cache_dir() / "prompts")
        for language in ("zh", "en"):
            source = built.root / language
            if source.is_dir():
                shutil.copytree(source, self.dir / "sounds" / language, dirs_exist_ok=True)

    def _wait_for_ari(self, state: InstanceState, timeout_s: float,
                      startup_log: Path | None) -> dict[str, Any]:
        ari = state.ari()
        started = time.monotonic()
        deadline = started + timeout_s
        last_error = "no answer"
        while time.monotonic() < deadline:
            # The daemon writes its pid file within moments; no pid after a grace period = died.
            if self.pid() is None and time.monotonic() - started > 5.0:
                log = self.log_file if self.log_file.exists() else startup_log
                raise AsteriskStartError("process", "asterisk exited during start-up",
                                         str(log) if log else None)
            try:
                response = httpx.get(f"{ari.base_url}/ari/asterisk/info",
                                     auth=(ari.user, ari.password), timeout=2.0)
                if response.status_code == 200:
                    info: dict[str, Any] = response.json()
                    return info
                last_error = f"HTTP {response.status_code}"
                if response.status_code == 404 and self._log_says("Asterisk Ready."):
                    raise AsteriskStartError("ari", "Asterisk is up but its ARI modules did not "
                                             "load", str(self.log_file))
            except httpx.HTTPError as exc:
                last_error = type(exc).__name__
            time.sleep(0.25)
        raise AsteriskStartError("ari", f"ARI on port {state.ports.ari} did not answer "
                                 f"within {timeout_s:.0f}s ({last_error})", str(self.log_file))

    def _log_says(self, text: str) -> bool:
        try:
            return text in self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    def info(self) -> dict[str, Any] | None:
        """``GET /ari/asterisk/info`` of the running instance, or None when it does not answer."""
        state = self.load_state()
        if state is None or self.pid() is None:
            return None
        ari = state.ari()
        try:
            response = httpx.get(f"{ari.base_url}/ari/asterisk/info",
                                 auth=(ari.user, ari.password), timeout=3.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        info: dict[str, Any] = response.json()
        return info

    def status(self) -> dict[str, Any]:
        """Whether it runs, its pid, version, ports and where its files are."""
        state = self.load_state()
        pid = self.pid()
        info = self.info() if pid else None
        return {
            "instance": self.name,
            "running": pid is not None,
            "pid": pid,
            "ari_ready": info is not None,
            "version": (info or {}).get("system", {}).get("version", self.install.version),
            "source": "sid-root" if self.install.root else "system",
            "ports": asdict(state.ports) if state else None,
            "hotline_number": state.hotline_number if state else None,
            "dir": str(self.dir),
            "log": str(self.log_file),
        }

    def down(self, timeout_s: float = 15.0) -> bool:
        """Stop the instance; True when one was running. Leaves no process behind."""
        pid = self.pid()
        if pid is None:
            return False
        subprocess.run(self.install.command("-C", self._conf_arg(), "-rx", "core stop now"),
                       capture_output=True, timeout=20, check=False)
        if self._wait_gone(pid, timeout_s):
            return True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if self._wait_gone(pid, 5.0):
                return True
        raise AsteriskError(f"asterisk pid {pid} of instance '{self.name}' did not stop")

    @staticmethod
    def _wait_gone(pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # A zombie child of ours counts as gone once reaped.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        return False

    def remove(self) -> None:
        """Stop the instance and delete its folder (tests)."""
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)

    def inner(self, host: Path) -> PurePosixPath:
        """A host path inside the instance folder as Asterisk sees it."""
        return self.inner_dir / host.relative_to(self.dir)
