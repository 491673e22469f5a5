"""The speech path end to end: pjsua2 caller -> Asterisk snoop + ExternalMedia -> our RTP
receiver -> webrtcvad -> Whisper (tiny random model) -> stored transcript; barge-in; byte order;
keypad-only mode without a usable model."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from ivr.sip.audio import Pcm, band_energy_ratio, dominant_frequency, read_wav, write_tone
from ivr.sip.phone import SipStack

from conftest import RunningAsterisk
from hotline import Agents, Hotline, running_hotline, wait_until

pytestmark = [pytest.mark.asterisk, pytest.mark.model, pytest.mark.slow]


def _speech_env(model: Path, tmp: Path) -> dict[str, str]:
    start = random.randrange(47000, 49900, 100)
    return {"IVR_ASR__MODEL_DIR": str(model), "IVR_ASR__LANGUAGE": "en",
            "IVR_ASR__RTP_PORT_START": str(start), "IVR_ASR__RTP_PORT_END": str(start + 99),
            "IVR_ASR__DEBUG_AUDIO_DIR": str(tmp / "audio")}


@pytest.fixture(scope="module")
def speech_hotline(asterisk: RunningAsterisk, tiny_whisper: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hotline]:
    tmp = tmp_path_factory.mktemp("speech")
    with running_hotline(asterisk, tmp, **_speech_env(tiny_whisper, tmp)) as running:
        running.debug_audio = tmp / "audio"  # type: ignore[attr-defined]
        yield running


def _spoken(path: Path, text: str) -> tuple[Path, float, float]:
    """espeak-ng speech as 16 kHz WAV, and where the voice starts and ends in it."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)],
                   check=True)
    pcm = read_wav(path)
    frames = pcm.samples[: len(pcm.samples) // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > 0.01)
    return path, loud[0] * 0.01, (loud[-1] + 1) * 0.01


def _call_start(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["started_at"]).replace("Z", "+00:00")).timestamp()


def test_a_random_weight_model_is_named_in_ready_and_to_administrators(
        speech_hotline: Hotline, tiny_whisper: Path) -> None:
    ready = httpx.get(f"{speech_hotline.api}/ready", timeout=5).json()
    assert ready["ready"] is True  # it runs: calls are taken
    assert "random-weight test model" in ready["degraded"]["asr_model"], ready
    assert str(tiny_whisper) not in str(ready)  # no server paths on the public endpoint
    assert "asr" not in ready["degraded"]
    models = speech_hotline.get("/models", "admin").json()
    assert models["asr"] == {"name": tiny_whisper.name, "folder": str(tiny_whisper),
                             "device": "cpu", "test_model": True}
    assert speech_hotline.get("/models", "supervisor").status_code == 403


def test_spoken_utterance_is_stored_with_its_timing(speech_hotline: Hotline,
                                                     sip_stack: SipStack,
                                                     asterisk: RunningAsterisk,
                                                     artifacts: Path, tiny_whisper: Path
                                                     ) -> None:
    wav, voice_on, voice_off = _spoken(artifacts / "utterance.wav",
                                       "I have a question about my bill")
    caller = sip_stack.caller("01012345678", asterisk.pbx)
    call = caller.dial(asterisk.state.hotline_number)
    call.wait_connected()
    time.sleep(1.5)
    played_at = time.time()
    call.play(wav)
    time.sleep(2.0)
    record = speech_hotline.call(call.record.sip_call_id)
    lines: list[dict[str, object]] = []

    def stored() -> bool:
        nonlocal lines
        lines = speech_hotline.get(f"/calls/{record['call_id']}/transcript",
                                   "supervisor").json()
        return bool(lines)

    deadline = time.monotonic() + 20
    while not stored() and time.monotonic() < deadline:
        time.sleep(0.2)
    call.hangup()
    call.wait_ended()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["speaker"] == "caller"
    assert line["model"] == tiny_whisper.name
    true_start = played_at - _call_start(record) + voice_on
    true_end = played_at - _call_start(record) + voice_off
    # Within 300 ms of the played speech (VAD slack, RTP and clock granularity included).
    assert abs(float(line["start_s"]) - true_start) < 0.3, (line, true_start)  # type: ignore[arg-type]
    assert abs(float(line["end_s"]) - true_end) < 0.3, (line, true_end)  # type: ignore[arg-type]
    # The random model's words are meaningless; its result is either text or a guard's verdict.
    assert line["text"] or line["dropped_reason"]


