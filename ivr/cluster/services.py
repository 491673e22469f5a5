"""The servers a cluster needs besides Asterisk and the controllers: Redis and Kamailio, each a
process of ours in a folder of ours (never the system's service), on loopback ports.

Kamailio's configuration is ``dialplans/kamailio.cfg`` rendered with the same placeholder
rules as the Asterisk templates; ``dispatcher.list`` names the Asterisk nodes and
``agents.cfg`` (mode 0600) holds the phones' passwords.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ivr.asterisk.config import AgentAccount, dialplans_dir, render_template
from ivr.errors import IvrError

KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


class ClusterError(IvrError):
    """A cluster server is missing or would not start."""


def _wait(check: object, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log and log.is_file() else ""
            raise ClusterError(f"{what} did not start in {timeout_s:.0f} s\n{tail}")
        time.sleep(0.1)


def _stop(pid: int | None, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int | None) -> bool:
    """Whether a process of ours still runs."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


class LocalRedis:
    """redis-server on ``host:port`` with nothing persisted (live events are not a record)."""

    def __init__(self, folder: Path, port: int, host: str = "127.0.0.1") -> None:
        self.folder, self.port, self.host = folder, port, host
        self.pid: int | None = None

    @property
    def url(self) -> str:
        """The broker URL for ``IVR_BROKER_URL``."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> LocalRedis:
        """Start and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterError("redis-server is not installed (apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "redis.log"
        proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", self.host,
                                 "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                                 "--logfile", str(log)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = proc.pid
        _wait(self._answers, 10, "redis-server", log)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), 0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it."""
        _stop(self.pid)
        self.pid = None


class LocalKamailio:
    """Kamailio as the cluster's SIP entry, dispatcher and registrar."""

    def __init__(self, folder: Path, address: str, sip_port: int) -> None:
        self.folder, self.address, self.sip_port = folder, address, sip_port
        self.pid: int | None = None

    @property
    def pid_file(self) -> Path:
        """Where Kamailio writes its main process id."""
        return self.folder / "run" / "kamailio.pid"

    def render(self, nodes: Sequence[str], phones: Sequence[AgentAccount],
               templates: Path | None = None) -> Path:
        """Write kamailio.cfg, dispatcher.list (the Asterisk nodes' ``host:port``) and
        agents.cfg (the phones' passwords, 0600); returns the configuration file."""
        etc, run = self.folder / "etc", self.folder / "run"
        for path in (etc, run):
            path.mkdir(parents=True, exist_ok=True)
        etc.chmod(0o700)
        values = {"address": self.address, "sip_port": str(self.sip_port),
                  "modules_dir": str(KAMAILIO_MODULES), "etc_dir": str(etc),
                  "run_dir": str(run)}
        source = (templates or dialplans_dir()) / "kamailio.cfg"
        config = etc / "kamailio.cfg"
        config.write_text(render_template(source.read_text(encoding="utf-8"), values))
        (etc / "dispatcher.list").write_text(
            "# setid destination flags priority attributes\n"
            + "".join(f"1 sip:{node} 0 0 node={index}\n"
                      for index, node in enumerate(nodes, start=1)))
        lines = ["route[PASSWORDS] {", "    switch ($au) {"]
        for phone in phones:
            lines += [f'        case "{phone.agent_id}":',
                      f'            $var(password) = "{phone.password}";', "            break;"]
        lines += ["    }", "}", ""]
        secrets = etc / "agents.cfg"
        secrets.touch(mode=0o600)
        secrets.chmod(0o600)
        secrets.write_text("\n".join(lines))
        for path in (config, etc / "dispatcher.list"):
            path.chmod(0o600)
        return config

    def start(self) -> LocalKamailio:
        """Check the configuration, start Kamailio and wait until it answers OPTIONS."""
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        if not Path(binary).exists():
            raise ClusterError("kamailio is not installed (apt-get install kamailio)")
        config = self.folder / "etc" / "kamailio.cfg"
        checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True,
                                 text=True, check=False)
        if checked.returncode != 0:
            raise ClusterError(f"kamailio.cfg does not load: {checked.stderr[-1500:]}")
        log = self.folder / "kamailio.log"
        self.pid_file.unlink(missing_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen([binary, "-DD", "-E", "-f", str(config),
                                     "-P", str(self.pid_file), "-Y", str(self.folder / "run"),
                                     "-m", "64", "-M", "8"],
                                    stdout=out, stderr=out, start_new_session=True)
        self.pid = proc.pid
        _wait(self._answers, 15, "kamailio", log)
        return self

    def _answers(self) -> bool:
        if self.pid is not None and not alive(self.pid):
            raise ClusterError("kamailio exited: " + (self.folder / "kamailio.log").read_text(
                errors="replace")[-1500:])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(0.5)
            udp.bind((self.address, 0))
            port, tag = udp.getsockname()[1], time.monotonic_ns()
            probe = (f"OPTIONS sip:{self.address}:{self.sip_port} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP {self.address}:{port};rport;branch=z9hG4bKprobe{tag}\r\n"
                     "Max-Forwards: 70\r\nFrom: <sip:probe@cluster.invalid>;tag=1\r\n"
                     f"To: <sip:{self.address}:{self.sip_port}>\r\nCall-ID: probe-{tag}\r\n"
                     "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            try:
                udp.sendto(probe.encode(), (self.address, self.sip_port))
                reply = udp.recv(4096)
            except OSError:
                return False
        return reply.startswith(b"SIP/2.0 200")

    def stop(self) -> None:
        """Stop Kamailio (all its processes)."""
        pid = self.pid
        if pid is None and self.pid_file.is_file():
            with contextlib.suppress(ValueError):
                pid = int(self.pid_file.read_text().strip())
        _stop(pid)
        self.pid = None
