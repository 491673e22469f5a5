#!/usr/bin/env python3
"""Benchmark what the security hardening costs and what it holds off; prints one JSON object.

Sections (each measured side by side in the same run, on this machine):

* ``fields``: sealing and opening one caller number (AES-GCM under a data key), and a call row
  written then read through the store, with sealed columns versus in clear (same SQLite, same
  run: the ratio is the cost of encryption at rest).
* ``throttle``: one database-backed throttle count (the upsert every failed authentication,
  code send and voice attempt makes).
* ``health_under_attack``: ``GET /health`` latency (p50/p99) on a real uvicorn server while
  ``--attackers`` clients keep announcing 839 MB bodies without a token (each answered 413 at
  once), next to the same server idle.
* ``rules``: creating one rule when the set already holds 999 (the export-size check of every
  write), and ``/routing/simulate`` over that set.

Usage: .venv/bin/python scripts/bench_security.py [--calls 300] [--attackers 8] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGIONS = ("north", "east", "south", "west")


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def bench_fields(calls: int) -> dict[str, Any]:
    from ivr.store import crypto
    from ivr.store.db import make_engine, migrate, sqlite_url
    from ivr.store.repository import Store
    from voiceprint.templates import MasterKey

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for kind in ("clear", "sealed"):
            folder = Path(tmp) / kind
            folder.mkdir()
            engine = make_engine(sqlite_url(folder))
            migrate(engine)
            if kind == "sealed":
                crypto.install(engine, crypto.FieldKeys(engine, MasterKey(os.urandom(32))))
            engines[kind] = Store(engine)
        keys = crypto.keys_for(engines["sealed"].engine)
        assert keys is not None
        started = time.perf_counter()
        sealed = [keys.seal("+8613800210000", "calls.caller_number") for _ in range(10_000)]
        out["seal_us"] = round((time.perf_counter() - started) / 10_000 * 1e6, 2)
        started = time.perf_counter()
        for value in sealed:
            keys.open(value, "calls.caller_number")
        out["open_us"] = round((time.perf_counter() - started) / 10_000 * 1e6, 2)
        per_call: dict[str, float] = {"clear": 0.0, "sealed": 0.0}
        for i in range(calls):  # interleaved, so both see the same machine
            for kind, store in engines.items():
                started = time.perf_counter()
                call = store.create_call(channel_id=f"ch-{i}", caller_number="+8613800210000",
                                         dialed_number="4008101111", sip_call_id=f"s-{i}",
                                         region="east", callback_number="+8613912345678")
                store.get_call(call.id)
                per_call[kind] += time.perf_counter() - started
        out["call_write_read_ms"] = {k: round(v / calls * 1000, 3) for k, v in per_call.items()}
        out["sealed_over_clear"] = round(per_call["sealed"] / per_call["clear"], 3)
    return out


def bench_throttle(count: int = 500) -> dict[str, Any]:
    from ivr.auth.throttle import Throttle
    from ivr.store.db import make_engine, migrate, sqlite_url

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(sqlite_url(Path(tmp)))
        migrate(engine)
        throttle = Throttle(engine)
        times = []
        for i in range(count):
            started = time.perf_counter()
            throttle.hit(f"auth:10.0.{i % 7}.1", 60)
            times.append(time.perf_counter() - started)
    return {"hit_p50_ms": _ms(times, 0.5), "hit_p99_ms": _ms(times, 0.99)}


class _Server:
    def __init__(self, app: Any) -> None:
        import uvicorn

        from ivr.asterisk.instance import free_port

        self.port = free_port("tcp")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def bench_health(attackers: int, requests: int) -> dict[str, Any]:
    import httpx

    from ivr.api.app import ApiServices, create_app
    from ivr.auth.tokens import TokenStore
    from ivr.health import Readiness
    from ivr.store.db import make_engine, migrate, sqlite_url

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(sqlite_url(Path(tmp)))
        migrate(engine)
        server = _Server(create_app(ApiServices(Readiness(), tokens=TokenStore(engine))))
        stop = threading.Event()
        refused = [0]

        def attack() -> None:
            head = (b"POST /api/v1/routing/simulate HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 839000000\r\n\r\n")
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                        s.sendall(head + b"{" * 65536)
                        if b" 413 " in s.recv(256):
                            refused[0] += 1
                except OSError:
                    pass

        def health_times() -> list[float]:
            times = []
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
                for _ in range(requests):
                    started = time.perf_counter()
                    assert client.get("/api/v1/health").status_code == 200
                    times.append(time.perf_counter() - started)
            return times

        try:
            idle = health_times()
            threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            attacked = health_times()
            stop.set()
            for thread in threads:
                thread.join(10)
        finally:
            server.stop()
    return {"idle_p50_ms": _ms(idle, 0.5), "idle_p99_ms": _ms(idle, 0.99),
            "attacked_p50_ms": _ms(attacked, 0.5), "attacked_p99_ms": _ms(attacked, 0.99),
            "attacked_over_idle_p99": round(_ms(attacked, 0.99) / max(_ms(idle, 0.99), 1e-3), 2),
            "oversized_bodies_refused": refused[0], "attackers": attackers}


def bench_rules() -> dict[str, Any]:
    import yaml

    from ivr.routing.manage import RuleBook
    from ivr.routing.service import RoutingService
    from ivr.settings import RoutingSettings
    from ivr.store.db import make_engine, migrate, sqlite_url
    from ivr.store.repository import Store

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(sqlite_url(Path(tmp)))
        migrate(engine)
        routing = RoutingService(Store(engine), RoutingSettings(), REGIONS)
        book = RuleBook(routing)
        document = yaml.safe_dump({"rules": [
            {"id": f"r{i:04d}", "name": f"rule {i}", "position": i,
             "when": {"intents": ["billing"], "regions": ["south"]},
             "then": {"target_region": "north"}} for i in range(999)]})
        book.import_yaml(document, book.rule_set().etag, "bench")
        started = time.perf_counter()
        book.create({"name": "the thousandth", "then": {"target_region": "east"}}, "bench")
        create_ms = (time.perf_counter() - started) * 1000
        routing.refresh()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            routing.simulate("13800210000", "complaint", None)
            times.append(time.perf_counter() - started)
    return {"create_at_999_rules_ms": round(create_ms, 1), "simulate_1000_rules_p50_ms":
            _ms(times, 0.5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--attackers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "fields": bench_fields(args.calls), "throttle": bench_throttle(),
              "health_under_attack": bench_health(args.attackers, args.requests),
              "rules": bench_rules()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
