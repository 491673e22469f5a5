"""Two nodes on one machine behind Kamailio (`ivr cluster`): PostgreSQL, Redis, Kamailio, two
Asterisk instances and two controllers, with real SIP phones. Calls entering through Kamailio
land on both nodes and are all routed; agents registered once at Kamailio never have two calls
at once; then node A's Asterisk and controller are killed: A's calls are closed by B, every new
call goes to B, and A's agents keep working through B."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ivr.asterisk.instance import AsteriskInstance
from ivr.asterisk.provision import locate_asterisk
from ivr.cluster.launcher import Cluster, ClusterState
from ivr.settings import Settings
from ivr.sip.audio import write_tone
from ivr.sip.phone import AgentOptions, AgentPhone, PhoneCall, SipStack

from conftest import sql
from hotline import RULES, wait_until

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.postgres]

# Caller numbers by region (area code) and the key for product information.
NUMBERS = {"north": "010", "east": "021", "south": "020", "west": "028"}
KEY = "2"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, ClusterState]]:
    for program in ("kamailio", "redis-server"):
        if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists():
            pytest.skip(f"{program} is not installed (scripts/host_packages installs it)")
    # Under /tmp with mode 0755: PostgreSQL runs as nobody and must enter the folder.
    folder = Path(tempfile.mkdtemp(prefix="ivr-cluster-"))
    folder.chmod(0o755)
    # One agent per region: four agents and four callers at once keep the pjsua2 accounts few.
    settings = Settings(asterisk={"agents_per_region": 1, "supervisors": 0},
                        routing={"rules_file": RULES})
    launcher = Cluster(folder, settings, controller_env={
        "IVR_ASR__ENABLED": "false", "IVR_ROUTING__RULES_FILE": str(RULES),
        "IVR_FLOW__WRAP_UP_S": "0.5", "IVR_FLOW__MENU_TIMEOUT_S": "4",
        "IVR_FLOW__QUEUE_POLL_S": "0.2", "IVR_NODE__LEASE_S": "3",
        "IVR_FLOW__SWEEP_EVERY_S": "2"})
    try:
        state = launcher.up()
        yield launcher, state
    finally:
        launcher.down()
        if os.environ.get("IVR_KEEP_CLUSTER"):  # for a look at the logs after a failure
            print(f"cluster kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def agents(cluster: tuple[Cluster, ClusterState], sip_stack: SipStack,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AgentPhone]]:
    _launcher, state = cluster
    folder = tmp_path_factory.mktemp("cluster-agents")
    tone = write_tone(folder / "agent.wav", 880.0, 1.0)
    phones: dict[str, AgentPhone] = {}
    try:
        for account in state.phone_accounts():
            phone = sip_stack.agent(account.agent_id, account.password, state.sip_entry,
                                    AgentOptions(answer_after_s=0.3, play=tone))
            phones[account.agent_id] = phone
        for phone in phones.values():
            phone.wait_registered()
        # Both nodes see every phone through Kamailio (their qualify reaches it there).
        wait_until(lambda: all(_online(state, node.name) >= len(phones)
                               for node in state.nodes), 30, "both nodes to see the agents")
        yield phones
    finally:
        for phone in phones.values():
            phone.close()


def _ari(state: ClusterState, name: str) -> Any:
    node = next(n for n in state.nodes if n.name == name)
    return AsteriskInstance(locate_asterisk(), node.instance).load_state().ari()  # type: ignore[union-attr]


def _online(state: ClusterState, name: str) -> int:
    ari = _ari(state, name)
    try:
        endpoints = httpx.get(f"{ari.base_url}/ari/endpoints/PJSIP", auth=(ari.user, ari.password),
                              timeout=3).json()
    except httpx.HTTPError:
        return 0
    return sum(1 for e in endpoints
               if e["resource"].startswith("agent-") and e["state"] == "online")


def _call(sip_stack: SipStack, state: ClusterState, number: str) -> PhoneCall:
    caller = sip_stack.caller(number, state.sip_entry)
    call = caller.dial(state.hotline_number)
    call.wait_connected(timeout=20)
    return call


def _batch(sip_stack: SipStack, state: ClusterState, numbers: list[str]
           ) -> tuple[list[str], list[PhoneCall]]:
    """Place the calls at once and press the key in each; their SIP Call-IDs and calls."""
    calls: list[PhoneCall] = []
    lock = threading.Lock()

    def place(number: str) -> None:
        call = _call(sip_stack, state, number)
        time.sleep(1.0)
        call.send_dtmf(KEY)
        with lock:
            calls.append(call)

    threads = [threading.Thread(target=place, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == len(numbers)
    return [c.record.sip_call_id for c in calls], calls


def _stored(state: ClusterState, sip_call_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    rows = sql(state.database_url,
               "SELECT sip_call_id, node_id, state, agent_id, hangup_cause FROM calls")
    return {row[0]: row for row in rows if row[0] in sip_call_ids}


def _wait_routed(state: ClusterState, ids: list[str], what: str, within_s: float = 40) -> None:
    def routed() -> bool:
        rows = _stored(state, ids)
        return len(rows) == len(ids) and all(r[3] is not None for r in rows.values())

    wait_until(routed, within_s, f"{what}: every call routed to an agent")


def _wait_ended(state: ClusterState, ids: list[str], what: str) -> None:
    wait_until(lambda: all(r[2] == "ended" for r in _stored(state, ids).values()), 20,
               f"{what}: every call ended")


def _overlaps(phone: AgentPhone) -> list[tuple[float, float]]:
    spans = sorted((c.created_at, c.disconnected_at or time.monotonic()) for c in phone.calls)
    return [(a, b) for (a, a_end), (b, _b_end) in zip(spans, spans[1:], strict=False)
            if b < a_end]


def test_a_supervisor_on_either_node_sees_every_nodes_calls(
        cluster: tuple[Cluster, ClusterState], agents: dict[str, AgentPhone],
        sip_stack: SipStack) -> None:
    """Live events go through Redis: a supervisor connected to node b sees the events of a
    call node a took, and resumes on node a from the last number b sent (no new snapshot)."""
    import json
    import subprocess
    import sys

    from websockets.sync.client import connect

    launcher, state = cluster
    node_a, node_b = state.nodes
    made = subprocess.run([sys.executable, "-m", "ivr.cli", "token", "create", "--role",
                           "supervisor", "--name", "cluster-supervisor"],
                          env=launcher.node_env(state, node_b), capture_output=True, text=True,
                          check=True)
    token = made.stdout.strip().splitlines()[-1].split()[-1]

    def live(node: Any) -> Any:
        return connect(f"ws://{state.address}:{node.api_port}/api/v1/live", open_timeout=5)

    def auth(**hello: Any) -> str:
        return json.dumps({"type": "auth", "token": token, **hello})

    with live(node_b) as on_b:
        on_b.send(auth())
        snapshot = json.loads(on_b.recv(timeout=10))
        assert snapshot["type"] == "snapshot"
        ids, calls = _batch(sip_stack, state, ["01055550001", "02155550002"])  # one per node
        _wait_routed(state, ids, "the two calls")
        by_node = {row[1]: row for row in _stored(state, ids).values()}
        assert set(by_node) == {"a", "b"}
        call_of_a = sql(state.database_url, "SELECT id FROM calls WHERE sip_call_id = :s",
                        s=by_node["a"][0])[0][0]
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not any(m.get("call_id") == call_of_a and m["data"].get("kind") == "connected"
                      for m in seen):
            assert time.monotonic() < deadline, "node b's supervisor never saw node a's call"
            seen.append(json.loads(on_b.recv(timeout=20)))
        last_seq, epoch = seen[-1]["seq"], snapshot["epoch"]
    for call in calls:
        call.hangup()
    _wait_ended(state, ids, "the two calls")
    # On node a, from where node b left off: the events it missed, numbered the same.
    with live(node_a) as on_a:
        on_a.send(auth(last_seq=last_seq, epoch=epoch))
        replayed = json.loads(on_a.recv(timeout=10))
    assert replayed["type"] == "event" and replayed["seq"] == last_seq + 1


def test_calls_through_kamailio_land_on_both_nodes_and_a_node_can_die(
        cluster: tuple[Cluster, ClusterState], agents: dict[str, AgentPhone],
        sip_stack: SipStack) -> None:
    launcher, state = cluster
    placed: list[str] = []
    # 40 calls in ten waves of four: one per region, as many as there are agents.
    for wave in range(10):
        numbers = [f"{NUMBERS[r]}{wave:02d}{n:06d}"[:11] for r, n in zip(
            NUMBERS, (111111, 222222, 333333, 444444), strict=True)]
        ids, calls = _batch(sip_stack, state, numbers)
        _wait_routed(state, ids, f"wave {wave}")
        time.sleep(1.0)
        for call in calls:
            call.hangup()
        for call in calls:
            call.wait_ended()
        _wait_ended(state, ids, f"wave {wave}")
        placed += ids
    stored = _stored(state, placed)
    assert len(stored) == 40
    assert {row[1] for row in stored.values()} == {"a", "b"}, "both nodes took calls"
    assert all(row[3] for row in stored.values()), "every call reached an agent"
    for agent_id, phone in agents.items():
        assert not _overlaps(phone), f"{agent_id} had two calls at once"

    # Node A dies mid-call: its Asterisk and its controller are killed.
    ids, calls = _batch(sip_stack, state, [f"{NUMBERS[r]}77{n:06d}"[:11] for r, n in zip(
        NUMBERS, (101010, 202020, 303030, 404040), strict=True)])
    _wait_routed(state, ids, "the calls before the kill")
    on_a = [i for i, row in _stored(state, ids).items() if row[1] == "a"]
    assert on_a, "round robin put some of these calls on node a"
    node_a = next(n for n in state.nodes if n.name == "a")
    os.kill(node_a.controller_pid, signal.SIGKILL)  # type: ignore[arg-type]
    asterisk_a = AsteriskInstance(locate_asterisk(), node_a.instance)
    os.kill(asterisk_a.pid(), signal.SIGKILL)  # type: ignore[arg-type]
    # A's calls are accounted for: node b declares a lost and closes them with the cause.
    wait_until(lambda: all(r[2] == "ended" for i, r in _stored(state, ids).items()
                           if i in on_a), 20, "node b to close node a's calls")
    assert {_stored(state, ids)[i][4].split(":")[0] for i in on_a} == {"node_lost"}
    # The phones of A's calls hear silence and hang up (no BYE can come from a dead PBX).
    for call in calls:
        call.hangup()
    for phone in agents.values():
        for leg in phone.active:
            if leg.record.disconnected_at is None:
                leg.hangup()
    time.sleep(2.0)
    # Every new call goes to b, and is routed, also to the agents a had been using.
    after, calls = _batch(sip_stack, state, [f"{NUMBERS[r]}88{n:06d}"[:11] for r, n in zip(
        NUMBERS, (505050, 606060, 707070, 808080), strict=True)])
    _wait_routed(state, after, "the calls after the kill", 60)
    rows = _stored(state, after)
    assert {row[1] for row in rows.values()} == {"b"}
    for call in calls:
        call.hangup()
    for agent_id, phone in agents.items():  # the dead calls were hung up before these
        assert not _overlaps(phone), f"{agent_id} had two calls at once"
    assert [n["ready"] for n in launcher.status()["nodes"]] == [False, True]
