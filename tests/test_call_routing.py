"""Calls through the whole product: real Asterisk, `ivr serve`, pjsua2 callers and agents.

Each test asserts the route it observed (which agent phone rang), the audio both sides heard, and
the call record the API returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.sip.audio import Pcm, band_energy_ratio, read_wav, write_tone
from ivr.sip.phone import SipStack

from conftest import RunningAsterisk
from hotline import Agents, Hotline, dial_and_press, running_hotline

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]


@pytest.fixture(scope="module")
def hotline(asterisk: RunningAsterisk, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Hotline]:
    with running_hotline(asterisk, tmp_path_factory.mktemp("hotline")) as running:
        yield running


def _tail(pcm: Pcm, seconds: float, skip_end: float = 0.2) -> Pcm:
    end = len(pcm.samples) - int(skip_end * pcm.rate)
    return Pcm(pcm.samples[max(0, end - int(seconds * pcm.rate)):end], pcm.rate)


@pytest.mark.parametrize(("number", "region"), [
    ("01012345678", "north"), ("02112345678", "east"), ("02012345678", "south"),
    ("13800210000", "east"),
])
def test_keypad_call_reaches_an_agent_of_the_callers_region(
        number: str, region: str, hotline: Hotline, agents: Agents, sip_stack: SipStack,
        asterisk: RunningAsterisk, artifacts: Path) -> None:
    phones = {r: agents.register(r) for r in ("north", "east", "south", "west")}
    caller_tone = write_tone(artifacts / "caller-440.wav", 440.0, 2.5)
    call = dial_and_press(sip_stack, asterisk, number, "1", record=artifacts / "caller.wav")
    sip_call_id = call.record.sip_call_id
    record = hotline.wait_call(sip_call_id, lambda c: c["state"] == "connected", 40,
                               "the caller to be connected to an agent")
    call.play(caller_tone)
    call.hangup()
    call.wait_ended()
    call.wait_released()
    record = hotline.wait_call(sip_call_id, lambda c: c["state"] == "ended")

    # Route: the phone of the expected region rang, and only that one.
    rang = [r for r, phone in phones.items() if phone.calls]
    assert rang == [region]
    agent_phone = phones[region]
    agent_phone.active[-1].wait_released()
    assert record["region"] == region
    assert record["route"] == {"region": region, "agent_id": agent_phone.agent_id}
    assert record["intent"] == "billing" and record["intent_source"] == "keypad"
    assert record["menu_path"] == ["1"]
    assert record["route_rule_id"] == "test-default"
    assert record["overflow"] is False
    assert record["hangup_cause"] == "caller_hangup:connected"
    assert record["answered_at"] and record["queued_at"] and record["connected_at"]
    kinds = [e["kind"] for e in record["events"]]
    for expected in ("call_started", "answered", "routed", "queued", "agent_ringing",
                     "connected", "ended"):
        assert expected in kinds
    # From Asterisk's time of the key press to the stored decision (the load figure).
    routed = next(e for e in record["events"] if e["kind"] == "routed")["data"]
    assert 0 < routed["after_key_ms"] < 5000, routed
    lag = {line.split('quantile="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
           for line in hotline.get("/../../metrics", "supervisor").text.splitlines()
           if line.startswith("ivr_ari_event_lag_seconds{")}
    assert set(lag) == {"0.5", "0.95", "0.99", "1"} and 0 <= lag["0.5"] <= lag["1"] < 5

    # Audio: each side heard the other.
    agent_heard = read_wav(agent_phone.calls[-1].recording)  # type: ignore[arg-type]
    assert band_energy_ratio(agent_heard, 440.0) > 0.5, "agent did not hear the caller"
    caller_heard = _tail(read_wav(artifacts / "caller.wav"), 2.0)
    assert band_energy_ratio(caller_heard, 880.0) > 0.5, "caller did not hear the agent"


def test_busy_region_overflows_to_another_region(hotline: Hotline, agents: Agents,
                                                 sip_stack: SipStack,
                                                 asterisk: RunningAsterisk) -> None:
    north = agents.register("north")
    first = dial_and_press(sip_stack, asterisk, "01011110000", "1")
    hotline.wait_call(first.record.sip_call_id, lambda c: c["state"] == "connected", 40)
    west = agents.register("west")
    second = dial_and_press(sip_stack, asterisk, "01022220000", "1")
    record = hotline.wait_call(second.record.sip_call_id,
                               lambda c: c["state"] == "connected", 40,
                               "the second caller to overflow")
    assert record["region"] == "north"
    assert record["overflow"] is True
    assert record["route"] == {"region": "west", "agent_id": "agent-west-1"}
    overflow = next(e for e in record["events"] if e["kind"] == "overflow")
    assert overflow["data"]["after_s"] >= 4.0  # the rule's overflow wait
    assert len(north.calls) == 1 and len(west.calls) == 1
    for call in (first, second):
        call.hangup()
        call.wait_ended()


def test_agent_who_does_not_answer_is_skipped(hotline: Hotline, agents: Agents,
                                              sip_stack: SipStack,
                                              asterisk: RunningAsterisk) -> None:
    sleepy = agents.register("south", 1, answer_after_s=60.0)  # longest idle: rings first
    time.sleep(0.3)
    awake = agents.register("south", 2)
    call = dial_and_press(sip_stack, asterisk, "02033334444", "2")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "connected",
                               40, "the second agent to answer")
    assert record["route"] == {"region": "south", "agent_id": "agent-south-2"}
    assert record["intent"] == "product_info"
    missed = [e for e in record["events"] if e["kind"] == "agent_missed"]
    assert [m["data"]["agent_id"] for m in missed] == ["agent-south-1"]
    assert missed[0]["data"]["reason"] == "no_answer"
    assert len(sleepy.calls) == 1 and sleepy.calls[0].connected_at is None
    assert len(awake.calls) == 1
    call.hangup()
    call.wait_ended()


def test_agent_phone_that_declines_is_a_missed_no_answer(hotline: Hotline, agents: Agents,
                                                        sip_stack: SipStack,
                                                        asterisk: RunningAsterisk) -> None:
    """A phone on do-not-disturb answers 480; Asterisk reports Q.850 cause 19 ("User alerting,
    no answer"), the same cause its own dial timeout gives: both are our ``no_answer``."""
    agents.register("south", 1, reject_with=480)  # longest idle: rings first
    time.sleep(0.3)
    agents.register("south", 2)
    call = dial_and_press(sip_stack, asterisk, "02033335555", "2")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "connected",
                               40, "the second agent to answer")
    assert record["route"] == {"region": "south", "agent_id": "agent-south-2"}
    missed = [e["data"] for e in record["events"] if e["kind"] == "agent_missed"]
    assert missed == [{"agent_id": "agent-south-1", "reason": "no_answer"}]
    call.hangup()
    call.wait_ended()


