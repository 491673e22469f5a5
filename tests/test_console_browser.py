"""The supervisor console: its static files as served by the API, and the page itself in headless
Chromium against `ivr serve` on a real Asterisk with real SIP calls and the tiny Whisper model.

The browser tests drive Debian's chromium through Playwright (never `playwright install`).
The unit tests in this module carry only the ``unit`` marker, so they are not bundled with the
browser marks in a module-level ``pytestmark``.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from ivr.api.app import create_app
from ivr.api.calls import mask_number
from ivr.api.console import CONTENT_SECURITY_POLICY
from ivr.health import Readiness
from ivr.sip.phone import AgentOptions, SipStack

from conftest import RunningAsterisk
from hotline import Agents, Hotline, dial_and_press, running_hotline

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, WebSocketRoute

CONSOLE = Path(__file__).resolve().parents[1] / "ivr" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BROWSER_TEST = [pytest.mark.browser, pytest.mark.asterisk, pytest.mark.slow, pytest.mark.model]
CALLER = "01066667777"  # Beijing: the call is routed to the north region


def browser_test(test: Any) -> Any:
    """Mark a test that needs Chromium, Asterisk and the tiny model."""
    for mark in BROWSER_TEST:
        test = mark(test)
    return test


# -- the files, as the API serves them (no browser) -------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Readiness()))


@pytest.mark.unit
def test_page_is_public_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    policy = page.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in policy and "connect-src 'self' ws: wss:" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    html = page.text
    # The policy forbids inline code, so the page must not need any.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/console/' in attrs and not body.strip()
                           for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "inline style"
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css"),
                       ("monitor-worklet.js", "text/javascript")):
        asset = client.get(f"/console/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.content == (CONSOLE / name).read_bytes()
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.unit
@pytest.mark.parametrize("path", [
    "/console/../../etc/passwd", "/console/..%2F..%2Fetc%2Fpasswd", "/console/%2e%2e%2fapp.py",
    "/console/__init__.py", "/console/index.html", "/console/", "/console/console.js.map",
    "/console/CONSOLE.JS",
])
def test_only_the_console_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    body = response.json()
    assert body["status"] == 404 and body["error_id"] and body["message"]
    assert "root:" not in response.text


@pytest.mark.unit
def test_every_element_and_label_the_script_uses_exists() -> None:
    html = (CONSOLE / "index.html").read_text()
    script = (CONSOLE / "console.js").read_text()
    ids = set(re.findall(r'\sid="([\w-]+)"', html))
    assert set(re.findall(r'\$\("([\w-]+)"\)', script)) <= ids
    assert {"token", "connect", "status", "calls", "transcript", "route", "regions", "phone",
            "listen", "whisper", "barge", "lang"} <= ids
    start = script.index("const LABELS = {")
    table = script[start:script.index("\n  };", start)]
    text = r'"(?:[^"\\]|\\.)*"'
    entries = re.findall(rf"^ {{4}}(\w+): \[\s*({text}),\s*({text}|null)\],$", table, re.M)
    assert len(entries) == table.count(": ["), "a label that is not a [中文, English] pair"
    labels = {key: english for key, _chinese, english in entries}
    # Only a region's English name may be left out (it is shown as the region's id).
    assert all(english != "null" or key.startswith("region_")
               for key, english in labels.items())
    used = set(re.findall(r'data-i18n(?:-placeholder|-title)?="(\w+)"', html))
    used |= set(re.findall(r'\bt\("(\w+)"', script))
    assert used <= set(labels), used - set(labels)
    # Every reason a recognition is dropped for, and every part /ready can name, has words in
    # both languages (never the internal name, such as compression_ratio).
    from typing import get_args

    from asr.engine import DropReason

    assert {f"dropped_{reason}" for reason in get_args(DropReason)} <= set(labels)
    pairs = [pair for path in (CONSOLE.parents[1] / "ivr").rglob("*.py") for pair in re.findall(
        r'(?:degrade|\.set)\("(\w+)"|probe_forever\(readiness, "(\w+)"', path.read_text())]
    parts = {name for pair in pairs for name in pair if name}
    parts |= {"asr_model", "voiceprint_model"}  # Readiness.model() names these
    assert parts >= {"ari", "asr", "vad", "voiceprint", "routing", "database", "ari_requests"}
    assert {f"part_{name}" for name in parts} <= set(labels), parts


# -- the page in Chromium against a real hotline ----------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """One Playwright driver per module (two may not run in one thread)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package drives these tests)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright cannot be imported: {exc}")
    with sync_playwright() as driver:
        yield driver


