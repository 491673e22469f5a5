"""Prometheus metrics, fed from the live event bus so the call path has no metrics code in it.

A :class:`MetricsRecorder` subscribes to the bus and turns call events and transcripts into
counters and histograms; ``/metrics`` renders its registry in the text exposition format.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ivr.bus import BusEvent, EventBus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_WAIT_BUCKETS = (1, 5, 10, 20, 30, 60, 120, 300, 600)
_ASR_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)


class MetricsRecorder:
    """Counters of one process, updated from bus events."""

    def __init__(self, bus: EventBus | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("ivr_active_calls", "Calls not yet ended", registry=r)
        self.calls = Counter("ivr_calls_routed_total", "Calls routed, by intent and region",
                             ["intent", "region"], registry=r)
        self.outcomes = Counter("ivr_routing_outcomes_total",
                                "Where routing sent calls (queue, callback, after_hours...)",
                                ["action"], registry=r)
        self.ended = Counter("ivr_calls_ended_total", "Ended calls by how they ended",
                             ["cause"], registry=r)
        self.queue_wait = Histogram("ivr_queue_wait_seconds", "Queued until an agent answered",
                                    ["region"], buckets=_WAIT_BUCKETS, registry=r)
        self.asr_latency = Histogram("ivr_asr_latency_seconds",
                                     "End of an utterance until its transcript",
                                     buckets=_ASR_BUCKETS, registry=r)
        self.verification = Counter("ivr_verification_outcomes_total",
                                    "Identity check results by tier", ["tier", "result"],
                                    registry=r)
        self.monitors = Counter("ivr_monitors_started_total", "Supervisor monitors by mode",
                                ["mode"], registry=r)
        self.live_events = Counter("ivr_live_events_total", "Events published to live views",
                                   ["kind"], registry=r)
        self.ari_lag = Gauge("ivr_ari_event_lag_seconds",
                             "How late ARI events are handled (Asterisk's event time to the "
                             "controller's dispatch), over the last 1,000 events",
                             ["quantile"], registry=r)
        self.loop_lag_p99 = Gauge("ivr_event_loop_lag_p99_seconds",
                                  "99th percentile of how late the event loop ran a 50 ms "
                                  "timer over the last minute", registry=r)
        self.loop_lag_max = Gauge("ivr_event_loop_lag_max_seconds",
                                  "Largest event-loop lag since the process started",
                                  registry=r)
        self.refused = Gauge("ivr_calls_refused_total",
                             "Calls refused before answer by admission control", registry=r)
        self.journal_pending = Gauge("ivr_store_writes_pending",
                                     "Call writes kept while the database is unavailable",
                                     registry=r)
        self._sources: list[Any] = []
        self._live: set[str] = set()
        self._bus = bus
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the bus in a task (call from inside the event loop)."""
        if self._bus is not None and self._task is None:
            self._task = asyncio.create_task(self._follow(self._bus))

    async def aclose(self) -> None:
        """Stop following the bus."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, bus: EventBus) -> None:
        sub = bus.subscribe()
        try:
            while True:
                self.observe(await sub.queue.get())
        finally:
            bus.unsubscribe(sub)

    def observe(self, event: BusEvent) -> None:
        """Update the metrics from one bus event (this node's: with several nodes the bus
        carries every node's events, and each node's /metrics counts its own)."""
        own = self._bus.node_id if self._bus is not None else None
        if event.node is not None and event.node != own:
            return
        self.live_events.labels(event.kind).inc()
        if event.kind == "transcript.final":
            seconds = event.data.get("seconds")
            if isinstance(seconds, int | float):
                self.asr_latency.observe(seconds)
        elif event.kind == "call":
            self._call_event(event.call_id, str(event.data.get("kind")),
                             event.data.get("data") or {}, event.data.get("call") or {})

    def _call_event(self, call_id: str, kind: str, data: dict[str, Any],
                    call: dict[str, Any]) -> None:
        if call.get("state") == "ended" or kind == "ended":
            self._live.discard(call_id)
        else:
            self._live.add(call_id)
        self.active_calls.set(len(self._live))
        if kind == "routed":
            self.calls.labels(call.get("intent") or "unknown",
                              data.get("region") or call.get("region") or "none").inc()
            self.outcomes.labels(str(data.get("action", "unknown"))).inc()
        elif kind == "connected":
            wait = _seconds_between(call.get("queued_at"), call.get("connected_at"))
            if wait is not None:
                self.queue_wait.labels(call.get("route_region") or "none").observe(wait)
        elif kind == "ended":
            self.ended.labels(str(data.get("cause", "unknown")).split(":")[0]).inc()
        elif kind == "code_checked":
            self.verification.labels("tier1", str(data.get("reason"))).inc()
        elif kind == "voice_decision":
            self.verification.labels("tier2", str(data.get("tier2"))).inc()
        elif kind == "monitor_started":
            self.monitors.labels(str(data.get("mode"))).inc()

    def follow_process(self, lag: Any = None, controller: Any = None,
                       journal: Any = None) -> None:
        """Read these at every scrape: the loop-lag monitor, the controller's refusal count,
        the call journal's backlog (any may be None)."""
        self._sources = [lag, controller, journal]

    def render(self) -> bytes:
        """The exposition text."""
        lag, controller, journal = self._sources or (None, None, None)
        if lag is not None:
            self.loop_lag_p99.set(lag.p99_s())
            self.loop_lag_max.set(lag.max_s)
        if controller is not None:
            self.refused.set(controller.refused_total)
            for quantile, seconds in controller.event_lag.quantiles().items():
                self.ari_lag.labels(quantile).set(seconds)
        if journal is not None:
            self.journal_pending.set(journal.pending)
        return bytes(generate_latest(self.registry))


def _seconds_between(start: object, end: object) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    return max((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(),
               0.0)
