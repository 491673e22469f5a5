"""What supervisors and administrators do to live calls, through the real Asterisk:
listen / whisper / barge from their own SIP phone (ARI snoop), and a routing change over REST
that the very next call follows (a stale write is refused, the history shows the diff)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ivr.sip.audio import Pcm, band_energy_ratio, read_wav, write_pcm, write_tone
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


# -- listening in from the browser: the console's audio WebSocket -----------------------------


class BrowserEar:
    """What the console does, from Python: the audio socket of one monitor, with the
    supervisor's voice sent in real time on a thread and everything heard kept."""

    def __init__(self, hotline: Hotline, call_id: str, mode: str, role: str = "supervisor",
                 voice: Path | None = None) -> None:
        from websockets.sync.client import connect

        url = hotline.api.replace("http://", "ws://") + f"/calls/{call_id}/listen"
        self._exit = contextlib.ExitStack()
        self.socket = self._exit.enter_context(connect(url, open_timeout=5, max_size=2**20))
        self.socket.send(json.dumps({"type": "auth", "token": hotline.token(role),
                                     "mode": mode}))
        self.heard = bytearray()
        self.texts: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self._voice = read_wav(voice).samples if voice is not None else None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._receive, daemon=True)]
        if self._voice is not None:
            self._threads.append(threading.Thread(target=self._speak, daemon=True))
        for thread in self._threads:
            thread.start()

    def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self.socket:
                if isinstance(message, bytes):
                    self.heard += message
                else:
                    self.texts.append(json.loads(message))
        except ConnectionClosed:
            pass
        rcvd = self.socket.protocol.close_rcvd
        self.closed = (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")

    def _speak(self) -> None:
        from websockets.exceptions import ConnectionClosed

        assert self._voice is not None
        pcm = (self._voice * 32767).astype("<i2").tobytes()
        frame, at, started = 320, 0, time.monotonic()
        while not self._stop.is_set() and self.closed is None:
            chunk = pcm[at % len(pcm):at % len(pcm) + frame]
            try:
                self.socket.send(chunk)
            except ConnectionClosed:
                return
            at += frame
            sent_s = at / 16000
            time.sleep(max(0.0, started + sent_s - time.monotonic()))

    def last(self, seconds: float) -> Pcm:
        samples = np.frombuffer(bytes(self.heard), dtype="<i2").astype(np.float64) / 32768
        return _last(Pcm(samples, 8000), seconds)

    def wait_closed(self, timeout: float = 10.0) -> tuple[int, str]:
        wait_until(lambda: self.closed is not None, timeout, "the monitor socket to close")
        assert self.closed is not None
        return self.closed

    def close(self) -> None:
        self._stop.set()
        self._exit.close()
        for thread in self._threads:
            thread.join(5)


def test_supervisor_whispers_from_the_browser_socket(
        hotline: Hotline, agents: Agents, sip_stack: SipStack, asterisk: RunningAsterisk,
        artifacts: Path) -> None:
    """The console's path without the browser: the supervisor hears caller and agent over the
    socket; what they send is heard by the agent only; the call ending closes the socket."""
    agents.register("east", tone_hz=AGENT_HZ)
    call = dial_and_press(sip_stack, asterisk, "02166662222", "1",
                          record=artifacts / "caller-browser.wav")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "connected", 40)
    voice = write_tone(artifacts / "supervisor-voice.wav", SUPERVISOR_HZ, 1.0, rate=8000)
    ear = BrowserEar(hotline, record["call_id"], "whisper", voice=voice)
    try:
        wait_until(lambda: bool(ear.texts), 10, "the monitor to start")
        started = ear.texts[0]
        assert started["type"] == "started" and started["mode"] == "whisper"
        assert started["target"] == "agent" and started["rate"] == 8000
        call.play(write_tone(artifacts / "caller-tone.wav", CALLER_HZ, 5.0))  # 5 s, waited for
        agent_leg = agents.phones[0].active[-1]
        call.hangup()
        call.wait_ended()
        assert ear.wait_closed() == (1000, "call ended")
        call.wait_released()
        agent_leg.wait_released()
    finally:
        ear.close()
    heard = ear.last(3.0)
    write_pcm(artifacts / "heard-in-browser.wav", bytes(ear.heard), 8000)
    assert heard.seconds > 2.5  # audio kept coming, 20 ms at a time
    assert band_energy_ratio(heard, CALLER_HZ) > 0.05
    assert band_energy_ratio(heard, AGENT_HZ) > 0.05
    heard_by_agent = _last(read_wav(agents.phones[0].calls[-1].recording), 3.0)  # type: ignore[arg-type]
    heard_by_caller = _last(read_wav(artifacts / "caller-browser.wav"), 3.0)
    assert band_energy_ratio(heard_by_agent, SUPERVISOR_HZ) > 0.05
    assert band_energy_ratio(heard_by_caller, SUPERVISOR_HZ) < 0.01
    ended = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "ended")
    started_events = [e["data"] for e in ended["events"] if e["kind"] == "monitor_started"]
    assert len(started_events) == 1 and started_events[0]["phone"] == "browser"
    assert started_events[0]["mode"] == "whisper"
    assert started_events[0]["by"].startswith("test-supervisor (supervisor")
    hotline.assert_nothing_left()


