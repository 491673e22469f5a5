"""`ivr serve` and the command line on PostgreSQL (IVR_DATABASE_URL), with real calls through
the real Asterisk: what `make run` does with the URL set."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ivr.sip.phone import SipStack

from conftest import RunningAsterisk, sql
from hotline import Agents, Hotline, dial_and_press, running_hotline, wait_until

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def database(postgres: Any) -> str:
    url: str = postgres.create_database("ivr_service")
    return url


@pytest.fixture(scope="module")
def hotline(asterisk: RunningAsterisk, database: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hotline]:
    with running_hotline(asterisk, tmp_path_factory.mktemp("pg-service"),
                         IVR_DATABASE_URL=database, IVR_NODE__ID="node-here",
                         IVR_NODE__LEASE_S="3", IVR_FLOW__SWEEP_EVERY_S="1") as running:
        yield running


def test_calls_are_routed_and_stored_in_postgresql(hotline: Hotline, agents: Agents,
                                                   sip_stack: SipStack,
                                                   asterisk: RunningAsterisk,
                                                   database: str) -> None:
    assert not list(hotline.data_dir.glob("ivr.sqlite3*")), "SQLite must not be used"
    agents.register("south")
    call = dial_and_press(sip_stack, asterisk, "02033336666", "2")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "connected", 40)
    assert record["route"] == {"region": "south", "agent_id": "agent-south-1"}
    call.hangup()
    call.wait_ended()
    ended = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
    assert ended["hangup_cause"].startswith("caller_hangup")
    # The rows are PostgreSQL's, and the caller's number is sealed there too.
    rows = sql(database, "SELECT state, caller_number FROM calls WHERE id = :id",
               id=record["call_id"])
    assert rows[0][0] == "ended" and rows[0][1].startswith("enc1:")
    kinds = [r[0] for r in sql(database, "SELECT kind FROM call_events WHERE call_id = :id "
                                         "ORDER BY id", id=record["call_id"])]
    assert kinds[0] == "call_started" and "connected" in kinds and kinds[-1] == "ended"
    ready = httpx.get(f"{hotline.api}/ready", timeout=5).json()
    assert ready["checks"]["database"] is True


def test_the_command_line_uses_the_same_database(hotline: Hotline, database: str) -> None:
    made = subprocess.run([sys.executable, "-m", "ivr.cli", "token", "create", "--role",
                           "supervisor", "--name", "pg-cli"], env=hotline.env,
                          capture_output=True, text=True, check=True)
    token = made.stdout.strip().splitlines()[-1].split()[-1]
    assert httpx.get(f"{hotline.api}/calls", headers={"Authorization": f"Bearer {token}"},
                     timeout=5).status_code == 200
    assert sql(database, "SELECT count(*) FROM api_tokens WHERE name = 'pg-cli'") == [(1,)]
    listed = subprocess.run([sys.executable, "-m", "ivr.cli", "token", "list"],
                            env=hotline.env, capture_output=True, text=True, check=True)
    assert "pg-cli" in listed.stdout


def test_a_stopped_database_is_said_in_ready_and_calls_go_on(
        hotline: Hotline, agents: Agents, sip_stack: SipStack, asterisk: RunningAsterisk,
        postgres: Any) -> None:
    """PostgreSQL stopped under the running service: /ready names the database, a call
    still gets through (the journal keeps its writes), and they land once it is back."""
    agents.register("east")
    postgres.stop()
    try:
        wait_until(lambda: _database_ok(hotline) is False, 30, "/ready to name the database")
        call = dial_and_press(sip_stack, asterisk, "02166667777", "1")
        agent = agents.phones[0]
        wait_until(lambda: bool(agent.active), 40, "the agent to be rung")
        call.hangup()
        call.wait_ended()
    finally:
        postgres.start()
    wait_until(lambda: _database_ok(hotline) is True, 40, "the database to be back")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended", 40)
    assert record["route"]["region"] == "east"


def _database_ok(hotline: Hotline) -> bool | None:
    checks: dict[str, bool] = httpx.get(f"{hotline.api}/ready", timeout=5).json()["checks"]
    return checks.get("database")


def test_another_nodes_calls_are_left_alone_until_its_lease_runs_out(
        hotline: Hotline, database: str) -> None:
    """A call of another live node (its channel is on that node's Asterisk, not ours) is not
    touched by this node's reconciliation at start nor by its sweeps; once that node stops
    renewing its lease, this node declares it lost and closes the call with the cause."""
    import threading

    from ivr.store.db import make_engine
    from ivr.store.nodes import NodeLease
    from ivr.store.repository import Store

    engine = make_engine(database)
    far = NodeLease(engine, "node-far", 3.0)
    far.register()
    call = Store(engine, node_id="node-far").create_call(
        channel_id="far-channel-1", caller_number="13800210000", dialed_number="4008101111",
        sip_call_id=None, state="queued")
    alive = threading.Event()
    alive.set()

    def renew() -> None:  # the far node's controller, alive
        while alive.is_set():
            far.renew()
            time.sleep(0.5)

    renewing = threading.Thread(target=renew, daemon=True)
    renewing.start()
    try:
        hotline.stop()
        hotline.start()  # reconciliation at start: only node-here's calls
        time.sleep(3.5)  # and three sweeps
        assert hotline.call(call.id)["state"] == "queued"
    finally:
        alive.clear()
        renewing.join()
    ended = hotline.wait_call(call.id, lambda c: c["state"] == "ended", 20,
                              "node-far to be declared lost")
    assert ended["hangup_cause"] == "node_lost:queued"
    last = ended["events"][-1]
    assert last["kind"] == "ended" and last["data"]["closed_by"] == "node-here"
    nodes = {n["id"]: n for n in far.nodes()}
    assert nodes["node-far"]["lost_by"] == "node-here" and nodes["node-here"]["alive"] is True
    engine.dispose()
    # The operator's view of the same.
    listed = subprocess.run([sys.executable, "-m", "ivr.cli", "nodes"], env=hotline.env,
                            capture_output=True, text=True, check=True)
    by_id = {n["id"]: n for n in json.loads(listed.stdout)["nodes"]}
    assert by_id["node-here"]["alive"] is True and by_id["node-far"]["alive"] is False
    assert by_id["node-far"]["lost_by"] == "node-here" and by_id["node-far"]["active_calls"] == 0
