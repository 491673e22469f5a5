#!/usr/bin/env python3
"""Benchmark the shared state of several nodes; prints one JSON object.

Both engines in the same run (SQLite in a temporary folder, and a private PostgreSQL server
started for the run, as `make test` does), so the ratios are side by side:

* ``claims``: one agent claim plus its release through the shared ledger (the two writes every
  call that reaches an agent makes), single client, p50/p99.
* ``contention``: ``--nodes`` threads (one engine each, as separate nodes) claiming and
  releasing ``--agents`` agents as fast as they can for ``--seconds``; claims granted per
  second, refusals (another node held the agent), and a check that no agent was ever held for
  two calls at once.
* ``lease``: one lease renewal (every node, every third of the lease).
* ``broker`` (when ``redis-server`` is installed): publish on one node to delivery on another
  through a Redis stream, p50/p99 and events per second, next to the in-process bus.

Usage: .venv/bin/python scripts/bench_cluster.py [--nodes 4] [--agents 20] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


def _prepare(url: str, agents: int) -> Any:
    from ivr.store.db import make_engine, migrate
    from ivr.store.repository import Store

    engine = make_engine(url)
    migrate(engine)
    Store(engine).upsert_agents([(f"agent-{i}", "east", []) for i in range(agents)])
    return engine


def bench_claims(url: str, rounds: int) -> dict[str, Any]:
    from ivr.routing.ledger import AgentLedger
    from ivr.store.db import make_engine

    ledger = AgentLedger(make_engine(url), "bench")
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        assert ledger.claim("agent-0", f"call-{i}")
        ledger.release("agent-0", f"call-{i}", 0.0, talked=False)
        times.append(time.perf_counter() - started)
    return {"claim_and_release_p50_ms": _ms(times, 0.5), "p99_ms": _ms(times, 0.99),
            "rounds": rounds}


def bench_contention(url: str, nodes: int, agents: int, seconds: float) -> dict[str, Any]:
    from ivr.routing.ledger import AgentLedger
    from ivr.store.db import make_engine

    holders: dict[str, str] = {}
    lock = threading.Lock()
    stats = {"granted": 0, "refused": 0, "errors": 0, "double": 0}
    stop = time.monotonic() + seconds

    def node(index: int) -> None:
        ledger = AgentLedger(make_engine(url), f"node-{index}")
        n = 0
        while time.monotonic() < stop:
            agent = f"agent-{(n * 7 + index) % agents}"
            call = f"n{index}-{n}"
            n += 1
            try:
                granted = ledger.claim(agent, call)
            except Exception:  # noqa: BLE001 - counted (SQLite: database is locked)
                stats["errors"] += 1
                continue
            if not granted:
                with lock:
                    stats["refused"] += 1
                continue
            with lock:
                if agent in holders:
                    stats["double"] += 1
                holders[agent] = call
                stats["granted"] += 1
            with lock:
                holders.pop(agent, None)
            try:
                ledger.release(agent, call, 0.0, talked=False)
            except Exception:  # noqa: BLE001
                stats["errors"] += 1

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"nodes": nodes, "agents": agents, "seconds": seconds,
            "claims_per_s": round(stats["granted"] / seconds, 1),
            "refused_per_s": round(stats["refused"] / seconds, 1),
            "errors": stats["errors"], "agents_held_twice": stats["double"]}


def bench_lease(url: str, rounds: int) -> dict[str, Any]:
    from ivr.store.db import make_engine
    from ivr.store.nodes import NodeLease

    lease = NodeLease(make_engine(url), "bench-node", 15.0)
    lease.register()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        lease.renew()
        times.append(time.perf_counter() - started)
    return {"renew_p50_ms": _ms(times, 0.5), "p99_ms": _ms(times, 0.99)}


async def _broker(url: str | None, events: int) -> dict[str, Any]:
    from ivr.broker import StreamBus
    from ivr.bus import EventBus

    if url is None:
        a = b = EventBus()
    else:
        a, b = StreamBus(url=url, node_id="a"), StreamBus(url=url, node_id="b")
        await a.start()
        await b.start()
        for _ in range(500):  # up to 5 s
            if a.connected and b.connected:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
    sub = b.subscribe()
    sent: dict[int, float] = {}
    latencies = []
    started = time.perf_counter()
    for i in range(events):
        sent[i] = time.perf_counter()
        a.publish("call", f"c{i}", {"i": i})
        if i % 50 == 49:  # a burst, then wait for it to arrive (the live board's pattern)
            while not sub.queue.empty() or len(latencies) < i + 1:
                event = await asyncio.wait_for(sub.queue.get(), 5)
                latencies.append(time.perf_counter() - sent[event.data["i"]])
    while len(latencies) < events:
        event = await asyncio.wait_for(sub.queue.get(), 5)
        latencies.append(time.perf_counter() - sent[event.data["i"]])
    elapsed = time.perf_counter() - started
    if url is not None:
        await a.aclose()  # type: ignore[union-attr]
        await b.aclose()  # type: ignore[union-attr]
    return {"delivery_p50_ms": _ms(latencies, 0.5), "p99_ms": _ms(latencies, 0.99),
            "events_per_s": round(events / elapsed)}


def bench_broker(events: int) -> dict[str, Any]:
    redis = shutil.which("redis-server")
    result: dict[str, Any] = {"in_process": asyncio.run(_broker(None, events))}
    if redis is None:
        result["redis"] = "redis-server is not installed"
        return result
    from ivr.store.postgres import free_tcp_port

    port = free_tcp_port()
    folder = tempfile.mkdtemp(prefix="ivr-redis-")
    proc = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        result["redis_stream"] = asyncio.run(_broker(f"redis://127.0.0.1:{port}/0", events))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()

    from ivr.store.db import sqlite_url
    from ivr.store.postgres import LocalPostgres

    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    root = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
    root.chmod(0o755)
    try:
        with LocalPostgres(root / "pg") as server:
            for name, url in (("sqlite", sqlite_url(root / "sqlite")),
                              ("postgresql", server.create_database("bench"))):
                (root / "sqlite").mkdir(exist_ok=True)
                _prepare(url, args.agents)
                out[name] = {
                    "claims": bench_claims(url, args.rounds),
                    "contention": bench_contention(url, args.nodes, args.agents, args.seconds),
                    "lease": bench_lease(url, args.rounds),
                }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["broker"] = bench_broker(args.events)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