def test_no_agents_registered_offers_a_callback(hotline: Hotline, agents: Agents,
                                                sip_stack: SipStack,
                                                asterisk: RunningAsterisk) -> None:
    call = dial_and_press(sip_stack, asterisk, "02855556666", "4")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "callback",
                               40, "the callback offer")
    time.sleep(1.0)
    call.send_dtmf("13912345678#")
    call.wait_ended(timeout=40)
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
    assert record["region"] == "west"
    assert record["intent"] == "technical_fault"
    assert record["callback_number"] == "13912345678"
    assert record["hangup_cause"] == "callback_requested"
    # Caller and callback numbers are sealed at rest, in every spelling they could take.
    hotline.assert_not_stored("13912345678", "+8613912345678", "02855556666", "+862855556666",
                              "2855556666")
    offered = next(e for e in record["events"] if e["kind"] == "callback_offered")
    assert offered["data"]["reason"] == "no_agents"


@pytest.mark.parametrize("moment", ["greeting", "queued", "ringing_agent"])
def test_caller_hangs_up_and_nothing_is_left(moment: str, hotline: Hotline, agents: Agents,
                                             sip_stack: SipStack,
                                             asterisk: RunningAsterisk) -> None:
    blocker = None
    if moment == "queued":
        agents.register("east")
        blocker = dial_and_press(sip_stack, asterisk, "02100000001", "1")
        hotline.wait_call(blocker.record.sip_call_id, lambda c: c["state"] == "connected", 40)
    elif moment == "ringing_agent":
        agents.register("east", answer_after_s=60.0)
    call = dial_and_press(sip_stack, asterisk, "02100000002",
                          "" if moment == "greeting" else "1")
    hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == moment, 40,
                      f"the call to be in state {moment}")
    time.sleep(0.5)
    call.hangup()
    call.wait_ended()
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
    assert record["hangup_cause"] == f"caller_hangup:{moment}"
    assert record["hangup_by"] == "caller"
    if blocker is not None:
        blocker.hangup()
        blocker.wait_ended()
    if moment == "ringing_agent":
        ringing = agents.phones[0].active[-1]
        ringing.wait_ended()  # the agent's phone stopped ringing
    hotline.assert_nothing_left()


