"""What supervisors and administrators do to live calls, through the real Asterisk:
listen / whisper / barge from their own SIP phone (ARI snoop), and a routing change over REST
that the very next call follows (a stale write is refused, the history shows the diff)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ivr.sip.audio import Pcm, band_energy_ratio, read_wav, write_tone
from ivr.sip.phone import AgentOptions, AgentPhone, SipStack

from conftest import RunningAsterisk
from hotline import Agents, Hotline, dial_and_press, running_hotline, wait_until

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ = 440.0, 880.0, 1320.0


@pytest.fixture(scope="module")
def hotline(asterisk: RunningAsterisk, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Hotline]:
    with running_hotline(asterisk, tmp_path_factory.mktemp("supervise")) as running:
        yield running


def _supervisor_phone(sip_stack: SipStack, asterisk: RunningAsterisk,
                      folder: Path) -> AgentPhone:
    account = asterisk.state.supervisors[0]
    tone = write_tone(folder / "supervisor-tone.wav", SUPERVISOR_HZ, 1.0)
    phone = sip_stack.agent(account.agent_id, account.password, asterisk.pbx,
                            AgentOptions(answer_after_s=0.2, record_dir=folder, play=tone))
    phone.wait_registered()
    return phone


def _last(pcm: Pcm, seconds: float) -> Pcm:
    end = len(pcm.samples) - int(0.3 * pcm.rate)
    return Pcm(pcm.samples[max(0, end - int(seconds * pcm.rate)):end], pcm.rate)


@pytest.mark.parametrize("mode", ["whisper", "barge"])
def test_supervisor_whispers_or_barges_from_their_own_phone(
        mode: str, hotline: Hotline, agents: Agents, sip_stack: SipStack,
        asterisk: RunningAsterisk, artifacts: Path) -> None:
    agents.register("east", tone_hz=AGENT_HZ)
    supervisor = _supervisor_phone(sip_stack, asterisk, artifacts)
    try:
        call = dial_and_press(sip_stack, asterisk, "02166660000", "1",
                              record=artifacts / "caller.wav")
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40)
        started = httpx.post(f"{hotline.api}/calls/{record['call_id']}/monitor",
                             json={"mode": mode, "phone": supervisor.agent_id},
                             headers=hotline.headers("supervisor"), timeout=5)
        assert started.status_code == 202, started.text
        assert started.json()["target"] == "agent"
        wait_until(lambda: bool(supervisor.active), 15, "the supervisor's phone to ring")
        tone = write_tone(artifacts / "caller-tone.wav", CALLER_HZ, 5.0)
        time.sleep(1.0)  # answered and bridged
        call.play(tone)
        agent_leg = agents.phones[0].active[-1]
        call.hangup()
        call.wait_ended()
        call.wait_released()
        supervisor.active[-1].wait_ended()
        supervisor.active[-1].wait_released()
        agent_leg.wait_released()
    finally:
        supervisor.close()
    heard_by_supervisor = _last(read_wav(supervisor.calls[-1].recording), 3.0)  # type: ignore[arg-type]
    heard_by_agent = _last(read_wav(agents.phones[0].calls[-1].recording), 3.0)  # type: ignore[arg-type]
    heard_by_caller = _last(read_wav(artifacts / "caller.wav"), 3.0)
    # The supervisor hears both sides of the conversation.
    assert band_energy_ratio(heard_by_supervisor, CALLER_HZ) > 0.05
    assert band_energy_ratio(heard_by_supervisor, AGENT_HZ) > 0.05
    # Whisper: only the agent hears the supervisor. Barge: the caller hears them too.
    assert band_energy_ratio(heard_by_agent, SUPERVISOR_HZ) > 0.05
    to_caller = band_energy_ratio(heard_by_caller, SUPERVISOR_HZ)
    if mode == "whisper":
        assert to_caller < 0.01, to_caller
    else:
        assert to_caller > 0.05, to_caller
    ended = hotline.call(record["call_id"])
    assert [e["data"]["mode"] for e in ended["events"] if e["kind"] == "monitor_started"] == [
        mode]


def test_monitor_refusals(hotline: Hotline, agents: Agents, sip_stack: SipStack,
                          asterisk: RunningAsterisk) -> None:
    call = dial_and_press(sip_stack, asterisk, "02166661111", "")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "menu", 30)
    url = f"{hotline.api}/calls/{record['call_id']}/monitor"
    headers = hotline.headers("supervisor")
    whisper = httpx.post(url, json={"mode": "whisper", "phone": "supervisor-1"},
                         headers=headers, timeout=5)
    assert whisper.status_code == 409  # nobody to whisper to before an agent answers
    unknown = httpx.post(url, json={"mode": "listen", "phone": "agent-east-1"},
                         headers=headers, timeout=5)
    assert unknown.status_code == 422
    agent = httpx.post(url, json={"mode": "listen", "phone": "supervisor-1"},
                       headers=hotline.headers("agent"), timeout=5)
    assert agent.status_code == 403
    # No phone registered as supervisor-2: a clear 409 (Asterisk's "Allocation failed" was a
    # 500 "internal error" before), and the call goes on untouched.
    offline = httpx.post(url, json={"mode": "listen", "phone": "supervisor-2"},
                         headers=headers, timeout=5)
    assert offline.status_code == 409, offline.text
    assert "'supervisor-2' is not registered" in offline.json()["message"]
    assert hotline.call(record["call_id"])["state"] == "menu"
    call.hangup()
    call.wait_ended()


def test_routing_change_applies_to_the_next_call(hotline: Hotline, agents: Agents,
                                                 sip_stack: SipStack,
                                                 asterisk: RunningAsterisk) -> None:
    east, south = agents.register("east"), agents.register("south")
    admin = hotline.headers("admin")
    rules = f"{hotline.api}/routing/rules"

    def billing_call() -> dict[str, object]:
        call = dial_and_press(sip_stack, asterisk, "02177770000", "1")
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40)
        call.hangup()
        call.wait_ended()
        hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
        return record

    before = billing_call()
    assert before["route"] == {"region": "east", "agent_id": east.agent_id}
    created = httpx.post(rules, headers=admin, timeout=5, json={
        "id": "billing-south", "name": "Billing handled in the south", "position": 50,
        "when": {"intents": ["billing"]},
        "then": {"target_region": "south", "ring_timeout_s": 4, "max_wait_s": 60}})
    assert created.status_code == 201, created.text
    etag = created.headers["etag"]
    after = billing_call()  # no restart: the next call follows the new rule
    assert after["route"] == {"region": "south", "agent_id": south.agent_id}
    assert after["route_rule_id"] == "billing-south"

    changed = dict(created.json()["body"])
    changed["then"] = {**changed["then"], "priority": 3}
    ok = httpx.put(f"{rules}/billing-south", json=changed, timeout=5,
                   headers={**admin, "If-Match": etag})
    assert ok.status_code == 200, ok.text
    stale = httpx.put(f"{rules}/billing-south", json=changed, timeout=5,
                      headers={**admin, "If-Match": etag})
    assert stale.status_code == 412
    history = httpx.get(f"{rules}/history", params={"rule_id": "billing-south"},
                        headers=admin, timeout=5).json()
    changes = history["items"]
    update = next(c for c in changes if c["action"] == "update")
    assert {"path": "then.priority", "before": 0, "after": 3} in update["diff"]
    assert "admin" in update["by"]
    deleted = httpx.delete(f"{rules}/billing-south", timeout=5,
                           headers={**admin, "If-Match": ok.headers["etag"]})
    assert deleted.status_code == 204