def _chromium(playwright: Playwright, args: list[str]) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                          args=args)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    yield from _chromium(playwright, CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def console_hotline(browser: Browser, asterisk: RunningAsterisk, tiny_whisper: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hotline]:
    tmp = tmp_path_factory.mktemp("console")
    start = random.randrange(47000, 49900, 100)
    with running_hotline(asterisk, tmp, IVR_ASR__MODEL_DIR=str(tiny_whisper),
                         IVR_ASR__LANGUAGE="en", IVR_ASR__RTP_PORT_START=str(start),
                         IVR_ASR__RTP_PORT_END=str(start + 99)) as running:
        yield running


class ConsolePage:
    """One browser tab on the console, with the live WebSocket routed through Playwright so a
    test can read both directions and cut the connection."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        # Per live connection: what the page sent and what the server sent, parsed.
        self.sent: list[list[dict[str, Any]]] = []
        self.received: list[list[dict[str, Any]]] = []
        self.routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.route_web_socket(re.compile(r".*/api/v1/live$"), self._route)

    def _console(self, message: Any) -> None:
        # A policy violation means the page relies on something the CSP blocks.
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        sent: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []

        def to_server(message: str | bytes) -> None:
            sent.append(json.loads(message))
            server.send(message)

        def to_page(message: str | bytes) -> None:
            received.append(json.loads(message))
            ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)
        self.sent.append(sent)
        self.received.append(received)
        self.routes.append((ws, server))

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` while Playwright keeps delivering events (a plain sleep would not)."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            self.page.wait_for_timeout(100)

    def open(self) -> None:
        """Load the console."""
        self.page.goto(f"{self.base}/")

    def connect(self, token: str) -> None:
        """Paste a token and press Connect."""
        self.page.fill("#token", token)
        self.page.click("#connect")

    def cut(self) -> None:
        """Drop the live connection as a network failure would (neither a close the page asked
        for nor one of the fatal codes)."""
        ws, server = self.routes[-1]
        server.close(code=1000, reason="test")
        ws.close(code=4000, reason="network cut by the test")


@pytest.fixture
def console(browser: Browser, console_hotline: Hotline) -> Iterator[ConsolePage]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    tab = ConsolePage(context.new_page(),
                      f"http://127.0.0.1:{console_hotline.env['IVR_API_PORT']}")
    try:
        yield tab
    finally:
        context.close()
    assert not tab.errors, tab.errors


def _spoken(path: Path, text: str) -> Path:
    """espeak-ng speech as a 16 kHz mono WAV."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)],
                   check=True)
    return path


@browser_test
def test_a_bad_token_is_refused_and_not_retried(console: ConsolePage,
                                                console_hotline: Hotline) -> None:
    from playwright.sync_api import expect

    page = console.page
    console.open()
    status = page.locator("#status")
    expect(status).to_have_attribute("data-status", "idle")
    console.connect("ivr_0000_not-a-real-token")
    expect(status).to_have_attribute("data-status", "error")
    expect(status).to_contain_text("4401")
    expect(status).to_contain_text("unknown, expired or revoked")
    time.sleep(2.5)  # longer than the first two reconnect delays
    assert len(console.routes) == 1, "the console retried a refused token"
    expect(status).to_have_attribute("data-status", "error")
    # A valid token of a role that may not watch live calls: 4403, also final.
    console.connect(console_hotline.token("agent"))
    expect(status).to_contain_text("4403")
    expect(status).to_have_attribute("data-status", "error")
    assert page.locator("#calls tr").count() == 0


