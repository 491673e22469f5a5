"""Every endpoint x {no token, each role}: allowed roles get through, others get 401/403.

The table below is the access policy, written independently of the code; a new endpoint that
is missing here fails the first test, so nothing ships without a declared policy.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_app import WiredApi, wired_api
from fastapi.testclient import TestClient

from ivr.auth.tokens import ROLES

from conftest import ENGINES, new_database

pytestmark = [pytest.mark.unit, pytest.mark.model]

A, S, SEC, AG = "admin", "supervisor", "security", "agent"
PUBLIC = None
POLICY: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("get", "/api/v1/health"): PUBLIC,
    ("get", "/api/v1/ready"): PUBLIC,
    ("get", "/metrics"): (A, S),
    ("get", "/api/v1/models"): (A,),
    ("get", "/api/v1/calls"): (A, S, SEC),
    ("get", "/api/v1/calls/{call_id}"): (A, S, SEC, AG),
    ("get", "/api/v1/calls/{call_id}/transcript"): (A, S, SEC, AG),
    ("post", "/api/v1/calls/{call_id}/monitor"): (A, S),
    ("get", "/api/v1/verification/outbox"): (A,),
    ("get", "/api/v1/routing/rules"): (A, S),
    ("post", "/api/v1/routing/rules"): (A,),
    ("get", "/api/v1/routing/rules/history"): (A, S),
    ("get", "/api/v1/routing/rules/export"): (A, S),
    ("post", "/api/v1/routing/rules/import"): (A,),
    ("get", "/api/v1/routing/rules/{rule_id}"): (A, S),
    ("put", "/api/v1/routing/rules/{rule_id}"): (A,),
    ("delete", "/api/v1/routing/rules/{rule_id}"): (A,),
    ("post", "/api/v1/routing/simulate"): (A, S),
    ("get", "/api/v1/voiceprint/attempts"): (SEC,),
    ("get", "/api/v1/voiceprint/audit/verify"): (SEC,),
    ("post", "/api/v1/voiceprint/attempts/{seq}/notes"): (SEC,),
    ("get", "/api/v1/voiceprint/accounts/{account_id}"): (SEC,),
    ("delete", "/api/v1/voiceprint/accounts/{account_id}"): (SEC,),
    ("post", "/api/v1/voiceprint/accounts/{account_id}/enrollment"): (SEC,),
    ("post", "/api/v1/voiceprint/accounts/{account_id}/revoke"): (SEC,),
    ("post", "/api/v1/voiceprint/accounts/{account_id}/reenable"): (SEC,),
    ("get", "/api/v1/tokens"): (A,),
    ("post", "/api/v1/tokens"): (A,),
    ("delete", "/api/v1/tokens/{token_id}"): (A,),
}


@pytest.fixture(scope="module", params=ENGINES)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> WiredApi:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    folder = tmp_path_factory.mktemp("roles")
    return wired_api(folder, build_tiny_ecapa(), database_url=new_database(request, folder))


def _url(api: WiredApi, path: str) -> str:
    return (path.replace("{call_id}", api.call_id).replace("{account_id}", api.account_id)
            .replace("{seq}", str(api.audit_seq)).replace("{token_id}", "no-such-token")
            .replace("{rule_id}", "no-such-rule"))


def _body(method: str, path: str) -> dict[str, Any]:
    if method not in ("post", "put"):
        return {}
    if path.endswith("/simulate"):
        return {"json": {"caller_number": "13800210000", "intent": "billing"}}
    if path.endswith("/monitor"):
        return {"json": {"mode": "listen", "phone": "supervisor-1"}}
    if path.endswith("/notes"):
        return {"json": {"note": "looked at it"}}
    if path == "/api/v1/tokens":
        return {"json": {"role": "supervisor", "name": "new"}}
    return {"json": {}}


def test_every_endpoint_has_a_declared_policy(api: WiredApi) -> None:
    operations = {(method, path) for path, ops in api.app.openapi()["paths"].items()
                  for method in ops}
    assert operations == set(POLICY)


@pytest.mark.parametrize(("method", "path"), sorted(POLICY))
def test_roles_of_each_endpoint(api: WiredApi, method: str, path: str) -> None:
    client = TestClient(api.app)
    allowed = POLICY[(method, path)]
    url, body = _url(api, path), _body(method, path)
    anonymous = client.request(method, url, **body)
    if allowed is None:  # /ready is 503 here: this app has no PBX connection
        assert anonymous.status_code in (200, 503)
        return
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert set(anonymous.json()) == {"status", "error_id", "message", "details"}
    bogus = client.request(method, url, headers={"Authorization": "Bearer ivr_x_y"}, **body)
    assert bogus.status_code == 401
    for role in ROLES:
        response = client.request(method, url, **body,
                                  headers={"Authorization": f"Bearer {api.tokens[role]}"})
        if role in allowed:
            assert response.status_code not in (401, 403), (role, response.text)
            assert response.status_code < 500, (role, response.text)
        else:
            assert response.status_code == 403, (role, response.status_code, response.text)
            assert response.json()["status"] == 403


def test_revoked_and_expired_tokens_are_refused(api: WiredApi) -> None:
    from datetime import timedelta

    store = api.services.tokens
    assert store is not None
    client = TestClient(api.app)
    token, info = store.create("supervisor", "short")
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/calls", headers=auth).status_code == 200
    admin = {"Authorization": f"Bearer {api.tokens['admin']}"}
    assert client.delete(f"/api/v1/tokens/{info.id}", headers=admin).status_code == 204
    assert client.get("/api/v1/calls", headers=auth).status_code == 401
    expired, _ = store.create("supervisor", "old", timedelta(microseconds=1))
    assert client.get("/api/v1/calls",
                      headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    listed = client.get("/api/v1/tokens", headers=admin).json()
    assert all("token" not in t and "hash" not in str(t) for t in listed)


def test_live_socket_needs_a_supervising_token(api: WiredApi) -> None:
    client = TestClient(api.app)
    from starlette.websockets import WebSocketDisconnect

    for token, code in (("nope", 4401), (api.tokens["agent"], 4403),
                        (api.tokens["security"], 4403)):
        with client.websocket_connect("/api/v1/live") as ws:
            ws.send_json({"type": "auth", "token": token})
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == code
    # The browser monitor's socket: the same roles; this app has no call control (4503).
    for token, code in (("nope", 4401), (api.tokens["agent"], 4403),
                        (api.tokens["security"], 4403), (api.tokens["supervisor"], 4503)):
        with client.websocket_connect(f"/api/v1/calls/{api.call_id}/listen") as ws:
            ws.send_json({"type": "auth", "token": token, "mode": "listen"})
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == code
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": api.tokens["supervisor"]})
        snapshot = ws.receive_json()
        assert snapshot["type"] == "snapshot"
        assert [c["caller_number"] for c in snapshot["calls"]] == ["138******00"]