def test_browser_monitor_refusals_and_bad_frames(hotline: Hotline, agents: Agents,
                                                 sip_stack: SipStack,
                                                 asterisk: RunningAsterisk) -> None:
    call = dial_and_press(sip_stack, asterisk, "02166663333", "")
    record = hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "menu", 30)
    call_id = record["call_id"]
    try:
        refusals = {
            "no such call": (BrowserEar(hotline, "no-such-call", "listen"), 4404),
            "whisper before an agent": (BrowserEar(hotline, call_id, "whisper"), 4409),
            "unknown mode": (BrowserEar(hotline, call_id, "shout"), 4422),
            "agent role": (BrowserEar(hotline, call_id, "listen", role="agent"), 4403),
        }
        for what, (ear, code) in refusals.items():
            assert ear.wait_closed()[0] == code, what
            ear.close()
        # Listening before an agent answers hears the caller's leg; audio sent in listen
        # mode is not forwarded, and the supervisor is told so once.
        ear = BrowserEar(hotline, call_id, "listen")
        wait_until(lambda: bool(ear.texts), 10, "the monitor to start")
        assert ear.texts[0]["target"] == "caller"
        ear.socket.send(b"\x00\x00" * 160)
        ear.socket.send(b"\x00\x00" * 160)
        wait_until(lambda: len(ear.texts) >= 2, 5, "the listen-mode error")
        assert ear.texts[1]["type"] == "error" and "listen mode" in ear.texts[1]["message"]
        wait_until(lambda: len(ear.heard) > 16000, 10, "the caller's leg to be heard")
        ear.socket.send(b"\x00" * 321)  # not whole samples
        code, reason = ear.wait_closed()
        assert code == 4400 and "16-bit" in reason
        ear.close()
        # The monitor went with the socket; the call goes on untouched.
        wait_until(lambda: any(e["kind"] == "monitor_ended"
                               for e in hotline.call(call_id)["events"]), 10, "monitor_ended")
        assert hotline.call(call_id)["state"] == "menu"
        channels = hotline.ari_get(f"/applications/{asterisk.state.ari_app}")["channel_ids"]
        assert len(channels) == 1  # the caller's own channel only
    finally:
        call.hangup()
        call.wait_ended()
    hotline.assert_nothing_left()


def test_ivr_supervisor_runs_a_desk_phone_that_monitors_answer(
        hotline: Hotline, agents: Agents, sip_stack: SipStack, asterisk: RunningAsterisk,
        artifacts: Path) -> None:
    """`ivr supervisor --phone supervisor-1`: the desk phone a listen request rings."""
    import signal
    import subprocess
    import sys

    unknown = subprocess.run([sys.executable, "-m", "ivr.cli", "supervisor", "--phone",
                              "agent-east-1"], env=hotline.env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert unknown.returncode == 1
    assert "no supervisor phone 'agent-east-1' (configured: supervisor-1" in unknown.stderr
    records = artifacts / "supervisor-desk"
    proc = subprocess.Popen([sys.executable, "-m", "ivr.cli", "supervisor", "--phone",
                             "supervisor-1", "--answer-after", "0.2", "--record-dir",
                             str(records)], env=hotline.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"agent_id": "supervisor-1",
                                                      "registered": True}
        agents.register("east", tone_hz=AGENT_HZ)
        call = dial_and_press(sip_stack, asterisk, "02166664444", "1")
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40)
        started = httpx.post(f"{hotline.api}/calls/{record['call_id']}/monitor",
                             json={"mode": "listen", "phone": "supervisor-1"},
                             headers=hotline.headers("supervisor"), timeout=5)
        assert started.status_code == 202, started.text
        time.sleep(1.0)
        call.play(write_tone(artifacts / "caller-tone.wav", CALLER_HZ, 3.0))
        call.hangup()
        call.wait_ended()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1]) == {
        "monitors_answered": {"supervisor-1": 1}}
    heard = _last(read_wav(next(records.glob("supervisor-1-*.wav"))), 2.0)
    assert band_energy_ratio(heard, CALLER_HZ) > 0.05
    assert band_energy_ratio(heard, AGENT_HZ) > 0.05