@browser_test
def test_a_live_call_on_the_board_with_route_transcript_and_monitor(
        console: ConsolePage, console_hotline: Hotline, sip_stack: SipStack,
        asterisk: RunningAsterisk, artifacts: Path) -> None:
    from playwright.sync_api import expect

    hotline, page = console_hotline, console.page
    agent_speech = _spoken(artifacts / "agent.wav", "thank you for calling, how can I help")
    caller_speech = _spoken(artifacts / "caller.wav", "I have a question about my bill")
    console.open()
    console.connect(hotline.token("supervisor"))
    status = page.locator("#status")
    expect(status).to_have_attribute("data-status", "connected")
    # The token is kept for this tab only, so a reload connects again by itself.
    page.reload()
    expect(status).to_have_attribute("data-status", "connected")
    assert console.sent[-1] == [{"type": "auth", "token": hotline.token("supervisor")}]

    team = Agents(sip_stack, asterisk, artifacts)
    supervisor_phone = None
    call = None
    try:
        team.register("north", play=agent_speech)
        north = page.locator('#regions tr[data-region="north"]')
        expect(north.locator("td.registered")).to_have_text(re.compile(r"^1 / \d+$"))
        expect(north.locator("td.available")).to_have_text("1")

        # Cut the live connection just before the call comes in: the console resumes from the
        # last event it saw, and the server replays what it missed (no new snapshot).
        before = len(console.routes)
        seen = list(console.received[-1])
        console.cut()
        call = dial_and_press(sip_stack, asterisk, CALLER, "1")
        call_id = hotline.wait_call(call.record.sip_call_id, lambda c: True, 10)["call_id"]
        row = page.locator(f'#calls tr[data-call-id="{call_id}"]')
        expect(row).to_have_count(1)
        expect(status).to_have_attribute("data-status", "connected")
        resume = console.sent[before][0]
        epoch = next(m["epoch"] for m in reversed(seen) if m["type"] == "snapshot")
        last_seq = max(m["seq"] for m in seen)
        assert resume == {"type": "auth", "token": hotline.token("supervisor"),
                          "last_seq": last_seq, "epoch": epoch}
        replayed = console.received[before]
        assert [m["type"] for m in replayed] == ["event"] * len(replayed)
        assert [m["seq"] for m in replayed] == list(range(last_seq + 1,
                                                          last_seq + 1 + len(replayed)))
        assert any(m["call_id"] == call_id for m in replayed)
        expect(row.locator("td.state")).to_have_attribute("data-value", re.compile(r"^\w+$"))
        expect(row.locator("td.caller")).to_have_text(str(mask_number(CALLER)))
        assert CALLER not in page.content()

        row.click()
        expect(row).to_have_class(re.compile(r"\bselected\b"))
        expect(page.locator("#route")).to_have_attribute("data-call-id", call_id)
        expect(row.locator("td.state")).to_have_attribute("data-value", "connected",
                                                          timeout=40_000)
        record = hotline.call(call_id)
        assert record["route"] == {"region": "north", "agent_id": "agent-north-1"}
        expect(page.locator("#route-agent")).to_have_text("agent-north-1")
        expect(page.locator("#route-region")).to_contain_text("north")
        expect(page.locator("#route-decision")).to_contain_text(
            record["route_decision"]["rule_name"])
        expect(row.locator("td.agent")).to_have_text("agent-north-1")
        expect(north.locator("td.oncall")).to_have_text("1")
        expect(north.locator("td.waiting")).to_have_text("0")
        wait = row.locator("td.wait")
        expect(wait).to_have_text(re.compile(r"^\d\d:\d\d$"))
        expect(wait).not_to_have_text(wait.inner_text(), timeout=3_000)  # it keeps counting

        call.play(caller_speech, wait=False)
        final = page.locator("#transcript .line.final").first
        expect(final).to_be_visible(timeout=25_000)
        speaker = final.get_attribute("data-speaker")
        assert speaker in ("caller", "agent")
        expect(final.locator(".speaker")).to_have_text({"caller": "客户", "agent": "坐席"}[speaker])
        stored = hotline.get(f"/calls/{call_id}/transcript", "supervisor").json()
        assert any(line["speaker"] == speaker for line in stored)

        # Listen from the supervisor's own phone; an unknown phone is refused with a reason.
        account = next(p for p in asterisk.state.supervisors if p.agent_id == "supervisor-1")
        supervisor_phone = sip_stack.agent(account.agent_id, account.password, asterisk.pbx,
                                           AgentOptions(answer_after_s=0.2,
                                                        record_dir=artifacts))
        supervisor_phone.wait_registered()
        monitor_status = page.locator("#monitor-status")
        page.select_option("#monitor-via", "phone")
        page.fill("#phone", "nobody")
        page.click("#listen")
        expect(monitor_status).to_have_class("error")
        expect(monitor_status).to_contain_text("unknown supervisor phone")
        page.fill("#phone", "supervisor-1")
        page.click("#listen")
        expect(monitor_status).to_have_class("ok")
        expect(monitor_status).to_contain_text("supervisor-1")
        phone = supervisor_phone
        console.wait_for(lambda: bool(phone.calls), 10, "the supervisor's phone to ring")
        assert page.evaluate("localStorage.getItem('ivr.console.phone')") == "supervisor-1"

        page.screenshot(path=str(artifacts / "console.png"), full_page=True)
        page.click("#lang")
        expect(page.locator("#lang")).to_have_text("中文")
        expect(page.locator("th").first).to_have_text("Caller")
        expect(final.locator(".speaker")).to_have_text(speaker.capitalize())
        page.screenshot(path=str(artifacts / "console-en.png"), full_page=True)

        call.hangup()
        call.wait_ended()
        call = None
        expect(row).to_have_class(re.compile(r"\bended\b"), timeout=10_000)
        expect(row.locator("td.state")).to_have_attribute("data-value", "ended")
        # Ended rows fade out and leave the board after about ten seconds.
        expect(row).to_have_count(0, timeout=15_000)
    finally:
        # Close the page first: the phones leaving afterwards are events the server sends
        # (and so notices the closed connection).
        page.close()
        if call is not None:
            call.hangup()
        if supervisor_phone is not None:
            supervisor_phone.close()
        team.close()
    hotline.assert_nothing_left()


