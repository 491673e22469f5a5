"""``ivr cluster up|down|status``: several hotline nodes on this machine, for trials and tests.

One PostgreSQL (the shared store), one Redis (live events), one Kamailio (SIP entry for callers,
registrar for agents and supervisors), and per node an Asterisk instance (``cluster-<name>``)
with its controller (``ivr serve`` as node ``<name>``), each on its own loopback ports. Every
process is started in a session of its own, so it outlives the command; ``cluster.json`` in the
folder (mode 0600) records ports, process ids and the phones' passwords, and ``down`` stops them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ivr.asterisk.config import AgentAccount
from ivr.asterisk.instance import AsteriskInstance, InstanceState, free_port
from ivr.asterisk.provision import locate_asterisk
from ivr.cluster.services import ClusterError, LocalKamailio, LocalRedis, _stop, alive
from ivr.settings import AsteriskSettings, Settings
from ivr.store.postgres import LocalPostgres, free_tcp_port

STATE = "cluster.json"


@dataclass
class NodePlan:
    """One node: its Asterisk instance and its controller."""

    name: str
    sip_port: int
    ari_port: int
    rtp_start: int
    api_port: int
    instance: str = ""  # its Asterisk instance (named after the cluster's folder and node)
    controller_pid: int | None = None


@dataclass
class ClusterState:
    """What ``up`` started, for ``status`` and ``down``."""

    address: str
    kamailio_port: int
    postgres_port: int
    redis_port: int
    database_url: str = ""
    broker_url: str = ""
    hotline_number: str = "4008101111"
    nodes: list[NodePlan] = field(default_factory=list)
    phones: list[dict[str, str]] = field(default_factory=list)  # agents and supervisors
    postgres_pid: int | None = None
    redis_pid: int | None = None
    kamailio_pid: int | None = None

    @property
    def sip_entry(self) -> str:
        """host:port callers and phones use."""
        return f"{self.address}:{self.kamailio_port}"

    def phone_accounts(self) -> list[AgentAccount]:
        """The phones that register at Kamailio."""
        return [AgentAccount(**phone) for phone in self.phones]


class Cluster:
    """The cluster kept in ``folder`` (default ``var/cluster``)."""

    def __init__(self, folder: Path, settings: Settings,
                 names: tuple[str, ...] = ("a", "b"),
                 controller_env: dict[str, str] | None = None) -> None:
        self.folder = folder.resolve()
        self.settings = settings
        self.names = names
        self.controller_env = controller_env or {}  # more settings for every controller

    # -- state -----------------------------------------------------------------------------

    def load(self) -> ClusterState | None:
        """The recorded state, or None when the cluster was never started here."""
        path = self.folder / STATE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        nodes = [NodePlan(**node) for node in data.pop("nodes")]
        return ClusterState(nodes=nodes, **data)

    def _save(self, state: ClusterState) -> None:
        path = self.folder / STATE
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(asdict(state), indent=2))

    def _plan(self) -> ClusterState:
        address = str(self.settings.asterisk.address)
        nodes, rtp = [], 32000
        # Instance names are global on this machine: tie them to this cluster's folder.
        tag = hashlib.sha256(str(self.folder).encode()).hexdigest()[:6]
        for name in self.names:
            nodes.append(NodePlan(name, free_port("udp"), free_port("tcp"), rtp,
                                  free_port("tcp"), instance=f"cluster-{tag}-{name}"))
            rtp += 2000
        return ClusterState(address, free_port("udp"), free_tcp_port(address),
                            free_tcp_port(address), nodes=nodes,
                            hotline_number=self.settings.asterisk.hotline_number)

    # -- up / down -------------------------------------------------------------------------

    def up(self, timeout_s: float = 90.0) -> ClusterState:
        """Start whatever is not running; returns the state (also in cluster.json)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # PostgreSQL runs as nobody and must enter it
        state = self.load() or self._plan()
        self._save(state)
        try:
            self._up(state, timeout_s)
        finally:
            self._save(state)
        return state

    def _up(self, state: ClusterState, timeout_s: float) -> None:
        if not alive(state.postgres_pid):
            pg = LocalPostgres(self.folder / "postgres", state.postgres_port,
                               state.address).start()
            state.postgres_pid = pg.pid
            state.database_url = pg.ensure_database("ivr")
        if not alive(state.redis_pid):
            redis = LocalRedis(self.folder / "redis", state.redis_port, state.address).start()
            state.redis_pid, state.broker_url = redis.pid, redis.url
        key = self.folder / "master.key"
        if not key.is_file():
            key.touch(mode=0o600)
            key.write_text(secrets.token_hex(32) + "\n")
        instances: list[InstanceState] = []
        install = locate_asterisk()
        for node in state.nodes:
            instance = AsteriskInstance(install, node.instance)
            instances.append(instance.up(self._asterisk_settings(state, node),
                                         self.settings.regions, api_port=node.api_port))
        state.phones = [asdict(p) for p in (*instances[0].agents, *instances[0].supervisors)]
        if not alive(state.kamailio_pid):
            kamailio = LocalKamailio(self.folder / "kamailio", state.address,
                                     state.kamailio_port)
            kamailio.render([f"{state.address}:{n.sip_port}" for n in state.nodes],
                            state.phone_accounts())
            kamailio.start()
            state.kamailio_pid = kamailio.pid
        for node in state.nodes:
            if not alive(node.controller_pid):
                node.controller_pid = self._start_controller(state, node)
        deadline = time.monotonic() + timeout_s
        for node in state.nodes:
            url = f"http://{state.address}:{node.api_port}/api/v1/ready"
            while not _ready(url):
                if not alive(node.controller_pid):
                    raise ClusterError(f"controller {node.name} exited; see "
                                       f"{self.folder / node.name / 'serve.log'}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"controller {node.name} not ready in {timeout_s:.0f} s")
                time.sleep(0.2)

    def _asterisk_settings(self, state: ClusterState, node: NodePlan) -> AsteriskSettings:
        base = self.settings.asterisk
        return base.model_copy(update={
            "instance": node.instance, "sip_port": node.sip_port, "ari_port": node.ari_port,
            "rtp_start": node.rtp_start, "rtp_end": node.rtp_start + 1999,
            "agent_proxy": state.sip_entry})

    def node_env(self, state: ClusterState, node: NodePlan) -> dict[str, str]:
        """The environment of a node's controller (and of ``ivr`` commands aimed at it)."""
        return {
            **os.environ,
            "IVR_NODE__ID": node.name,
            "IVR_DATABASE_URL": state.database_url,
            "IVR_BROKER_URL": state.broker_url,
            "IVR_ASTERISK__INSTANCE": node.instance,
            "IVR_ASTERISK__SIP_PORT": str(node.sip_port),
            "IVR_ASTERISK__ARI_PORT": str(node.ari_port),
            "IVR_ASTERISK__AGENT_PROXY": state.sip_entry,
            "IVR_API_PORT": str(node.api_port),
            "IVR_API_HOST": state.address,
            "IVR_DATA_DIR": str(self.folder / node.name / "var"),
            "IVR_VOICEPRINT__MASTER_KEY_FILE": str(self.folder / "master.key"),
            **self.controller_env,
        }

    def _start_controller(self, state: ClusterState, node: NodePlan) -> int:
        folder = self.folder / node.name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "serve.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ivr.cli", "serve"],
                                    env=self.node_env(state, node), stdout=log, stderr=log,
                                    start_new_session=True)
        return proc.pid

    def down(self) -> bool:
        """Stop everything this cluster started; False when nothing was recorded."""
        state = self.load()
        if state is None:
            return False
        for node in state.nodes:
            _stop(node.controller_pid, signal.SIGINT, 25)
            node.controller_pid = None
        LocalKamailio(self.folder / "kamailio", state.address, state.kamailio_port).stop()
        _stop(state.kamailio_pid)
        state.kamailio_pid = None
        install = locate_asterisk()
        for node in state.nodes:
            with contextlib.suppress(Exception):
                AsteriskInstance(install, node.instance).down()
        _stop(state.redis_pid)
        state.redis_pid = None
        _stop(state.postgres_pid, signal.SIGINT, 20)
        state.postgres_pid = None
        self._save(state)
        return True

    def status(self) -> dict[str, Any]:
        """What runs, for the operator (no passwords)."""
        state = self.load()
        if state is None:
            return {"running": False, "folder": str(self.folder)}
        install = locate_asterisk()
        nodes = []
        for node in state.nodes:
            api = f"http://{state.address}:{node.api_port}/api/v1"
            nodes.append({"name": node.name, "sip": f"{state.address}:{node.sip_port}",
                          "api": api, "controller": alive(node.controller_pid),
                          "asterisk": AsteriskInstance(install, node.instance).pid() is not None,
                          "ready": _ready(f"{api}/ready")})
        return {"running": True, "folder": str(self.folder), "sip_entry": state.sip_entry,
                "hotline": state.hotline_number, "postgres": alive(state.postgres_pid),
                "redis": alive(state.redis_pid), "kamailio": alive(state.kamailio_pid),
                "database_url": state.database_url.split("@")[-1], "nodes": nodes}


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
