"""Account-security calls through Asterisk: the one-time code (tier 1) decides the route."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ivr.sip.phone import SipStack

from conftest import RunningAsterisk
from hotline import Hotline, dial_and_press, running_hotline

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]


@pytest.fixture(scope="module")
def hotline(asterisk: RunningAsterisk, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Hotline]:
    # Two codes per account per hour here, so that the third call of one account shows the
    # limit (the other tests use one account each, once).
    with running_hotline(asterisk, tmp_path_factory.mktemp("verify"),
                         IVR_SECURITY__CODE_SENDS="2") as running:
        for account, phone in (("acct-good", "13800210000"), ("acct-bad", "13900001111"),
                               ("acct-busy", "13600005555"), ("acct-script", "13500007777")):
            subprocess.run([sys.executable, "-m", "ivr.cli", "account", "add", "--id", account,
                            "--phone", phone], env=running.env, check=True,
                           capture_output=True)
        yield running


def _code_for(hotline: Hotline, account: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        messages = hotline.get("/verification/outbox", account_id=account).json()
        if messages:
            match = re.search(r"code is (\d{6})", messages[0]["body"])
            assert match is not None, messages[0]["body"]
            return match.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no code sent for {account}")


def test_right_code_passes_tier_one(hotline: Hotline, sip_stack: SipStack,
                                    asterisk: RunningAsterisk) -> None:
    call = dial_and_press(sip_stack, asterisk, "13800210000", "3")
    hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "verifying", 30)
    code = _code_for(hotline, "acct-good")
    time.sleep(1.0)
    call.send_dtmf(code + "#")
    record = hotline.wait_call(call.record.sip_call_id,
                               lambda c: c["route_decision"] is not None, 40)
    call.hangup()
    call.wait_ended()
    assert record["intent"] == "account_security"
    assert record["verification"]["account_id"] == "acct-good"
    assert record["verification"]["tier1"] == "passed"
    # No voiceprint yet: a code alone does not unlock anything, the experts take the call.
    assert record["verification"]["decision"] == "none"
    assert record["route_decision"]["skill"] == "security_expert"


def test_wrong_code_never_reaches_tier_two(hotline: Hotline, sip_stack: SipStack,
                                           asterisk: RunningAsterisk) -> None:
    call = dial_and_press(sip_stack, asterisk, "13900001111", "3")
    hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "verifying", 30)
    code = _code_for(hotline, "acct-bad")
    wrong = "123456" if code != "123456" else "654321"
    for _ in range(3):
        time.sleep(1.0)
        call.send_dtmf(wrong + "#")
        time.sleep(2.5)  # the "wrong code" prompt
    record = hotline.wait_call(call.record.sip_call_id,
                               lambda c: c["route_decision"] is not None, 40)
    call.hangup()
    call.wait_ended()
    verification = record["verification"]
    assert verification["tier1"] == "failed"
    assert verification["tier1_reason"] == "too_many_attempts"
    assert verification["decision"] == "reject"
    assert "tier2" not in verification
    assert record["route_decision"]["skill"] == "security_expert"
    checks = [e["data"] for e in record["events"] if e["kind"] == "code_checked"]
    assert [c["reason"] for c in checks] == ["wrong", "wrong", "too_many_attempts"]


def test_caller_without_an_account_goes_to_the_experts(hotline: Hotline, sip_stack: SipStack,
                                                       asterisk: RunningAsterisk) -> None:
    call = dial_and_press(sip_stack, asterisk, "13700007777", "3")
    record = hotline.wait_call(call.record.sip_call_id,
                               lambda c: c["route_decision"] is not None, 40)
    call.hangup()
    call.wait_ended()
    assert record["verification"] == {"tier1": "no_account", "decision": "none"}
    assert record["route_decision"]["skill"] == "security_expert"


def test_codes_per_account_are_limited(hotline: Hotline, sip_stack: SipStack,
                                       asterisk: RunningAsterisk) -> None:
    """Past the limit no SMS goes out: the call records why and goes to the experts."""
    for _ in range(2):  # two calls that each get a code, then hang up
        call = dial_and_press(sip_stack, asterisk, "+8613600005555", "3")
        hotline.wait_call(call.record.sip_call_id, lambda c: c["state"] == "verifying", 30)
        call.hangup()
        call.wait_ended()
    call = dial_and_press(sip_stack, asterisk, "13600005555", "3")
    record = hotline.wait_call(call.record.sip_call_id,
                               lambda c: c["route_decision"] is not None, 40)
    call.hangup()
    call.wait_ended()
    assert record["verification"] == {"account_id": "acct-busy", "tier1": "rate_limited",
                                      "decision": "none"}
    limited = [e["data"] for e in record["events"] if e["kind"] == "code_rate_limited"]
    assert len(limited) == 1 and 0 < limited[0]["retry_after_s"] <= 3600
    assert record["route_decision"]["skill"] == "security_expert"
    sent = hotline.get("/verification/outbox", account_id="acct-busy").json()
    assert len(sent) == 2


def test_a_scripted_call_from_the_command_line_passes_tier_one(hotline: Hotline) -> None:
    """`ivr call --step ...`: the menu, the account-security key, the one-time code read from
    the development outbox, and the route, each step waited for, the result as JSON."""
    steps = ["state:menu:20", "keys:3", "state:verifying:20", "code:acct-script:20",
             "routed:40", "hangup"]
    done = subprocess.run(
        [sys.executable, "-m", "ivr.cli", "call", "--from", "13500007777", "--wait", "0",
         "--json", *(arg for step in steps for arg in ("--step", step))],
        env=hotline.env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s["step"] for s in result["steps"]] == steps
    assert all(s["ok"] for s in result["steps"]), result["steps"]
    assert result["steps"][2]["detail"]["state"] == "verifying"
    record = hotline.wait_call(result["call_id"], lambda c: c["state"] == "ended", 20)
    assert record["verification"]["account_id"] == "acct-script"
    assert record["verification"]["tier1"] == "passed"
    assert record["route_decision"]["skill"] == "security_expert"
    # The command's own admin token is gone.
    assert "ivr call" not in hotline.get("/tokens").text


def test_a_scripted_step_that_does_not_happen_fails_by_name(hotline: Hotline) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ivr.cli", "call", "--from", "13700008888", "--wait", "0",
         "--json", "--step", "state:connected:3"],
        env=hotline.env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answered"] is True and result["steps"][0]["ok"] is False
    assert "no state connected within 3 s" in result["error"]
    typo = subprocess.run([sys.executable, "-m", "ivr.cli", "call", "--from", "1", "--step",
                           "press:3"], env=hotline.env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert typo.returncode == 1 and "unknown step 'press:3'" in typo.stderr
