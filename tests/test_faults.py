"""Faults caused for real under a running controller: no caller stranded, no agent stuck.

These tests own their Asterisk (they freeze, cut and restart it) and their controller. Each
fault is caused while calls are in flight; afterwards every call is accounted for with a cause,
nothing is left in our Stasis application, and each agent's phone takes a new call.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ivr.sip.load import Burst, run_burst, sipp_available
from ivr.sip.phone import SipStack

from conftest import RunningAsterisk, make_test_settings, run_asterisk
from hotline import Agents, Hotline, dial_and_press, running_hotline, wait_until

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

# Short timings so each fault plays out in seconds: a 2 s ARI request timeout (and WebSocket
# ping), probes twice a second, a sweep every 2 s.
FAST = {
    "IVR_HEALTH__ARI_TIMEOUT_S": "2", "IVR_HEALTH__PROBE_EVERY_S": "0.5",
    "IVR_HEALTH__PROBE_TIMEOUT_S": "1", "IVR_FLOW__SWEEP_EVERY_S": "2",
    "IVR_FLOW__ARI_RETRY_PAUSE_S": "0.5",
}


@pytest.fixture(scope="module")
def pbx() -> Iterator[RunningAsterisk]:
    """An Asterisk of this module alone: the tests freeze, cut and restart it."""
    base = make_test_settings()
    # RTP for 400 concurrent legs: the burst test holds about 150 calls at once.
    yield from run_asterisk(make_test_settings(
        instance=base.instance, ari_port=base.ari_port, sip_port=base.sip_port,
        rtp_start=base.rtp_start, rtp_end=base.rtp_start + 799))


@pytest.fixture
def team(sip_stack: SipStack, pbx: RunningAsterisk, artifacts: Path) -> Iterator[Agents]:
    """Agent phones of one test."""
    agents = Agents(sip_stack, pbx, artifacts)
    try:
        yield agents
    finally:
        agents.close()


def _ready(hotline: Hotline) -> httpx.Response:
    return httpx.get(f"{hotline.api}/ready", timeout=5)


def _active(hotline: Hotline) -> list[dict[str, Any]]:
    response = hotline.get("/calls", "admin", active="true", limit=500)
    response.raise_for_status()
    calls: list[dict[str, Any]] = response.json()["items"]
    return calls


def _no_active_calls(hotline: Hotline, timeout: float = 30.0) -> None:
    wait_until(lambda: not _active(hotline), timeout,
               f"no active call in the store (left: {[c['state'] for c in _active(hotline)]})")


def _agent_takes_a_call(hotline: Hotline, sip_stack: SipStack, pbx: RunningAsterisk,
                        number: str, agent_id: str | None = None) -> str:
    """A fresh caller reaches an agent (``agent_id`` when given): that agent is not stuck."""
    call = dial_and_press(sip_stack, pbx, number, "1")
    try:
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40,
                                   f"a new caller to reach {agent_id or 'an agent'}")
        answered: str = record["route"]["agent_id"]
        assert agent_id is None or answered == agent_id
        return answered
    finally:
        call.hangup()
        call.wait_ended()


def test_frozen_pbx_while_an_agent_rings(pbx: RunningAsterisk, team: Agents,
                                         sip_stack: SipStack, tmp_path: Path) -> None:
    agent = team.register("north", answer_after_s=2.5)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        call = dial_and_press(sip_stack, pbx, "01062345678", "1")
        hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ringing_agent", 30)
        pid = pbx.instance.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # Longer than the request timeout: /ready says so, with the reason.
            wait_until(lambda: _ready(hotline).status_code == 503, 10, "/ready to turn 503")
            body = _ready(hotline).json()
            assert set(body["missing"]) & {"ari", "ari_requests"}, body
            assert body["reasons"], body
            time.sleep(3)
        finally:
            os.kill(pid, signal.SIGCONT)
        frozen_at = time.monotonic()
        wait_until(lambda: _ready(hotline).status_code == 200, 30, "/ready to recover")
        recovered_s = time.monotonic() - frozen_at
        # The caller reaches the agent after all; nothing was left half-done.
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40,
                                   "the caller to reach the agent after the freeze")
        assert record["route"]["agent_id"] == agent.agent_id
        call.hangup()
        call.wait_ended()
        hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
        _agent_takes_a_call(hotline, sip_stack, pbx, "01062340000", agent.agent_id)
        _no_active_calls(hotline)
        hotline.assert_nothing_left()
        print(f"recovered {recovered_s:.1f} s after SIGCONT")


def test_websocket_cut_in_the_same_process(pbx: RunningAsterisk, team: Agents,
                                            sip_stack: SipStack, tmp_path: Path) -> None:
    first = team.register("north", 1, answer_after_s=0.3)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        talking = dial_and_press(sip_stack, pbx, "01062345678", "1")
        talked = hotline.wait_call(talking.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 30)
        assert talked["route"]["agent_id"] == first.agent_id
        second = team.register("north", 2, answer_after_s=3.0)
        ringing = dial_and_press(sip_stack, pbx, "01062345679", "1")
        hotline.wait_call(ringing.record.sip_call_id,
                          lambda c: c["state"] == "ringing_agent", 30)
        # Cut every TCP connection of the controller to ARI (events WebSocket included); the
        # PBX itself keeps running and keeps both calls.
        port = pbx.state.ports.ari
        subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"],
                       check=True, capture_output=True)
        talked = hotline.wait_call(
            talking.record.sip_call_id,
            lambda c: any(e["kind"] == "reconciled" for e in c["events"]), 30)
        assert talked["state"] == "connected"
        # The agent who was being rung is free again and takes the re-queued caller.
        rung = hotline.wait_call(ringing.record.sip_call_id,
                                 lambda c: c["state"] == "connected", 40,
                                 "the re-queued caller to reach the second agent")
        assert rung["route"]["agent_id"] == second.agent_id
        assert any(e["kind"] == "reconciled" and e["data"]["action"] == "resume_queue"
                   for e in rung["events"])
        for call in (talking, ringing):
            call.hangup()
            call.wait_ended()
        _no_active_calls(hotline)
        # Both phones take a new call. Which one is idle longest depends on which of the two
        # hang-ups the service processed first, so the order is not asserted.
        taken = {_agent_takes_a_call(hotline, sip_stack, pbx, number)
                 for number in ("01062340001", "01062340002")}
        assert taken == {first.agent_id, second.agent_id}
        hotline.assert_nothing_left()


def test_locked_database_keeps_callers_and_their_records(
        pbx: RunningAsterisk, team: Agents, sip_stack: SipStack, tmp_path: Path) -> None:
    agent = team.register("north", answer_after_s=0.3)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        database = hotline.data_dir / "ivr.sqlite3"
        lock = sqlite3.connect(database, timeout=0, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            wait_until(lambda: _ready(hotline).status_code == 503, 10,
                       "/ready to say the database cannot be written")
            assert "database" in _ready(hotline).json()["reasons"]
            call = dial_and_press(sip_stack, pbx, "01062345678", "1")
            # Answered, greeted, routed and connected while no write can reach the database.
            wait_until(lambda: any(c.connected_at for c in agent.calls), 30,
                       "the agent to answer while the database is locked")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until(lambda: _ready(hotline).status_code == 200, 30, "/ready to recover")
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 30,
                                   "the kept writes to reach the database")
        kinds = [e["kind"] for e in record["events"]]
        assert kinds[0] == "call_started"
        assert kinds.index("answered") < kinds.index("routed") < kinds.index("connected")
        assert record["route"]["agent_id"] == agent.agent_id
        call.hangup()
        call.wait_ended()
        hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
        _agent_takes_a_call(hotline, sip_stack, pbx, "01062340003", agent.agent_id)
        hotline.assert_nothing_left()


@pytest.mark.skipif(not sipp_available(), reason="SIPp missing (Debian sip-tester; "
                    "scripts/host_packages installs it)")
def test_burst_of_calls_is_served_or_refused_never_stranded(
        pbx: RunningAsterisk, team: Agents, sip_stack: SipStack, tmp_path: Path) -> None:
    agent = team.register("north", answer_after_s=0.3)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        result = run_burst(pbx.pbx, pbx.state.hotline_number, Burst(200, 50.0, 3000))
        # Every call got a final answer at once: served (200) or refused (486), none hung.
        assert result.sent == 200
        assert result.failed == 0, result
        _no_active_calls(hotline, 60)
        hotline.assert_nothing_left(30)
        calls = hotline.get("/calls", "admin", limit=500).json()["items"]
        assert len(calls) == 200
        causes = [c["hangup_cause"] or "" for c in calls]
        assert all(causes), "every call has a cause"
        refused = sum(1 for cause in causes if cause.startswith("refused:"))
        metrics = httpx.get(f"{hotline.api.removesuffix('/api/v1')}/metrics",
                            headers=hotline.headers("admin"), timeout=5).text
        assert f"ivr_calls_refused_total {float(refused)}" in metrics
        lag = [line for line in metrics.splitlines() if line.startswith("ivr_event_loop_lag")]
        print(f"burst: {200 - refused} served, {refused} refused; sipp {result}; {lag}")
        _agent_takes_a_call(hotline, sip_stack, pbx, "01062340004", agent.agent_id)


def test_pbx_restart_under_a_running_controller(
        pbx: RunningAsterisk, team: Agents, sip_stack: SipStack, tmp_path: Path) -> None:
    agent = team.register("north", answer_after_s=0.3)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        call = dial_and_press(sip_stack, pbx, "01062345678", "1")
        hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "connected", 30)
        pbx.instance.down()
        pbx.instance.up(make_test_settings(
            instance=pbx.instance.name, ari_port=pbx.state.ports.ari,
            sip_port=pbx.state.ports.sip, rtp_start=pbx.state.ports.rtp_start,
            rtp_end=pbx.state.ports.rtp_end), ("north", "east", "south", "west"))
        record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended", 30)
        # The PBX ended it, not the caller.
        assert record["hangup_by"] == "pbx", record["hangup_cause"]
        wait_until(lambda: _ready(hotline).status_code == 200, 30, "/ready to recover")
        agent.wait_registered(30)
        _agent_takes_a_call(hotline, sip_stack, pbx, "01062340005", agent.agent_id)
        _no_active_calls(hotline)
        hotline.assert_nothing_left()


def test_broken_routing_rules_degrade_to_the_fallback_queue(
        pbx: RunningAsterisk, team: Agents, sip_stack: SipStack, tmp_path: Path) -> None:
    agent = team.register("north", answer_after_s=0.3)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        pass  # creates and seeds the database
    database = tmp_path / "var" / "ivr.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE routing_rules SET body = json_set(body, '$.then.priority', 'high')")
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        call = dial_and_press(sip_stack, pbx, "01062345678", "1")
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40,
                                   "the caller to reach an agent by the fallback route")
        kinds = [e["kind"] for e in record["events"]]
        assert "recovered" in kinds and "fallback_route" in kinds
        assert record["route"]["agent_id"] == agent.agent_id
        call.hangup()
        call.wait_ended()
        ended = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
        assert ended["hangup_cause"] == "caller_hangup:connected"
        assert "call flow failed" in hotline.log_path.read_text()
        hotline.assert_nothing_left()


def test_a_database_error_during_a_call_never_logs_the_number(
        pbx: RunningAsterisk, team: Agents, sip_stack: SipStack, tmp_path: Path) -> None:
    """A write the database refuses (a trigger aborts every new call row): the controller logs
    the failure, without SQLAlchemy's statement parameters (which held the caller's number),
    and the caller is not left hanging."""
    team.register("north", answer_after_s=0.3)
    with running_hotline(pbx, tmp_path, **FAST) as hotline:
        database = hotline.data_dir / "ivr.sqlite3"
        with sqlite3.connect(database) as db:
            db.execute("CREATE TRIGGER refuse_calls BEFORE INSERT ON calls "
                       "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
        call = sip_stack.caller("01062349876", pbx.pbx).dial(pbx.state.hotline_number)
        wait_until(lambda: "refused by the test" in hotline.log_path.read_text(), 30,
                   "the refused write to be logged")
        call.wait_ended(timeout=40)
        log_text = hotline.log_path.read_text()
        assert "hide_parameters" in log_text or "[parameters:" not in log_text
        for spelling in ("01062349876", "1062349876", "+861062349876"):
            assert spelling not in log_text, spelling
        with sqlite3.connect(database) as db:
            db.execute("DROP TRIGGER refuse_calls")
        hotline.assert_nothing_left()
