"""Test harness: `ivr serve` as a real process against the test Asterisk, plus phone helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ivr.asterisk.instance import free_port
from ivr.sip.audio import write_tone
from ivr.sip.phone import AgentOptions, AgentPhone, PhoneCall, SipStack

from conftest import RunningAsterisk

RULES = Path(__file__).resolve().parent / "data" / "rules.yaml"


@dataclass
class Hotline:
    """A running controller + API process and the Asterisk it controls."""

    asterisk: RunningAsterisk
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.env['IVR_API_PORT']}/api/v1"

    def start(self) -> None:
        """Start `ivr serve` and wait until it is ready (ARI connected)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ivr.cli", "serve"], env=self.env,
                                     stdout=log, stderr=log)
        wait_until(lambda: _status(f"{self.api}/ready") == 200, 30, "the controller to be ready")

    def kill(self) -> None:
        """SIGKILL: the controller dies mid-call, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        """Ctrl-C."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def token(self, role: str) -> str:
        """A bearer token of ``role``, made once with `ivr token create` (the real CLI)."""
        if role not in self.tokens:
            agent = ["--agent", "agent-north-1"] if role == "agent" else []
            done = subprocess.run([sys.executable, "-m", "ivr.cli", "token", "create", "--role",
                                   role, "--name", f"test-{role}", *agent], env=self.env,
                                  check=True, capture_output=True, text=True)
            self.tokens[role] = done.stdout.strip()
        return self.tokens[role]

    def assert_not_stored(self, *texts: str) -> None:
        """None of ``texts`` is anywhere in the database files in clear (main file and WAL:
        personal data is sealed field by field before it is written)."""
        stored = b"".join(path.read_bytes() for path in self.data_dir.glob("ivr.sqlite3*"))
        assert stored, "no database files"
        found = [t for t in texts if t.encode("utf-8") in stored]
        assert not found, f"stored in clear: {found}"

    def headers(self, role: str) -> dict[str, str]:
        """Authorization header of a ``role`` token."""
        return {"Authorization": f"Bearer {self.token(role)}"}

    def get(self, path: str, role: str = "admin", **params: Any) -> httpx.Response:
        """GET on the API with a token of ``role``."""
        return httpx.get(f"{self.api}{path}", params=params, headers=self.headers(role),
                         timeout=5)

    def call(self, call_id: str) -> dict[str, Any]:
        """GET /calls/{call_id} (our id or the SIP Call-ID), numbers in clear (security)."""
        response = self.get(f"/calls/{call_id}", "security", unredacted="true")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_call(self, call_id: str, predicate: Callable[[dict[str, Any]], bool],
                  timeout: float = 30.0, what: str = "the call record") -> dict[str, Any]:
        """Poll the call record until ``predicate`` holds."""
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            try:
                last = self.call(call_id)
            except httpx.HTTPError:
                return False
            return predicate(last)

        try:
            wait_until(check, timeout, f"{what} (last: state={last.get('state')}, "
                                       f"events={[e['kind'] for e in last.get('events', [])]})")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- serve.log (tail) ---\n{self.log_tail()}") from None
        return last

    def log_tail(self, lines: int = 40) -> str:
        """The end of the controller's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def ari_get(self, path: str) -> Any:
        """A GET on the test Asterisk's ARI."""
        ari = self.asterisk.state.ari()
        response = httpx.get(f"{ari.base_url}/ari{path}", auth=(ari.user, ari.password),
                             timeout=5)
        response.raise_for_status()
        return response.json()

    def assert_nothing_left(self, timeout: float = 10.0) -> None:
        """No channel or bridge remains in our Stasis application."""
        app = self.asterisk.state.ari_app

        def empty() -> bool:
            body = self.ari_get(f"/applications/{app}")
            return not body["channel_ids"] and not body["bridge_ids"]

        wait_until(empty, timeout, f"ARI application '{app}' to hold no channel or bridge "
                                   f"(now {self.ari_get(f'/applications/{app}')})")


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` every 0.1 s; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def hotline_env(asterisk: RunningAsterisk, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for `ivr serve` against the test Asterisk, with short test timings.

    Keypad only unless the test names a Whisper model (``IVR_ASR__MODEL_DIR``) or asks for the
    shipped default (``IVR_ASR__ENABLED=true``): the trained model costs CPU on every call."""
    speech = "true" if "IVR_ASR__MODEL_DIR" in extra else "false"
    return {
        **os.environ,
        "IVR_ASR__ENABLED": speech,
        "IVR_ASTERISK__INSTANCE": asterisk.instance.name,
        "IVR_API_PORT": str(free_port()),
        "IVR_DATA_DIR": str(data_dir),
        "IVR_ROUTING__RULES_FILE": str(RULES),
        "IVR_FLOW__WRAP_UP_S": "0.5",
        "IVR_FLOW__MENU_TIMEOUT_S": "4",
        "IVR_FLOW__QUEUE_POLL_S": "0.2",
        "IVR_FLOW__POSITION_ANNOUNCE_EVERY_S": "8",
        **extra,
    }


@contextmanager
def running_hotline(asterisk: RunningAsterisk, tmp: Path, **extra: str) -> Iterator[Hotline]:
    """A started hotline, stopped afterwards; its log is printed if the test failed."""
    hotline = Hotline(asterisk, tmp / "var", tmp / "serve.log",
                      hotline_env(asterisk, tmp / "var", **extra))
    hotline.start()
    try:
        yield hotline
    finally:
        hotline.stop()


@dataclass
class Agents:
    """Agent phones registered for one test and unregistered after it."""

    stack: SipStack
    asterisk: RunningAsterisk
    folder: Path
    phones: list[AgentPhone] = field(default_factory=list)

    def register(self, region: str, index: int = 1, answer_after_s: float = 0.3,
                 tone_hz: float = 880.0, play: Path | None = None,
                 reject_with: int | None = None) -> AgentPhone:
        """Register ``agent-<region>-<index>``, answering after a delay and playing a tone
        (or ``play``, looped)."""
        account = next(a for a in self.asterisk.state.agents
                       if a.agent_id == f"agent-{region}-{index}")
        tone = play or write_tone(self.folder / f"{account.agent_id}-tone.wav", tone_hz, 1.0)
        phone = self.stack.agent(account.agent_id, account.password, self.asterisk.pbx,
                                 AgentOptions(answer_after_s=answer_after_s,
                                              record_dir=self.folder, play=tone,
                                              reject_with=reject_with))
        phone.wait_registered()
        self.phones.append(phone)
        return phone

    def close(self) -> None:
        """Unregister every phone of this test."""
        for phone in self.phones:
            phone.close()
        self.phones.clear()


def dial_and_press(stack: SipStack, asterisk: RunningAsterisk, number: str, digits: str,
                   record: Path | None = None, after_s: float = 1.0) -> PhoneCall:
    """Call the hotline from ``number`` and press ``digits`` during the greeting."""
    caller = stack.caller(number, asterisk.pbx)
    call = caller.dial(asterisk.state.hotline_number, record_to=record)
    call.wait_connected()
    time.sleep(after_s)
    if digits:
        call.send_dtmf(digits)
    return call
