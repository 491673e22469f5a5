"""Real SIP calls: pjsua2 phones through a real Asterisk, checked by what was heard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ivr.ari.client import AriClient
from ivr.ari.events import ChannelDtmfReceived, StasisEnd, StasisStart
from ivr.sip.audio import band_energy_ratio, dominant_frequency, read_wav, rms_dbfs, write_tone
from ivr.sip.phone import AgentOptions, SipStack

from conftest import EventTap, RunningAsterisk

pytestmark = pytest.mark.asterisk


def test_caller_records_the_line_check_tone(asterisk: RunningAsterisk, sip_stack: SipStack,
                                             artifacts: Path) -> None:
    caller = sip_stack.caller("02112345678", asterisk.pbx)
    recording = artifacts / "heard.wav"
    call = caller.dial("4008109901", record_to=recording)
    call.wait_connected()
    import time

    time.sleep(2.0)
    call.hangup()
    call.wait_ended()
    call.wait_released()
    pcm = read_wav(recording)
    assert pcm.seconds > 1.5
    assert rms_dbfs(pcm) > -20.0, "the tone should be loud"
    assert abs(dominant_frequency(pcm, skip_s=0.2) - 1004.0) < 15.0
    assert band_energy_ratio(read_wav(recording), 1004.0) > 0.8


async def test_stasis_app_sees_caller_number_and_dtmf(asterisk: RunningAsterisk,
                                                       sip_stack: SipStack) -> None:
    async with AriClient(asterisk.state.ari()) as ari:
        tap = EventTap(await ari.subscribe())
        try:
            caller = sip_stack.caller("01012345678", asterisk.pbx)
            call = caller.dial("4008101111")
            start = await tap.next(StasisStart)
            assert start.channel.caller_number == "01012345678"
            assert start.channel.dialplan_exten == "4008101111"
            await ari.request("POST", f"/channels/{start.channel.id}/answer")
            await asyncio.to_thread(call.wait_connected)
            sender = asyncio.create_task(asyncio.to_thread(call.send_dtmf, "1234#"))
            digits = [
                (await tap.next(ChannelDtmfReceived, where=lambda e: e.channel.id
                                == start.channel.id)).digit
                for _ in range(5)
            ]
            await sender
            assert "".join(digits) == "1234#"
            await asyncio.to_thread(call.hangup)
            end = await tap.next(StasisEnd)
            assert end.channel.id == start.channel.id
        finally:
            await tap.aclose()


async def test_caller_and_agent_bridged_hear_each_other(asterisk: RunningAsterisk,
                                                        sip_stack: SipStack,
                                                        artifacts: Path) -> None:
    caller_tone = write_tone(artifacts / "caller-440.wav", 440.0, 3.0)
    agent_tone = write_tone(artifacts / "agent-880.wav", 880.0, 1.0)
    account = next(a for a in asterisk.state.agents if a.region == "east")
    agent = sip_stack.agent(account.agent_id, account.password, asterisk.pbx,
                            AgentOptions(answer_after_s=0.3, record_dir=artifacts,
                                         play=agent_tone))
    await asyncio.to_thread(agent.wait_registered)
    async with AriClient(asterisk.state.ari()) as ari:
        tap = EventTap(await ari.subscribe())
        bridge_id = None
        try:
            caller = sip_stack.caller("02161234567", asterisk.pbx)
            call = caller.dial("4008101111", record_to=artifacts / "caller-heard.wav")
            start = await tap.next(StasisStart)
            await ari.request("POST", f"/channels/{start.channel.id}/answer")
            await asyncio.to_thread(call.wait_connected)
            agent_channel = await ari.request(
                "POST", "/channels", params={"endpoint": f"PJSIP/{account.agent_id}",
                                             "app": asterisk.state.ari_app, "appArgs": "agent"})
            agent_start = await tap.next(StasisStart, where=lambda e: e.args == ("agent",))
            assert agent_start.channel.id == agent_channel["id"]
            bridge = await ari.request("POST", "/bridges", params={"type": "mixing"})
            bridge_id = bridge["id"]
            await ari.request("POST", f"/bridges/{bridge_id}/addChannel",
                              params={"channel": f"{start.channel.id},{agent_channel['id']}"})
            await asyncio.to_thread(call.play, caller_tone)
            await asyncio.to_thread(call.hangup)
            # Hanging up the caller: the controller tears down the agent leg and the bridge.
            await ari.request("DELETE", f"/channels/{agent_channel['id']}")
            await asyncio.to_thread(agent.active[-1].wait_ended)
            await asyncio.to_thread(agent.active[-1].wait_released)
            await asyncio.to_thread(call.wait_released)
        finally:
            if bridge_id:
                await ari.request("DELETE", f"/bridges/{bridge_id}")
            await tap.aclose()
            # Unregister: a phone left registered would answer later tests' calls.
            await asyncio.to_thread(agent.close)
    agent_heard = read_wav(agent.calls[-1].recording)  # type: ignore[arg-type]
    caller_heard = read_wav(artifacts / "caller-heard.wav")
    assert abs(dominant_frequency(agent_heard) - 440.0) < 10.0
    assert band_energy_ratio(agent_heard, 440.0) > 0.6
    assert abs(dominant_frequency(caller_heard) - 880.0) < 10.0
    assert band_energy_ratio(caller_heard, 880.0) > 0.6


def test_phones_made_from_many_threads_never_exceed_the_account_slots(
        sip_stack: SipStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """pjsua aborts the whole process on one account too many; phones made at once from
    several threads (the cluster and load tests do) share the slots under a lock, retiring
    idle callers, and the last guard raises instead of aborting."""
    import threading

    from ivr.sip import phone as phone_module

    # Room for four more accounts than are in use now (idle callers of earlier tests retired
    # first), never more than the real limit.
    with sip_stack._slots:  # noqa: SLF001 - the slots are what is tested
        for key in [k for k, p in sip_stack._callers.items() if p.idle()]:  # noqa: SLF001
            sip_stack._callers.pop(key).close()  # noqa: SLF001
    limit = min(len(sip_stack._accounts) + 4, phone_module.MAX_ACCOUNTS)  # noqa: SLF001
    monkeypatch.setattr(phone_module, "MAX_ACCOUNTS", limit)
    barrier = threading.Barrier(12)
    errors: list[BaseException] = []

    def make(index: int) -> None:
        barrier.wait()
        try:
            sip_stack.caller(f"0105555{index:04d}", "127.0.0.1:9")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(sip_stack._accounts) < limit  # noqa: SLF001
