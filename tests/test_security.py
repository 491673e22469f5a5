"""Issue 13's red-team findings, each reproduced against the API: body limits before
authentication, the YAML alias bomb, live sockets of revoked tokens, agent identity, throttles
that hold across processes, the rule-set bound, malformed live auth messages, hidden statement
parameters, and the documentation pages.

The body tests run a real uvicorn server on loopback and talk raw HTTP/1.1 to it, so that "the
body was never read" is observed on the wire: the answer arrives while the client still holds
almost all of the body it announced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from api_app import WiredApi, wired_api
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.websockets import WebSocketDisconnect

from ivr.api import guard
from ivr.api.app import create_app
from ivr.api.guard import MessageRefused, bounded_json
from ivr.api.services import ApiServices
from ivr.asterisk.instance import free_port
from ivr.auth.throttle import FailureThrottle, Limited, Throttle
from ivr.auth.tokens import AgentTokenExists, TokenRefused, TokenStore
from ivr.health import Readiness
from ivr.logs import JsonFormatter
from ivr.routing.manage import MAX_EXPORT_BYTES, RuleBook, RuleSetFull
from ivr.routing.rule_schema import MAX_RULES
from ivr.routing.service import RoutingService
from ivr.settings import RoutingSettings, SecuritySettings
from ivr.store.db import make_engine, migrate
from ivr.store.repository import Store
from ivr.verification.codes import Account, CodeOptions, OneTimeCodes, OutboxSender

pytestmark = [pytest.mark.unit, pytest.mark.model]
REGIONS = ("north", "east", "south", "west")
SIMULATE = "/api/v1/routing/simulate"
IMPORT = "/api/v1/routing/rules/import"
RULES = "/api/v1/routing/rules"
# Nine levels of nine aliases: 352 bytes that expand to 9**9 strings when walked.
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9) if prev else ','.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)) + "rules: *i\n"


@pytest.fixture()
def api(tmp_path_factory: pytest.TempPathFactory) -> WiredApi:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    return wired_api(tmp_path_factory.mktemp("security"), build_tiny_ecapa(),
                     SecuritySettings(auth_failures=100_000, live_recheck_s=0.2))


def _auth(api: WiredApi, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens[role]}"}


# ---- a real server on loopback ---------------------------------------------------------------


class Served:
    """``app`` under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port("tcp")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def raw(self, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes]:
        """Send a request head (and ``body``), read the answer: (status, response bytes)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            try:
                sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before taking all of it
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            status = int(answer.split(b" ", 2)[1]) if answer else 0
            with_body = answer
            try:
                while chunk := sock.recv(65536):
                    with_body += chunk
            except (TimeoutError, ConnectionResetError):
                pass
            return status, with_body


@pytest.fixture()
def served(api: WiredApi) -> Iterator[Served]:
    server = Served(api.app)
    try:
        yield server
    finally:
        server.stop()


def _head(path: str, length: int | None, token: str | None = None,
          media: str = "application/json", chunked: bool = False) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {media}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\n".join(lines) + "\n"


def test_an_oversized_body_is_413_before_a_byte_is_read(api: WiredApi, served: Served) -> None:
    # The red team's 839 MB to /routing/simulate: announced, never sent. The answer comes at
    # once, with or without a token; nothing waits for the body.
    for token in (None, api.tokens["admin"]):
        started = time.monotonic()
        status, answer = served.raw(_head(SIMULATE, 839_000_000, token))
        assert status == 413, answer[:300]
        assert time.monotonic() - started < 5
        assert b"the body is over 1048576 bytes" in answer
    # Every route has the cap, not only the rules.
    for path in ("/api/v1/tokens", "/api/v1/voiceprint/accounts/acct-1/enroll",
                 "/api/v1/calls/x/monitor"):
        assert served.raw(_head(path, 2 << 20, api.tokens["admin"]))[0] == 413
    # The import takes up to the largest export, and no more.
    assert served.raw(_head(IMPORT, MAX_EXPORT_BYTES + 1, api.tokens["admin"],
                            "application/yaml"))[0] == 413


def test_no_token_is_401_before_the_body_is_read(served: Served) -> None:
    # A body within the cap, announced but not sent: without a token the answer cannot wait
    # for it (an unread body is never parsed, so a stranger cannot make the process work).
    for head in (_head(SIMULATE, 1_000_000), _head(SIMULATE, 1_000_000, "ivr_x_y"),
                 _head(SIMULATE, None, chunked=True)):
        status, answer = served.raw(head, timeout=5)
        assert status == 401, answer[:300]
        assert b"WWW-Authenticate: Bearer" in answer or b"www-authenticate: Bearer" in answer


def test_a_streamed_body_is_cut_off_at_the_cap(api: WiredApi, served: Served) -> None:
    # Chunked: no length to check up front; counted as it arrives, refused past 1 MiB.
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(24)) + b"0\r\n\r\n"
    status, answer = served.raw(_head(SIMULATE, None, api.tokens["admin"], chunked=True), body)
    assert status == 413, answer[:300]
    # The service goes on answering.
    health = httpx.get(f"http://127.0.0.1:{served.port}/api/v1/health", timeout=5)
    assert health.status_code == 200


def test_large_json_is_parsed_off_the_event_loop(api: WiredApi, monkeypatch: Any) -> None:
    in_loop: list[bool] = []
    real = json.loads

    def spying(data: Any, *args: Any, **kwargs: Any) -> Any:
        if "13800210000" in (data.decode() if isinstance(data, bytes) else str(data)):
            try:  # the request body (other JSON is read too: the rules' columns)
                asyncio.get_running_loop()
                in_loop.append(True)
            except RuntimeError:
                in_loop.append(False)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(guard.json, "loads", spying)  # the json module: Starlette's too
    client = TestClient(api.app)
    body = {"caller_number": "13800210000", "intent": "billing", "pad": "0" * 200_000}
    response = client.post(SIMULATE, content=json.dumps(body), headers={
        **_auth(api, "admin"), "Content-Type": "application/json"})
    assert response.status_code == 422 and "pad" in response.text  # parsed, then validated
    assert in_loop == [False]  # once, in a worker thread
    in_loop.clear()
    small = client.post(SIMULATE, json={"caller_number": "13800210000", "intent": "billing"},
                        headers=_auth(api, "admin"))
    assert small.status_code == 200 and in_loop == [True]  # small: FastAPI's parse, in loop


# ---- the YAML alias bomb ---------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly_with_a_small_answer(api: WiredApi) -> None:
    assert len(ALIAS_BOMB) < 400
    client = TestClient(api.app)
    etag = client.get(RULES, headers=_auth(api, "admin")).headers["ETag"]
    started = time.monotonic()
    response = client.post(IMPORT, content=ALIAS_BOMB, headers={
        **_auth(api, "admin"), "If-Match": etag, "Content-Type": "application/yaml"})
    assert time.monotonic() - started < 2
    assert response.status_code == 422 and len(response.content) < 2000
    assert "aliases (*name) expand the document" in response.json()["details"][0]["msg"]
    # Aliases within reason still work: the shipped rules reuse one window list.
    shipped = yaml.safe_load(client.get(f"{RULES}/export", headers=_auth(api, "admin")).text)
    reused = ("staffed: &staffed\n  - {days: [mon, tue, wed, thu, fri], start: '08:00', "
              "end: '20:00'}\n" + yaml.safe_dump({"rules": shipped["rules"]}))
    fine = client.post(IMPORT, content=reused, headers={
        **_auth(api, "admin"), "If-Match": etag, "Content-Type": "application/yaml"})
    # An unknown top-level key, named — proof that the document was read, aliases and all.
    assert fine.status_code == 422 and fine.json()["details"][0]["loc"] == ["body", "staffed"]


def test_an_error_never_echoes_unbounded_input(api: WiredApi) -> None:
    client = TestClient(api.app)
    response = client.post(RULES, json={"name": ["n" * 50_000] * 5, "position": "9" * 300_000,
                                        "when": {"intents": ["x" * 50_000] * 5}},
                           headers=_auth(api, "admin"))
    assert response.status_code == 422 and len(response.content) < 4000, len(response.content)


# ---- live socket ------------------------------------------------------------------------------


def test_a_token_revoked_here_closes_its_live_socket_at_once(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    # Re-checks every 30 s: the close must come from the revocation itself.
    api = wired_api(tmp_path_factory.mktemp("revoke"), build_tiny_ecapa(),
                    SecuritySettings(auth_failures=100_000, live_recheck_s=30))
    client = TestClient(api.app)
    tokens = api.services.tokens
    assert tokens is not None
    token, info = tokens.create("supervisor", "night shift")
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": token})
        assert ws.receive_json()["type"] == "snapshot"
        started = time.monotonic()
        revoked = client.delete(f"/api/v1/tokens/{info.id}", headers=_auth(api, "admin"))
        assert revoked.status_code == 204
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008 and "revoked" in (closed.value.reason or "")
        assert time.monotonic() - started < 10


def test_a_token_revoked_by_another_process_closes_its_live_socket(api: WiredApi) -> None:
    client = TestClient(api.app)
    tokens = api.services.tokens
    assert tokens is not None and api.services.bus is not None
    token, info = tokens.create("supervisor", "night shift")
    elsewhere = TokenStore(make_engine(str(tokens.engine.url)))  # `ivr token revoke`
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": token})
        assert ws.receive_json()["type"] == "snapshot"
        api.services.bus.publish("acd", None, {"n": 1})
        assert ws.receive_json()["type"] == "event"
        assert elsewhere.revoke(info.id)
        with pytest.raises(WebSocketDisconnect) as closed:
            for _ in range(100):  # events keep coming until the re-check closes it
                api.services.bus.publish("acd", None, {"n": 2})
                ws.receive_json()
                time.sleep(0.05)
        assert closed.value.code == 1008 and "revoked" in (closed.value.reason or "")


def test_an_expired_token_closes_its_live_socket(database_url: str) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    engine = make_engine(database_url)
    migrate(engine)
    tokens = TokenStore(engine, clock=lambda: now[0])
    token, _ = tokens.create("supervisor", "short", ttl=timedelta(minutes=5))
    from ivr.bus import EventBus

    app = create_app(ApiServices(Readiness(), tokens=tokens, bus=EventBus(),
                                 security=SecuritySettings(live_recheck_s=0.1)))
    with TestClient(app).websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": token})
        assert ws.receive_json()["type"] == "snapshot"
        now[0] += timedelta(minutes=6)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008 and "expired" in (closed.value.reason or "")


@pytest.mark.parametrize("message", [
    "[" * 100_000 + "]" * 100_000,  # the red team's RecursionError
    json.dumps({"type": "auth", "token": "t", "x": [[[[["deep"]]]]]}),
    json.dumps({"type": "auth", "token": "x" * 5000}),
    "not json",
    "binary",  # a binary frame (a KeyError inside the app before)
])
def test_a_malformed_live_auth_message_is_refused_by_name(api: WiredApi, message: str) -> None:
    client = TestClient(api.app)
    with client.websocket_connect("/api/v1/live") as ws:
        if message == "binary":
            ws.send_bytes(json.dumps({"type": "auth", "token": api.tokens["admin"]}).encode())
        else:
            ws.send_text(message)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4400
    assert "refused" in (closed.value.reason or "") or "auth" in (closed.value.reason or "")


def test_bounded_json_limits() -> None:
    assert bounded_json('{"a": [1, {"b": "[[[["}]}', 100, 3) == {"a": [1, {"b": "[[[["}]}
    with pytest.raises(MessageRefused, match="nested over 2"):
        bounded_json('{"a": [[1]]}', 100, 2)
    with pytest.raises(MessageRefused, match="over 10 characters"):
        bounded_json('{"a": "0123456789"}', 10, 5)


# ---- agent identity ---------------------------------------------------------------------------


def test_agent_tokens_act_for_one_existing_agent(api: WiredApi) -> None:
    client = TestClient(api.app)
    admin = _auth(api, "admin")

    def create(**body: Any) -> httpx.Response:
        return client.post("/api/v1/tokens", json=body, headers=admin)

    missing = create(role="agent", name="desk")
    assert missing.status_code == 422 and "agent_id" in missing.text
    unknown = create(role="agent", agent_id="agent-nowhere-9")
    assert unknown.status_code == 422 and "no agent 'agent-nowhere-9'" in unknown.text
    assert create(role="supervisor", agent_id="agent-east-1").status_code == 422
    first = create(role="agent", agent_id="agent-east-1")
    assert first.status_code == 201 and first.json()["agent_id"] == "agent-east-1"
    assert first.json()["name"] == "agent-east-1"
    again = create(role="agent", agent_id="agent-east-1", name="agent-east-1")
    assert again.status_code == 409 and "revoke it first" in again.text
    client.delete(f"/api/v1/tokens/{first.json()['id']}", headers=admin)
    assert create(role="agent", agent_id="agent-east-1").status_code == 201
    listed = client.get("/api/v1/tokens", headers=admin).json()
    assert sum(t["agent_id"] == "agent-east-1" and t["revoked_at"] is None for t in listed) == 1


@pytest.mark.parametrize("name", ["agent\x00north", "agent\u202enorth", "agent\u200bnorth",
                                  "agent\u2028north", "agent\u00a0north", " padded", "x" * 129])
def test_token_names_are_printable_text(api: WiredApi, name: str) -> None:
    response = TestClient(api.app).post("/api/v1/tokens", json={"role": "admin", "name": name},
                                        headers=_auth(api, "admin"))
    assert response.status_code == 422, response.text
    assert response.json()["details"][0]["loc"] == ["body", "name"]
    ok = TestClient(api.app).post("/api/v1/tokens", json={"role": "admin", "name": "夜班 Ana"},
                                  headers=_auth(api, "admin"))
    assert ok.status_code == 201


def test_an_expired_agent_token_makes_way_and_races_make_one(database_url: str) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    engine = make_engine(database_url)
    migrate(engine)
    Store(engine).upsert_agents([("agent-west-1", "west", [])])
    tokens = TokenStore(engine, clock=lambda: now[0])
    tokens.create("agent", agent_id="agent-west-1", ttl=timedelta(hours=1))
    with pytest.raises(AgentTokenExists):
        tokens.create("agent", agent_id="agent-west-1")
    now[0] += timedelta(hours=2)
    _, fresh = tokens.create("agent", agent_id="agent-west-1")
    with pytest.raises(TokenRefused, match="needs the agent"):
        tokens.create("agent")
    # Two processes at once: the unique index of live agent tokens lets one through.
    tokens.revoke(fresh.id)
    other = TokenStore(make_engine(database_url), clock=lambda: now[0])
    results: list[str] = []

    def make(store: TokenStore) -> None:
        try:
            store.create("agent", agent_id="agent-west-1")
            results.append("made")
        except AgentTokenExists:
            results.append("refused")

    racers = [threading.Thread(target=make, args=(s,)) for s in (tokens, other) * 3]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(results) == ["made"] + ["refused"] * 5


# ---- throttles --------------------------------------------------------------------------------


def _throttled_app(database_url: str, clock: list[float], limit: int = 5) -> tuple[Any, str]:
    engine = make_engine(database_url)
    migrate(engine)
    tokens = TokenStore(engine)
    good, _ = tokens.create("admin", "good")
    app = create_app(ApiServices(Readiness(), tokens=tokens, security=SecuritySettings(
        auth_failures=limit, auth_window_s=60)))
    failures = app.state.auth_failures
    failures.throttle.clock = lambda: clock[0]
    return app, good


def test_failed_authentication_is_throttled_per_source(database_url: str) -> None:
    clock = [1_800_000_000.0]
    app, good = _throttled_app(database_url, clock)
    client = TestClient(app)
    codes = [client.get("/api/v1/tokens", headers={"Authorization": f"Bearer wrong{i}"})
             .status_code for i in range(8)]
    assert codes == [401] * 5 + [429] * 3
    refused = client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {good}"})
    assert refused.status_code == 429  # a blocked source gets no answer about any token
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "too many failed authentications" in refused.json()["message"]
    # Bodies are refused the same way before they are read.
    posted = client.post("/api/v1/tokens", json={"role": "admin"},
                         headers={"Authorization": "Bearer wrong"})
    assert posted.status_code == 429 and "Retry-After" in posted.headers
    # The live socket counts and refuses the same way.
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": "wrong"})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4429
    clock[0] += 61  # the window is over
    assert client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {good}"}
                      ).status_code == 200


def test_the_failure_count_is_shared_by_processes(database_url: str) -> None:
    clock = [1_800_000_000.0]
    first, _ = _throttled_app(database_url, clock)
    second, good = _throttled_app(database_url, clock)  # another app on the same database
    for i in range(5):
        app = (first, second)[i % 2]
        assert TestClient(app).get("/api/v1/tokens", headers={
            "Authorization": "Bearer wrong"}).status_code == 401
    # The sixth failure, in either process, is over the shared limit.
    assert TestClient(second).get("/api/v1/tokens", headers={
        "Authorization": "Bearer wrong"}).status_code == 429


def test_throttle_counts_are_atomic_across_threads(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    throttles = [Throttle(make_engine(database_url), lambda: 1_800_000_000.0)
                 for _ in range(4)]
    workers = [threading.Thread(target=lambda t=t: [t.hit("k:x", 60) for _ in range(25)])
               for t in throttles]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert throttles[0].count("k:x", 60)[0] == 100
    with engine.connect() as connection:  # keys are stored as digests, not in clear
        stored = connection.execute(text("SELECT key FROM rate_limits")).scalars().all()
    assert stored and all("x" not in k.split(":")[1][:1] for k in stored) and stored[0] != "k:x"


def test_one_time_codes_are_limited_per_account(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    from ivr.verification.codes import AccountDirectory

    AccountDirectory(engine).add("acct-9", "13800210009")
    account = Account("acct-9", "13800210009", "none")
    outbox = OutboxSender(engine)
    options = CodeOptions(max_sends=3, send_window_s=3600)
    # Two processes' worth of code services on one database share the count.
    services = [OneTimeCodes(engine, outbox, options),
                OneTimeCodes(make_engine(database_url), outbox, options)]
    for i in range(3):
        services[i % 2].issue(account, None)
    with pytest.raises(Limited) as limited:
        services[1].issue(account, None)
    assert "one-time codes" in str(limited.value) and limited.value.retry_after_s > 0
    assert len(outbox.messages("acct-9")) == 3  # the refused request sent nothing
    other = Account("acct-8", "13800210008", "none")
    AccountDirectory(engine).add("acct-8", "13800210008")
    services[0].issue(other, None)  # another account has its own count


def test_failure_throttle_remembers_blocks_in_memory(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    clock = [1_800_000_030.0]
    failures = FailureThrottle(Throttle(engine, lambda: clock[0]), limit=2, window_s=60)
    failures.check("10.0.0.1")
    failures.failed("10.0.0.1")
    failures.failed("10.0.0.1")
    with pytest.raises(Limited) as first:
        failures.failed("10.0.0.1")
    assert first.value.retry_after_s == 30  # to the end of the window
    with pytest.raises(Limited):
        failures.check("10.0.0.1")
    failures.check("10.0.0.2")
    clock[0] += 30
    failures.check("10.0.0.1")


# ---- the rule set's bound ---------------------------------------------------------------------


def _many_rules(count: int) -> str:
    return yaml.safe_dump({"rules": [
        {"id": f"r{i:04d}", "name": f"rule {i}", "position": i,
         "when": {"intents": ["billing"]}, "then": {"target_region": "north"}}
        for i in range(count)]})


def test_one_rule_set_limit_for_every_path_and_export_reimports(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine)
    routing = RoutingService(store, RoutingSettings(), REGIONS)
    book = RuleBook(routing)
    etag = book.rule_set().etag
    book.import_yaml(_many_rules(MAX_RULES), etag, "test")
    with pytest.raises(RuleSetFull, match=f"at most {MAX_RULES}"):
        book.create({"name": "one too many", "then": {"target_region": "east"}}, "test")
    text_out, etag = book.export_yaml()
    assert len(text_out.encode()) <= MAX_EXPORT_BYTES
    outcome = book.import_yaml(text_out, etag, "test")
    assert len(outcome.unchanged) == MAX_RULES


def test_a_rule_set_whose_export_would_not_reimport_is_refused(api: WiredApi,
                                                              monkeypatch: Any) -> None:
    # The bound is checked on the export each write would leave (so an import that YAML
    # shorthand keeps small cannot make an export too big to import back). A small bound
    # here stands in for 4 MiB, which takes a thousand large rules to reach.
    monkeypatch.setattr("ivr.routing.manage.MAX_EXPORT_BYTES", 6000)
    client = TestClient(api.app)
    admin = _auth(api, "admin")
    etag = client.get(RULES, headers=admin).headers["ETag"]
    response = client.post(IMPORT, content=_many_rules(40), headers={
        **admin, "If-Match": etag, "Content-Type": "application/yaml"})
    assert response.status_code == 409, response.text[:500]
    assert "would export to" in response.json()["message"]
    assert "6000" in response.json()["message"]
    created = client.post(RULES, json={"name": "n" * 200, "then": {"target_region": "north"}},
                          headers=admin)
    shipped = len(client.get(f"{RULES}/export", headers=admin).content)
    assert (created.status_code == 409) == (shipped + 400 > 6000), (created.text, shipped)


# ---- smaller ones -----------------------------------------------------------------------------


def test_documentation_pages_are_off_unless_configured(tmp_path: Path) -> None:
    off = TestClient(create_app(Readiness()))
    assert off.get("/docs").status_code == 404 and off.get("/redoc").status_code == 404
    assert off.get("/openapi.json").status_code == 200
    on = TestClient(create_app(ApiServices(Readiness(),
                                           security=SecuritySettings(api_docs=True))))
    assert on.get("/docs").status_code == 200 and on.get("/redoc").status_code == 200


def test_database_errors_never_carry_statement_parameters(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    store = Store(engine)
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text("CREATE TRIGGER no_calls BEFORE INSERT ON calls "
                                    "BEGIN SELECT RAISE(ABORT, 'forced by the test'); END"))
        else:
            connection.execute(text(
                "CREATE FUNCTION no_calls() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'forced by the test'; END $$"))
            connection.execute(text("CREATE TRIGGER no_calls BEFORE INSERT ON calls "
                                    "FOR EACH ROW EXECUTE FUNCTION no_calls()"))
    number = "021" + "12345601"  # not as one literal: the traceback shows this source line
    with pytest.raises(DBAPIError) as raised:
        store.create_call(channel_id="ch-2", caller_number=number,
                          dialed_number="4008101111", sip_call_id="sip-10", region="east")
    assert "forced by the test" in str(raised.value)
    assert "02112345601" not in str(raised.value) and "hide_parameters" in str(raised.value)
    record = logging.makeLogRecord({"msg": "write failed", "levelno": logging.ERROR,
                                    "levelname": "ERROR", "exc_info": (
                                        type(raised.value), raised.value, raised.tb)})
    formatted = JsonFormatter().format(record)
    assert "forced by the test" in formatted and "02112345601" not in formatted


def test_numbers_with_a_plus_are_masked_for_supervisors(api: WiredApi) -> None:
    store, bus = api.services.store, api.services.bus
    assert store is not None and bus is not None
    call = store.create_call(channel_id="ch-plus", caller_number="+8613800210000",
                             dialed_number="4008101111", sip_call_id="sip-plus", region="east",
                             callback_number="+86 21 1234 5600")
    client = TestClient(api.app)
    listed = client.get("/api/v1/calls", headers=_auth(api, "supervisor")).json()["items"]
    mine = next(c for c in listed if c["call_id"] == call.id)
    assert mine["caller_number"] == "138******00"
    assert mine["callback_number"] == "021******00"
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": api.tokens["supervisor"]})
        assert ws.receive_json()["type"] == "snapshot"
        bus.publish("call", call.id, {"kind": "callback", "data": {
            "callback_number": "+8621 1234 5600", "number": "008613800210000"},
            "call": {"call_id": call.id, "caller_number": "+8613800210000"}})
        event = ws.receive_json()
    text_seen = json.dumps(event)
    assert "13800210000" not in text_seen and "12345600" not in text_seen
    assert event["data"]["call"]["caller_number"] == "138******00"
    # Security, in clear and audited: the national form people dial.
    clear = client.get(f"/api/v1/calls/{call.id}", params={"unredacted": "true"},
                       headers=_auth(api, "security")).json()
    assert clear["caller_number"] == "13800210000"


def test_voice_attempts_are_limited_per_account(database_url: str) -> None:
    from ivr.flow.voice import AttemptLimit

    engine = make_engine(database_url)
    migrate(engine)
    clock = [1_800_000_000.0]
    limits = [AttemptLimit(Throttle(make_engine(database_url), lambda: clock[0]), 3,
                           3600) for _ in range(2)]  # two processes
    for i in range(3):
        limits[i % 2].take("acct-1")
    with pytest.raises(Limited, match="voice verification attempts"):
        limits[0].take("acct-1")
    limits[1].take("acct-2")
    clock[0] += 3600
    limits[0].take("acct-1")
