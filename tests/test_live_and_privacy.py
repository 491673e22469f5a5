"""The live WebSocket (snapshot, events, resumption by sequence number), redaction before data
leaves the API (with audited reads in clear), and the Prometheus metrics fed by the same bus."""

from __future__ import annotations

import pytest
from api_app import WiredApi, wired_api
from fastapi.testclient import TestClient

pytestmark = [pytest.mark.unit, pytest.mark.model]


@pytest.fixture()
def api(tmp_path_factory: pytest.TempPathFactory) -> WiredApi:
    from voiceprint.testing.tiny_ecapa import build_tiny_ecapa

    return wired_api(tmp_path_factory.mktemp("live"), build_tiny_ecapa())


def _auth(api: WiredApi, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens[role]}"}


def _publish(api: WiredApi, n: int, start: int = 0) -> None:
    bus = api.services.bus
    assert bus is not None
    for i in range(start, start + n):
        bus.publish("transcript.final", api.call_id, {
            "speaker": "caller", "start_s": float(i), "end_s": i + 0.5,
            "text": f"第{i}句 我的手机是13800138000", "language": "zh", "intent": None})


def test_reconnect_with_last_seq_misses_nothing(api: WiredApi) -> None:
    client = TestClient(api.app)
    received: list[int] = []
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": api.tokens["supervisor"]})
        snapshot = ws.receive_json()
        assert snapshot["type"] == "snapshot"
        epoch, seen = snapshot["epoch"], snapshot["seq"]
        _publish(api, 5)
        for _ in range(5):
            event = ws.receive_json()
            received.append(event["seq"])
            # Personal data is redacted before it leaves, on the live socket too.
            assert "13800138000" not in event["data"]["text"]
            assert "[PHONE]" in event["data"]["text"]
        seen = received[-1]
    _publish(api, 7, start=5)  # while the supervisor is disconnected
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_json({"type": "auth", "token": api.tokens["supervisor"], "last_seq": seen,
                      "epoch": epoch})
        for _ in range(7):
            event = ws.receive_json()
            assert event["type"] == "event"
            received.append(event["seq"])
        _publish(api, 1, start=12)
        received.append(ws.receive_json()["seq"])
    assert received == list(range(received[0], received[0] + 13))


def test_resume_from_another_epoch_or_a_forgotten_seq_gets_a_snapshot(api: WiredApi) -> None:
    client = TestClient(api.app)
    bus = api.services.bus
    assert bus is not None
    bus.history_size = 3
    _publish(api, 10)
    for hello in ({"last_seq": 2, "epoch": bus.epoch}, {"last_seq": 9, "epoch": "other"}):
        with client.websocket_connect("/api/v1/live") as ws:
            ws.send_json({"type": "auth", "token": api.tokens["admin"], **hello})
            first = ws.receive_json()
            assert first["type"] == "snapshot" and first["seq"] == bus.last_seq


def test_transcripts_are_redacted_unless_an_allowed_role_asks_and_is_audited(
        api: WiredApi) -> None:
    client = TestClient(api.app)
    url = f"/api/v1/calls/{api.call_id}/transcript"
    redacted = client.get(url, headers=_auth(api, "supervisor")).json()
    assert redacted[0]["text"] == "我的手机号是[PHONE]"
    assert client.get(url, params={"unredacted": "true"},
                      headers=_auth(api, "supervisor")).status_code == 403
    clear = client.get(url, params={"unredacted": "true"}, headers=_auth(api, "security"))
    assert clear.json()[0]["text"] == "我的手机号是13800138000"
    call = client.get(f"/api/v1/calls/{api.call_id}", headers=_auth(api, "supervisor")).json()
    assert call["caller_number"] == "138******00"
    tokens = api.services.tokens
    assert tokens is not None
    reads = tokens.reads()
    assert [(r.role, r.action, r.resource) for r in reads] == [
        ("security", "read_unredacted", f"calls/{api.call_id}/transcript")]


def test_agents_see_only_their_own_calls(api: WiredApi) -> None:
    client = TestClient(api.app)
    store = api.services.store
    assert store is not None
    assert client.get(f"/api/v1/calls/{api.call_id}",
                      headers=_auth(api, "agent")).status_code == 404
    tokens = api.services.tokens
    assert tokens is not None
    own, _ = tokens.create("agent", "east desk 1", agent_id="agent-east-1")
    store.update_call(api.call_id, agent_id="agent-east-1")
    assert client.get(f"/api/v1/calls/{api.call_id}",
                      headers={"Authorization": f"Bearer {own}"}).status_code == 200


def test_metrics_follow_the_bus(api: WiredApi) -> None:
    metrics, bus = api.services.metrics, api.services.bus
    assert metrics is not None and bus is not None
    row = {"call_id": "c1", "intent": "billing", "region": "east", "state": "queued",
           "route_region": "east", "queued_at": "2026-11-21T10:00:00+00:00",
           "connected_at": "2026-11-21T10:00:12+00:00"}
    for kind, data, state in (("routed", {"region": "east", "action": "queue"}, "routing"),
                              ("connected", {}, "connected"),
                              ("voice_decision", {"tier2": "reject"}, "voice_check"),
                              ("ended", {"cause": "caller_hangup:connected"}, "ended")):
        metrics.observe(bus.publish("call", "c1", {"kind": kind, "data": data,
                                                   "call": {**row, "state": state}}))
    metrics.observe(bus.publish("transcript.final", "c1", {"text": "x", "seconds": 0.8}))
    client = TestClient(api.app)
    assert client.get("/metrics", headers=_auth(api, "security")).status_code == 403
    text = client.get("/metrics", headers=_auth(api, "supervisor")).text
    assert 'ivr_calls_routed_total{intent="billing",region="east"} 1.0' in text
    assert 'ivr_routing_outcomes_total{action="queue"} 1.0' in text
    assert 'ivr_queue_wait_seconds_bucket{le="20.0",region="east"} 1.0' in text
    assert 'ivr_queue_wait_seconds_bucket{le="10.0",region="east"} 0.0' in text
    assert 'ivr_verification_outcomes_total{result="reject",tier="tier2"} 1.0' in text
    assert 'ivr_calls_ended_total{cause="caller_hangup"} 1.0' in text
    assert "ivr_active_calls 0.0" in text
    assert 'ivr_asr_latency_seconds_bucket{le="1.0"} 1.0' in text
