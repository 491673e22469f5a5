"""Asterisk on an address other than loopback: ARI, SIP and the calls' audio still meet.

The test gives this host an address of its own (10.x, not loopback), runs Asterisk bound to
that address only, and points the controller at it: ARI by that address, and
``IVR_ASR__MEDIA_HOST`` telling Asterisk where to send each listened leg's audio. A caller's
spoken words must reach the recogniser and be stored.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.sip.phone import SipStack

from conftest import RunningAsterisk, make_test_settings, run_asterisk
from hotline import running_hotline, wait_until

pytestmark = [pytest.mark.asterisk, pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A 10.x address of this module's own, added to this host and removed afterwards."""
    ip = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"
    made = subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True,
                          text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot add an address here ({made.stderr.strip()}); needs root or "
                    "CAP_NET_ADMIN and iproute2 (scripts/host_packages)")
    try:
        yield ip
    finally:
        subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], check=False)


@pytest.fixture(scope="module")
def far_pbx(address: str) -> Iterator[RunningAsterisk]:
    """Asterisk bound to ``address`` only (SIP, ARI, media)."""
    yield from run_asterisk(make_test_settings(address=address))


def test_speech_arrives_from_a_pbx_on_another_address(
        far_pbx: RunningAsterisk, address: str, sip_stack: SipStack, tiny_whisper: Path,
        tmp_path: Path, artifacts: Path) -> None:
    assert far_pbx.state.ari().base_url.startswith(f"http://{address}:")
    start = random.randrange(47000, 49900, 100)
    wav = artifacts / "utterance.wav"
    raw = wav.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), "I have a question about my "
                    "bill"], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)],
                   check=True)
    with running_hotline(far_pbx, tmp_path, IVR_ASR__MODEL_DIR=str(tiny_whisper),
                         IVR_ASR__LANGUAGE="en", IVR_ASR__MEDIA_HOST=address,
                         IVR_ASR__RTP_PORT_START=str(start),
                         IVR_ASR__RTP_PORT_END=str(start + 99)) as hotline:
        caller = sip_stack.caller("01012345678", far_pbx.pbx)
        call = caller.dial(far_pbx.state.hotline_number)
        call.wait_connected()
        time.sleep(1.5)
        call.play(wav)
        record = hotline.call(call.record.sip_call_id)
        lines: list[dict[str, object]] = []

        def stored() -> bool:
            nonlocal lines
            lines = hotline.get(f"/calls/{record['call_id']}/transcript", "supervisor").json()
            return bool(lines)

        wait_until(stored, 25, "the caller's words in the transcript")
        call.hangup()
        call.wait_ended()
        assert lines[0]["speaker"] == "caller"
        assert lines[0]["model"] == tiny_whisper.name
        events = [e["kind"] for e in hotline.call(call.record.sip_call_id)["events"]]
        assert "speech_unavailable" not in events
        hotline.assert_nothing_left()
