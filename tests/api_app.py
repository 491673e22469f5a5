"""A fully wired API app for in-process tests: real store, routing, tokens, tier 2 (tiny ECAPA)
and a controller that is not connected to any PBX (its live view and monitor paths run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from ivr.api.app import create_app
from ivr.api.services import ApiServices
from ivr.asterisk.instance import AriCredentials
from ivr.auth.tokens import ROLES, TokenStore
from ivr.bus import EventBus
from ivr.flow.controller import HotlineController, distributor_for
from ivr.flow.session import Prompts
from ivr.health import Readiness
from ivr.metrics import MetricsRecorder
from ivr.routing.service import RoutingService
from ivr.settings import FlowSettings, RoutingSettings, SecuritySettings
from ivr.store.db import make_engine, migrate, sqlite_url
from ivr.store.repository import Store
from ivr.verification.codes import AccountDirectory, OutboxSender
from voiceprint.embedding import EmbedderOptions, load_embedder
from voiceprint.service import VoiceprintService
from voiceprint.templates import MasterKey

REGIONS = ("north", "east", "south", "west")


@dataclass
class WiredApi:
    """The app, its services, one token per role, and ids that exist in the store."""

    app: FastAPI
    services: ApiServices
    tokens: dict[str, str]
    call_id: str
    account_id: str
    audit_seq: int
    token_id: str


def wired_api(tmp: Path, ecapa: Path, security: SecuritySettings | None = None,
              database_url: str | None = None) -> WiredApi:
    """Build the app on a fresh database (``database_url``, or SQLite in ``tmp``)."""
    engine = make_engine(database_url or sqlite_url(tmp))
    migrate(engine)
    store = Store(engine)
    routing = RoutingService(store, RoutingSettings(), REGIONS)
    routing.seed_rules()
    store.upsert_agents([("agent-east-1", "east", []), ("agent-east-2", "east", []),
                         ("agent-north-1", "north", [])])
    token_store = TokenStore(engine)
    tokens = {role: token_store.create(role, f"test-{role}", agent_id="agent-north-1"
                                       if role == "agent" else None)[0] for role in ROLES}
    spare = token_store.create("agent", "spare", agent_id="agent-east-2")[1]
    accounts = AccountDirectory(engine)
    accounts.add("acct-1", "13800210000")
    voice = VoiceprintService(engine, load_embedder(EmbedderOptions(ecapa, device="cpu")),
                              MasterKey.from_config("ab" * 32))
    record = voice.delete("acct-1", "setup")  # one audit record to refer to
    call = store.create_call(channel_id="ch-1", caller_number="13800210000",
                             dialed_number="4008101111", sip_call_id="sip-1", region="east")
    store.add_transcript(call.id, speaker="caller", start_s=0.1, end_s=1.2,
                         text="我的手机号是13800138000", language="zh", confidence=0.9,
                         model="tiny", intent=None, intent_confidence=None,
                         dropped_reason=None)
    readiness = Readiness()
    bus = EventBus()
    controller = HotlineController(
        AriCredentials("http://127.0.0.1:9", "u", "p", "ivr"), readiness, store, routing,
        distributor_for((("agent-east-1", "east"),), {}, 0.0), Prompts("/nowhere"),
        FlowSettings(), bus=bus, supervisor_phones=("supervisor-1",))
    services = ApiServices(readiness, store, routing, OutboxSender(engine), token_store,
                           accounts=accounts, voiceprint=voice, bus=bus,
                           snapshot=controller.snapshot, supervise=controller.supervise,
                           metrics=MetricsRecorder(bus),
                           # Role and fuzz tests send many bad tokens from one address; the
                           # throttle has tests of its own.
                           security=security or SecuritySettings(auth_failures=100_000))
    return WiredApi(create_app(services), services, tokens, call.id, "acct-1", record.seq,
                    spare.id)