def test_caller_speech_stops_the_greeting(speech_hotline: Hotline, sip_stack: SipStack,
                                         asterisk: RunningAsterisk, artifacts: Path) -> None:
    wav, _on, _off = _spoken(artifacts / "hello.wav", "hello, I need some help please")
    caller = sip_stack.caller("02112345678", asterisk.pbx)
    call = caller.dial(asterisk.state.hotline_number)
    call.wait_connected()
    time.sleep(1.0)
    spoke_at = time.time()
    call.play(wav)
    record = speech_hotline.wait_call(
        call.record.sip_call_id, lambda c: any(e["kind"] == "state" and
                                               e["data"].get("state") == "menu"
                                               for e in c["events"]), 20)
    call.hangup()
    call.wait_ended()
    menu_at = next(datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
                   for e in record["events"] if e["data"].get("state") == "menu")
    greeting_s = read_wav(asterisk.instance.dir / "sounds" / "zh" / "greeting.wav").seconds
    # Without barge-in the menu would start only after the whole greeting.
    assert menu_at - spoke_at < 1.5
    assert menu_at - _call_start(record) < greeting_s


def test_wire_byte_order_is_verified_with_a_tone(speech_hotline: Hotline, sip_stack: SipStack,
                                                asterisk: RunningAsterisk,
                                                artifacts: Path) -> None:
    tone = write_tone(artifacts / "tone-1000.wav", 1000.0, 1.5, amplitude=0.3)
    caller = sip_stack.caller("02012345678", asterisk.pbx)
    call = caller.dial(asterisk.state.hotline_number)
    call.wait_connected()
    time.sleep(0.5)
    call.play(tone)
    sip_id = call.record.sip_call_id
    call.hangup()
    call.wait_ended()
    record = speech_hotline.wait_call(sip_id, lambda c: c["state"] == "ended", 20)
    audio = speech_hotline.debug_audio / f"{record['call_id']}-caller.s16le"  # type: ignore[attr-defined]
    raw = np.frombuffer(audio.read_bytes(), dtype="<i2").astype(np.float64) / 32768.0
    pcm = Pcm(raw, 16000)
    # Read with the wrong byte order, a clean tone turns into broadband noise.
    assert abs(dominant_frequency(pcm) - 1000.0) < 15.0
    assert band_energy_ratio(pcm, 1000.0) > 0.7


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_without_a_usable_model_calls_go_on_keypad_only(
        problem: str, asterisk: RunningAsterisk, sip_stack: SipStack, tmp_path: Path,
        tiny_whisper: Path, speech_hotline: Hotline) -> None:
    model = tmp_path / "whisper-broken"
    if problem == "corrupt":
        model.mkdir()
        for item in tiny_whisper.iterdir():
            (model / item.name).write_bytes(item.read_bytes())
        (model / "model.bin").write_bytes(os.urandom(4096))
    speech_hotline.stop()
    try:
        with running_hotline(asterisk, tmp_path, **_speech_env(model, tmp_path)) as keypad:
            ready = httpx.get(f"{keypad.api}/ready", timeout=5)
            assert ready.status_code == 200
            assert "keypad only" in ready.json()["degraded"]["asr"]
            caller = sip_stack.caller("01012345678", asterisk.pbx)
            call = caller.dial(asterisk.state.hotline_number)
            call.wait_connected()
            time.sleep(1.0)
            call.send_dtmf("6")
            record = keypad.wait_call(call.record.sip_call_id,
                                      lambda c: c["intent"] is not None, 20)
            call.hangup()
            call.wait_ended()
            assert record["intent"] == "ticket_status"
    finally:
        speech_hotline.start()


def test_agent_leg_is_transcribed_too(speech_hotline: Hotline, sip_stack: SipStack,
                                      asterisk: RunningAsterisk, artifacts: Path) -> None:
    speech, _on, _off = _spoken(artifacts / "agent.wav", "thank you for calling, how can I help")
    team = Agents(sip_stack, asterisk, artifacts)
    try:
        team.register("north", play=speech)
        caller = sip_stack.caller("01066667777", asterisk.pbx)
        call = caller.dial(asterisk.state.hotline_number)
        call.wait_connected()
        time.sleep(1.0)
        call.send_dtmf("1")
        record = speech_hotline.wait_call(call.record.sip_call_id,
                                          lambda c: c["state"] == "connected", 40)
        url = f"/calls/{record['call_id']}/transcript"
        wait_until(lambda: any(line["speaker"] == "agent"
                               for line in speech_hotline.get(url, "supervisor").json()), 20,
                   "an utterance of the agent in the transcript")
        call.hangup()
        call.wait_ended()
        lines = speech_hotline.get(url, "supervisor").json()
        connected_s = (datetime.fromisoformat(record["connected_at"].replace("Z", "+00:00"))
                       .timestamp() - _call_start(record))
        agent_lines = [line for line in lines if line["speaker"] == "agent"]
        assert all(line["start_s"] >= connected_s - 0.5 for line in agent_lines)
    finally:
        team.close()
