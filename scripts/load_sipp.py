#!/usr/bin/env python3
"""Load the hotline with SIPp (Debian ``sip-tester``) on one node and on two; one JSON object.

A cluster (``ivr cluster``: PostgreSQL, Redis, Kamailio, and ``--nodes`` Asterisk + controller
pairs) is started in a temporary folder; the agents of every region register at Kamailio as
pjsua2 phones that answer and talk. Then, for each step of ``--steps`` (simultaneous callers),
SIPp sends that many callers through Kamailio, ramped over ``--ramp`` seconds: each waits
through the greeting, presses 1 (RFC 4733, SIPp's own recording) and stays on the line for
``--hold`` seconds, talking to an agent or waiting in the queue, then hangs up.

Per step: SIPp's finished / failed calls; calls stored, and stored with a routing decision
(PostgreSQL); how often ``/ready`` was not 200 on any node during the step; CPU seconds per
call of Asterisk and of the controller (from /proc, all nodes together); key press to stored
decision p50/p95 (Asterisk's time of the key to the routed event); ARI event lag (each
controller's p50/p95 over its last 1,000 events). ``max_clean_step`` is the largest step where
every call was stored and routed, SIPp saw no failure and ``/ready`` never failed.

Usage: .venv/bin/python scripts/load_sipp.py [--nodes 1] [--steps 10,20,40] [--hold 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "tests" / "data" / "rules.yaml"
SCENARIO = ROOT / "ivr" / "sip" / "scenarios" / "hotline_key_caller.xml"
CALLERS = ("01062345678", "02162345678", "02062345678", "02862345678")  # one per region
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _ready_watch(urls: list[str], stop: threading.Event, failures: list[str]) -> None:
    import httpx

    while not stop.wait(0.5):
        for url in urls:
            try:
                status = httpx.get(url, timeout=2).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__  # type: ignore[assignment]
            if status != 200:
                failures.append(f"{url}: {status}")


def _sipp(entry: str, hotline: str, calls: int, ramp_s: float, hold_s: float,
          work: Path) -> dict[str, Any]:
    scenario = work / "caller.xml"
    scenario.write_text(SCENARIO.read_text().replace("[field1]", "1"))
    injection = work / "callers.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{n};1;\n" for n in CALLERS))
    stat = work / "stat.csv"
    stat.unlink(missing_ok=True)
    rate = max(calls / ramp_s, 1.0)
    command = ["sipp", entry, "-sf", str(scenario), "-inf", str(injection), "-s", hotline,
               "-i", "127.0.0.1", "-p", "0", "-mp", "0", "-m", str(calls), "-l", str(calls),
               "-r", f"{rate:.2f}", "-rp", "1000", "-d", str(int(hold_s * 1000)),
               "-recv_timeout", "60000", "-timeout", f"{int(hold_s + ramp_s + 120)}s",
               "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1",
               "-max_socket", "2000"]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False,
                          timeout=hold_s + ramp_s + 180)
    import csv

    rows = list(csv.DictReader(stat.read_text().splitlines(), delimiter=";")) \
        if stat.exists() else []
    if not rows:
        return {"error": (done.stderr or done.stdout)[-400:], "returncode": done.returncode}
    last = rows[-1]
    return {"sent": int(last["OutgoingCall(C)"]), "finished": int(last["SuccessfulCall(C)"]),
            "failed": int(last["FailedCall(C)"]), "returncode": done.returncode}


def _step(state: Any, launcher: Any, calls: int, args: argparse.Namespace, work: Path,
          token: str) -> dict[str, Any]:
    import httpx
    from sqlalchemy import text

    from ivr.asterisk.instance import AsteriskInstance
    from ivr.asterisk.provision import locate_asterisk
    from ivr.store.db import make_engine

    install = locate_asterisk()
    asterisk_pids = [AsteriskInstance(install, n.instance).pid() for n in state.nodes]
    controller_pids = [n.controller_pid for n in state.nodes]
    cpu_before = ([_cpu_s(p) for p in asterisk_pids], [_cpu_s(p) for p in controller_pids])
    started = datetime.now(UTC)
    stop, failures = threading.Event(), []
    urls = [f"http://{state.address}:{n.api_port}/api/v1/ready" for n in state.nodes]
    watcher = threading.Thread(target=_ready_watch, args=(urls, stop, failures), daemon=True)
    watcher.start()
    sipp = _sipp(state.sip_entry, state.hotline_number, calls, args.ramp, args.hold, work)
    engine = make_engine(state.database_url)

    def calls_now() -> list[Any]:
        with engine.connect() as connection:
            return list(connection.execute(text(
                "SELECT id, state, route_rule_id, node_id FROM calls WHERE started_at >= :t"),
                {"t": started}))

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(r[1] != "ended" for r in calls_now()):
        time.sleep(0.5)
    stop.set()
    watcher.join()
    cpu_after = ([_cpu_s(p) for p in asterisk_pids], [_cpu_s(p) for p in controller_pids])
    rows = calls_now()
    with engine.connect() as connection:
        events = [r[0] for r in connection.execute(text(
            "SELECT e.data FROM call_events e JOIN calls c ON c.id = e.call_id "
            "WHERE e.kind = 'routed' AND c.started_at >= :t"), {"t": started})]
    after_key = [float((e if isinstance(e, dict) else json.loads(e)).get("after_key_ms"))
                 for e in events
                 if (e if isinstance(e, dict) else json.loads(e)).get("after_key_ms")
                 is not None]
    lag: dict[str, dict[str, float]] = {}
    for node in state.nodes:
        try:
            metrics = httpx.get(f"http://{state.address}:{node.api_port}/metrics",
                                headers={"Authorization": f"Bearer {token}"}, timeout=5).text
        except httpx.HTTPError:
            continue
        lag[node.name] = {line.split('quantile="')[1].split('"')[0]:
                          round(float(line.rsplit(" ", 1)[1]) * 1000, 1)
                          for line in metrics.splitlines()
                          if line.startswith("ivr_ari_event_lag_seconds{")}
    engine.dispose()
    stored, routed = len(rows), sum(1 for r in rows if r[2])
    result = {
        "callers": calls, "sipp": sipp, "stored": stored, "routed": routed,
        "by_node": {n.name: sum(1 for r in rows if r[3] == n.name) for n in state.nodes},
        "ready_failures": len(failures), "ready_failure_examples": failures[:3],
        "cpu_s_per_call": {
            "asterisk": round(sum(cpu_after[0]) - sum(cpu_before[0]), 2) / max(calls, 1),
            "controller": round(sum(cpu_after[1]) - sum(cpu_before[1]), 2) / max(calls, 1)},
        "key_to_routing_ms": {"p50": _quantile(after_key, 0.5),
                              "p95": _quantile(after_key, 0.95), "n": len(after_key)},
        "ari_event_lag_ms": lag,
    }
    result["clean"] = (sipp.get("failed") == 0 and sipp.get("finished") == calls
                       and stored == calls and routed == calls and not failures)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--steps", default="10,20,40")
    parser.add_argument("--hold", type=float, default=15.0, help="seconds on the line")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to start a step")
    parser.add_argument("--agents-per-region", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    parser.add_argument("--out", type=Path, help="also write the JSON here (pjsua2 logs to "
                        "stdout)")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (Debian package sip-tester)")

    from ivr.cluster.launcher import Cluster
    from ivr.settings import Settings
    from ivr.sip.audio import write_tone
    from ivr.sip.phone import AgentOptions, SipStack

    folder = Path(tempfile.mkdtemp(prefix="ivr-load-"))
    folder.chmod(0o755)
    settings = Settings(asterisk={"agents_per_region": args.agents_per_region,  # type: ignore[call-arg]
                                  "supervisors": 0, "concurrent_calls": 400},
                        routing={"rules_file": RULES})
    names = tuple(chr(ord("a") + i) for i in range(args.nodes))
    launcher = Cluster(folder / "cluster", settings, names, controller_env={
        "IVR_ASR__ENABLED": "false", "IVR_ROUTING__RULES_FILE": str(RULES),
        "IVR_FLOW__WRAP_UP_S": "0.5", "IVR_FLOW__QUEUE_POLL_S": "0.5",
        "IVR_LOG_LEVEL": "WARNING"})
    out: dict[str, Any] = {"nodes": args.nodes, "hold_s": args.hold, "ramp_s": args.ramp,
                           "machine": {"cpus": os.cpu_count()}}
    try:
        started = time.monotonic()
        state = launcher.up()
        out["cluster_up_s"] = round(time.monotonic() - started, 1)
        made = subprocess.run([sys.executable, "-m", "ivr.cli", "token", "create", "--role",
                               "supervisor", "--name", "load"],
                              env=launcher.node_env(state, state.nodes[0]),
                              capture_output=True, text=True, check=True)
        token = made.stdout.strip().splitlines()[-1].split()[-1]
        tone = write_tone(folder / "agent.wav", 880.0, 1.0)
        with SipStack() as stack:
            phones = [stack.agent(a.agent_id, a.password, state.sip_entry,
                                  AgentOptions(answer_after_s=0.5, play=tone))
                      for a in state.phone_accounts()]
            for phone in phones:
                phone.wait_registered()
            time.sleep(4)  # every node's qualify sees them online
            out["agents"] = len(phones)
            out["steps"] = []
            for calls in (int(s) for s in args.steps.split(",")):
                work = folder / f"step-{calls}"
                work.mkdir()
                out["steps"].append(_step(state, launcher, calls, args, work, token))
                time.sleep(2)
            for phone in phones:
                phone.close()
        clean = [s["callers"] for s in out["steps"] if s["clean"]]
        out["max_clean_step"] = max(clean) if clean else 0
    finally:
        if not args.keep:
            launcher.down()
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