@pytest.mark.browser
def test_the_console_names_what_runs_degraded_in_both_languages(browser: Browser,
                                                                artifacts: Path) -> None:
    """The banner reads the public /ready: every missing or degraded part, named in the page's
    language with the server's reason, and gone once everything is back."""
    import threading

    import uvicorn
    from playwright.sync_api import expect

    from ivr.asterisk.instance import free_port

    readiness = Readiness()  # ARI missing until said otherwise
    readiness.degrade("asr", "model unusable (no model.bin)")
    readiness.degrade("voiceprint", "voiceprint master key is not configured: tier 3 instead")
    port = free_port("tcp")
    server = uvicorn.Server(uvicorn.Config(create_app(readiness), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    context = browser.new_context(viewport={"width": 1400, "height": 700}, locale="zh-CN")
    try:
        while not server.started:
            time.sleep(0.05)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        banner = page.locator("#health")
        expect(banner).to_be_visible()
        for text in ("服务降级", "电话交换机（ARI）未连接", "语音识别已关闭，仅按键菜单",
                     "声纹验证已关闭，转人工核验", "model unusable (no model.bin)"):
            expect(banner).to_contain_text(text)
        page.screenshot(path=str(artifacts / "console-degraded-zh.png"))
        page.click("#lang")
        for text in ("Running degraded", "PBX (ARI) not connected",
                     "speech recognition off, keypad only", "voiceprint check off"):
            expect(banner).to_contain_text(text)
        page.screenshot(path=str(artifacts / "console-degraded-en.png"))
        # Everything back: the banner goes at the next poll.
        readiness.set("ari", True)
        readiness._degraded.clear()  # noqa: SLF001 - no API un-degrades; the state is the test's
        expect(banner).to_be_hidden(timeout=10_000)
    finally:
        context.close()
        server.should_exit = True
        thread.join(10)


# -- listening in from the browser itself (fake microphone) -----------------------------------

CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ = 440.0, 880.0, 1320.0


@pytest.fixture(scope="module")
def mic_browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Browser]:
    """A second Chromium whose microphone is a file: a steady tone the supervisor "says"."""
    from ivr.sip.audio import write_tone

    voice = write_tone(tmp_path_factory.mktemp("mic") / "supervisor.wav", SUPERVISOR_HZ, 2.0,
                       rate=16000, amplitude=0.4)
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={voice}",
            "--autoplay-policy=no-user-gesture-required"]
    yield from _chromium(playwright, args)


