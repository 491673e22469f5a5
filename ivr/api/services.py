"""What the API reads from and acts on, passed in by whoever builds the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException

from ivr.auth.tokens import TokenStore
from ivr.bus import EventBus
from ivr.health import Readiness
from ivr.routing.service import RoutingService
from ivr.settings import PrivacySettings, SecuritySettings
from ivr.store.repository import Store
from ivr.verification.codes import AccountDirectory, OutboxSender

if TYPE_CHECKING:
    from ivr.flow.monitor import Monitor
    from ivr.metrics import MetricsRecorder
    from voiceprint.service import VoiceprintService


@dataclass
class ApiServices:
    """Everything but ``readiness`` is optional: a bare process serves health and ready only."""

    readiness: Readiness
    store: Store | None = None
    routing: RoutingService | None = None
    outbox: OutboxSender | None = None  # the development code sender's messages
    tokens: TokenStore | None = None
    privacy: PrivacySettings = field(default_factory=PrivacySettings)  # type: ignore[arg-type]
    security: SecuritySettings = field(default_factory=SecuritySettings)  # type: ignore[arg-type]
    accounts: AccountDirectory | None = None
    voiceprint: VoiceprintService | None = None
    bus: EventBus | None = None
    # The controller's live view: a snapshot of active calls, queues and agents.
    snapshot: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # Supervisor monitoring: (call_id, mode, extension) -> what was started.
    supervise: Callable[[str, str, str], Awaitable[dict[str, Any]]] | None = None
    # ...and from the browser: (call_id, mode, who) -> the monitor with its audio; its end.
    supervise_in_browser: Callable[[str, str, str], Awaitable[Monitor]] | None = None
    end_browser_monitor: Callable[[Monitor, str], Awaitable[None]] | None = None
    metrics: MetricsRecorder | None = None

    def need_store(self) -> Store:
        """The store, or 503."""
        if self.store is None:
            raise HTTPException(503, "the call store is not available in this process")
        return self.store

    def need_routing(self) -> RoutingService:
        """Routing, or 503."""
        if self.routing is None:
            raise HTTPException(503, "routing is not available in this process")
        return self.routing

    def need_voiceprint(self) -> VoiceprintService:
        """Tier 2's records (with or without a model), or 503 when this process has no store."""
        if self.voiceprint is None:
            reason = self.readiness.degraded().get("voiceprint", "not configured")
            raise HTTPException(503, f"voiceprint records are not available in this process: "
                                f"{reason}")
        return self.voiceprint
