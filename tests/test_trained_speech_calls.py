"""Speech out of the box, through Asterisk: the service started as a fresh clone starts it (no
model configured: the shipped Whisper base), pjsua2 callers who speak and never press a key.

Mandarin and English requests reach their intent and the caller's region; an English caller
in the default Mandarin menu is heard in English; a caller who says nothing, and a line that
plays music, leave no transcript text behind.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ivr.sip.phone import SipStack

from conftest import RunningAsterisk
from hotline import Hotline, running_hotline

pytestmark = [pytest.mark.asterisk, pytest.mark.model, pytest.mark.slow]

MOH = Path("/usr/share/asterisk/moh")


@pytest.fixture(scope="module")
def hotline(asterisk: RunningAsterisk, trained_whisper: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hotline]:
    tmp = tmp_path_factory.mktemp("trained")
    start = random.randrange(44000, 44900, 100)
    # No IVR_ASR__MODEL_DIR and the default language settings: what `make run` does.
    env = {"IVR_ASR__ENABLED": "true", "IVR_ASR__RTP_PORT_START": str(start),
           "IVR_ASR__RTP_PORT_END": str(start + 99), "IVR_FLOW__MENU_TIMEOUT_S": "8"}
    with running_hotline(asterisk, tmp, **env) as running:
        yield running


def _line_audio(item: Any, folder: Path, out: Path) -> Path:
    """A spoken request (8 kHz telephone line) as the 16 kHz WAV the phone plays."""
    subprocess.run(["sox", str(folder / item.wav), "-r", "16000", str(out)], check=True)
    return out


def _transcript(hotline: Hotline, call_id: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = hotline.get(f"/calls/{call_id}/transcript",
                                              "supervisor").json()
    return lines


def test_ready_without_speech_degradation(hotline: Hotline, trained_whisper: Path) -> None:
    ready = httpx.get(f"{hotline.api}/ready", timeout=5).json()
    assert "asr" not in ready["degraded"] and "vad" not in ready["degraded"], ready
    assert "asr_model" not in ready["degraded"], ready  # a trained model, not a test model
    assert "asr engine loaded" in hotline.log_tail(200)
    assert trained_whisper.name in hotline.log_tail(200)
    models = hotline.get("/models", "admin").json()
    assert models["asr"]["folder"] == str(trained_whisper)
    assert models["asr"]["device"] == "cpu" and models["asr"]["test_model"] is False


@pytest.mark.parametrize(("text", "language", "number", "region"), [
    # Through a call the audio differs a little each time (where the onset is cut, RTP
    # timing); 我想查一下我的账单 came back as 账单, 参谈, 炸弹 or 简单 across runs, the last of
    # which reads as ticket_status, so the test uses a request the model hears steadily
    # (accuracy over the whole set is a benchmark figure, README).
    ("帮我看一下上个月的消费", "zh", "01012345678", "north"),
    ("I want to check my bill", "en", "02012345678", "south"),
])
def test_spoken_request_routes_by_intent_and_region(
        hotline: Hotline, sip_stack: SipStack, asterisk: RunningAsterisk, artifacts: Path,
        spoken_set: tuple[Path, list[Any]], text: str, language: str, number: str,
        region: str) -> None:
    folder, items = spoken_set
    item = next(i for i in items if i.text.lower() == text.lower() and i.language == language)
    wav = _line_audio(item, folder, artifacts / f"request-{language}.wav")
    call = sip_stack.caller(number, asterisk.pbx).dial(asterisk.state.hotline_number)
    call.wait_connected()
    time.sleep(1.5)  # into the (Mandarin) greeting: the caller talks over it
    call.play(wav)
    record = hotline.wait_call(call.record.sip_call_id,
                               lambda c: c["route_decision"] is not None, 40)
    call.hangup()
    call.wait_ended()
    assert record["intent"] == "billing", _transcript(hotline, record["call_id"])
    assert record["intent_source"] == "speech"
    assert record["region"] == region and record["route_decision"]["region"] == region
    lines = [line for line in _transcript(hotline, record["call_id"]) if line["text"]]
    assert lines and all(line["language"] == language for line in lines), lines
    # What the caller said is sealed at rest (the API opens it for those who may read it).
    hotline.assert_not_stored(*(line["text"] for line in lines), number)


@pytest.mark.parametrize("line", ["silence", "music"])
def test_no_phantom_transcript(hotline: Hotline, sip_stack: SipStack,
                               asterisk: RunningAsterisk, artifacts: Path, line: str) -> None:
    call = sip_stack.caller("02112345678", asterisk.pbx).dial(asterisk.state.hotline_number)
    call.wait_connected()
    if line == "music":
        music = sorted(MOH.glob("*.wav"))
        assert music, "asterisk-moh-opsound-wav not installed (make setup installs it)"
        wav = artifacts / "music.wav"
        subprocess.run(["sox", str(music[0]), "-r", "16000", "-c", "1", str(wav), "trim", "0",
                        "10", "vol", "0.3"], check=True)
        call.play(wav)
    time.sleep(10)
    sip_id = call.record.sip_call_id
    call.hangup()
    call.wait_ended()
    record = hotline.wait_call(sip_id, lambda c: c["state"] == "ended", 20)
    heard = [entry for entry in _transcript(hotline, record["call_id"]) if entry["text"]]
    assert heard == [], heard
    assert record["intent_source"] != "speech"