def _pcm(frames: list[bytes]) -> Any:
    import numpy as np

    from ivr.sip.audio import Pcm

    samples = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64) / 32768
    return Pcm(samples, 8000)


@browser_test
def test_supervisor_listens_and_whispers_from_the_browser(
        mic_browser: Browser, console_hotline: Hotline, sip_stack: SipStack,
        asterisk: RunningAsterisk, artifacts: Path) -> None:
    """The console's own audio path in headless Chromium: the supervisor hears caller and agent
    through the page, whispers with the (fake) microphone, and only the agent hears it."""
    from playwright.sync_api import expect

    from ivr.sip.audio import Pcm, band_energy_ratio, read_wav, write_pcm, write_tone

    hotline = console_hotline
    context = mic_browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    heard: list[bytes] = []  # what the server sent the page (the call)
    said: list[bytes] = []  # what the page sent the server (the microphone)
    texts: list[str] = []

    def tap(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            (said.append(message) if isinstance(message, bytes) else texts.append(message))
            server.send(message)

        def to_page(message: str | bytes) -> None:
            (heard.append(message) if isinstance(message, bytes) else texts.append(message))
            ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)

    page.route_web_socket(re.compile(r".*/api/v1/calls/[^/]+/listen$"), tap)
    team = Agents(sip_stack, asterisk, artifacts)
    call = None
    try:
        agent = team.register("north", tone_hz=AGENT_HZ)
        page.goto(f"http://127.0.0.1:{hotline.env['IVR_API_PORT']}/")
        page.fill("#token", hotline.token("supervisor"))
        page.click("#connect")
        call = dial_and_press(sip_stack, asterisk, CALLER, "1", record=artifacts / "caller.wav")
        record = hotline.wait_call(call.record.sip_call_id,
                                   lambda c: c["state"] == "connected", 40)
        row = page.locator(f'#calls tr[data-call-id="{record["call_id"]}"]')
        expect(row.locator("td.state")).to_have_attribute("data-value", "connected",
                                                          timeout=15_000)
        row.click()
        expect(page.locator("#monitor-via")).to_have_value("browser")  # the default
        page.click("#whisper")
        status = page.locator("#monitor-status")
        expect(status).to_have_class("ok", timeout=10_000)
        expect(status).to_have_text("正在本浏览器中密语（坐席通话）")
        level = page.locator("#monitor-level")
        expect(level).to_be_visible()
        # A second of the call played through the audio worklet (the page's own counter; the
        # policy forbids evaluating script in the page, so it is read from the attribute).
        deadline = time.monotonic() + 10
        while int(level.get_attribute("data-played") or 0) < 8000:
            assert time.monotonic() < deadline, "the page played nothing of the call"
            page.wait_for_timeout(200)
        # The socket tap runs in this thread, only while Playwright is called: wait through
        # Playwright, never in a blocking call, or the page's audio would be held and burst.
        call.play(write_tone(artifacts / "caller-tone.wav", CALLER_HZ, 4.0), wait=False)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(artifacts / "console-whisper-in-browser.png"), full_page=True)
        page.click("#lang")
        expect(status).to_have_text("Whisper in this browser (caller and agent)")
        page.click("#monitor-stop")
        expect(status).to_have_text("Monitoring stopped", timeout=10_000)
        expect(level).to_be_hidden()
        agent_leg = agent.active[-1]
        call.hangup()
        call.wait_ended()
        call.wait_released()
        agent_leg.wait_released()
        call = None
    finally:
        context.close()
        if call is not None:
            call.hangup()
        team.close()
    assert not errors, errors
    write_pcm(artifacts / "heard-in-browser.wav", b"".join(heard), 8000)
    write_pcm(artifacts / "said-by-browser.wav", b"".join(said), 8000)
    started = json.loads(next(t for t in texts if '"started"' in t))
    assert started["mode"] == "whisper" and started["rate"] == 8000
    assert json.loads(texts[0]) == {"type": "auth", "token": hotline.token("supervisor"),
                                    "mode": "whisper"}
    # The page heard caller and agent (the last seconds before it stopped)...
    the_call = _pcm(heard[-150:])
    assert band_energy_ratio(the_call, CALLER_HZ) > 0.05
    assert band_energy_ratio(the_call, AGENT_HZ) > 0.05
    # ...sent its microphone in 20 ms frames...
    assert len(said) > 100 and {len(frame) for frame in said} == {320}
    assert band_energy_ratio(_pcm(said[-100:]), SUPERVISOR_HZ) > 0.3
    # ...which the agent heard, and the caller did not.
    heard_by_agent = read_wav(agent.calls[-1].recording)  # type: ignore[arg-type]
    heard_by_caller = read_wav(artifacts / "caller.wav")
    half = heard_by_agent.rate // 2
    both = [(band_energy_ratio(Pcm(heard_by_agent.samples[i:i + half], half * 2), CALLER_HZ),
             band_energy_ratio(Pcm(heard_by_agent.samples[i:i + half], half * 2), SUPERVISOR_HZ))
            for i in range(0, len(heard_by_agent.samples) - half, half)]
    # While the caller spoke, the agent heard both: the whisper is mixed in, not switched.
    assert sum(1 for caller, supervisor in both if caller > 0.2 and supervisor > 0.2) >= 4, both
    assert band_energy_ratio(heard_by_caller, SUPERVISOR_HZ) < 0.01
    events = hotline.call(record["call_id"])["events"]
    assert [e["data"]["phone"] for e in events if e["kind"] == "monitor_started"] == ["browser"]
    assert [e["data"]["reason"] for e in events if e["kind"] == "monitor_ended"] == [
        "stopped by the supervisor"]
    hotline.assert_nothing_left()


@browser_test
def test_administrators_see_the_models_and_a_test_model_is_flagged(
        console: ConsolePage, console_hotline: Hotline, tiny_whisper: Path,
        artifacts: Path) -> None:
    from playwright.sync_api import expect

    page = console.page
    console.open()
    banner, models = page.locator("#health"), page.locator("#models")
    # /ready is public: everyone sees that speech runs on a random-weight test model.
    expect(banner).to_contain_text("语音识别使用测试模型（随机权重，识别结果无意义）")
    console.connect(console_hotline.token("supervisor"))
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(models).to_be_hidden()  # the model details are for administrators
    console.connect(console_hotline.token("admin"))
    expect(models).to_be_visible()
    asr = models.locator('[data-part="asr"]')
    expect(asr).to_have_class("model test")
    expect(asr).to_contain_text(f"语音识别: {tiny_whisper.name} (cpu)")
    expect(asr).to_contain_text("测试模型，随机权重")
    page.screenshot(path=str(artifacts / "console-models-zh.png"))
    page.click("#lang")
    expect(asr).to_contain_text("test model, random weights")
    expect(banner).to_contain_text("speech recognition runs a test model")
    page.screenshot(path=str(artifacts / "console-models-en.png"))