@pytest.mark.parametrize(("number", "reason"), [
    ("anonymous", "withheld"), ("12ab", "malformed"), ("", "withheld"),
])
def test_withheld_or_malformed_number_goes_to_the_default_region(
        number: str, reason: str, hotline: Hotline, sip_stack: SipStack,
        asterisk: RunningAsterisk) -> None:
    caller = sip_stack.caller(number or "anonymous", asterisk.pbx)
    call = caller.dial(asterisk.state.hotline_number)
    call.wait_connected()
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "greeting")
    call.hangup()
    call.wait_ended()
    assert record["region"] == "east"
    assert record["region_source"] == "default"
    assert reason in record["region_reason"]


def test_controller_killed_mid_queue_resumes_the_calls(
        asterisk: RunningAsterisk, sip_stack: SipStack, tmp_path: Path, artifacts: Path,
        hotline: Hotline) -> None:
    team = Agents(sip_stack, asterisk, artifacts)
    # The module's controller must not compete for these calls.
    hotline.stop()
    try:
        with running_hotline(asterisk, tmp_path) as own:
            team.register("north")
            talking = dial_and_press(sip_stack, asterisk, "01077770000", "1")
            own.wait_call(talking.record.sip_call_id, lambda c: c["state"] == "connected", 40)
            waiting = dial_and_press(sip_stack, asterisk, "01088880000", "7")
            before = own.wait_call(waiting.record.sip_call_id,
                                   lambda c: c["state"] == "queued", 40)
            own.kill()
            time.sleep(1.0)
            own.start()
            resumed = own.wait_call(waiting.record.sip_call_id,
                                    lambda c: any(e["kind"] == "reconciled"
                                                  for e in c["events"]), 20)
            assert resumed["state"] == "queued"
            talking_record = own.call(talking.record.sip_call_id)
            assert any(e["kind"] == "reconciled" and e["data"]["action"] == "resume_connected"
                       for e in talking_record["events"])
            # The agent finishes the first call; the waiting caller gets them.
            talking.hangup()
            talking.wait_ended()
            after = own.wait_call(waiting.record.sip_call_id,
                                  lambda c: c["state"] == "connected", 40,
                                  "the resumed caller to reach the agent")
            assert after["route"] == {"region": "north", "agent_id": "agent-north-1"}
            assert after["intent"] == "complaint"
            kinds = [e["kind"] for e in after["events"]]
            # Nothing recorded before the crash was lost.
            assert kinds[:len(before["events"])] == [e["kind"] for e in before["events"]]
            reconciled = next(e for e in after["events"] if e["kind"] == "reconciled")
            assert reconciled["data"]["action"] == "resume_queue"
            waiting.hangup()
            waiting.wait_ended()
            own.wait_call(waiting.record.sip_call_id, lambda c: c["state"] == "ended")
            own.assert_nothing_left()
    finally:
        team.close()
        hotline.start()
