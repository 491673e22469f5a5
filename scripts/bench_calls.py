#!/usr/bin/env python3
"""Benchmark call set-up and concurrency through the real stack; prints one JSON object.

Starts its own Asterisk instance (free ports), `ivr serve`, and agent phones (`ivr agents`, one
process per region), then places keypad calls from a caller process:

* latency: ``--latency-calls`` sequential calls; for each, dial -> agent phone rings and
  key pressed -> agent phone rings (the latter includes the fixed "transferring you" prompt,
  reported separately as ``transfer_prompt_s``);
* concurrency: for each level in ``--levels``, that many calls at once (spread over the four
  regions); a level passes when every call reaches an agent.

Usage: .venv/bin/python scripts/bench_calls.py [--latency-calls 20] [--levels 4,8,16,24,28]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ivr.asterisk.instance import AsteriskInstance, free_port  # noqa: E402
from ivr.asterisk.provision import cache_dir, locate_asterisk  # noqa: E402
from ivr.settings import AsteriskSettings  # noqa: E402
from ivr.sip.phone import (  # noqa: E402
    CallerPhone,
    PhoneCall,
    SipStack,
    StackOptions,
    stdout_to_stderr,
)

REGION_NUMBERS = {"north": "010{:08d}", "east": "021{:08d}", "south": "020{:08d}",
                  "west": "028{:08d}"}
RULES = ROOT / "tests" / "data" / "rules.yaml"


def _wait(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _get_call(api: str, sip_call_id: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{api}/calls/{sip_call_id}", timeout=3)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _event_time(call: dict[str, Any], kind: str) -> float | None:
    from datetime import datetime

    for event in call.get("events", []):
        if event["kind"] == kind:
            return datetime.fromisoformat(event["at"]).timestamp()
    return None


def one_call(caller: CallerPhone, hotline: str, api: str, timeout: float) -> dict[str, Any]:
    """Dial, press 1 during the greeting, wait until an agent is connected, hang up."""
    number = caller.number
    started = time.monotonic()
    wall_started = time.time()
    call: PhoneCall = caller.dial(hotline)
    result: dict[str, Any] = {"number": number, "connected": False}
    try:
        call.wait_connected(timeout=timeout)
        time.sleep(0.5)
        call.send_dtmf("1", gap_s=0.0)
        key_at = time.time()
        sip_id = call.record.sip_call_id
        record: dict[str, Any] | None = None

        def connected() -> bool:
            nonlocal record
            record = _get_call(api, sip_id)
            return bool(record and record["state"] == "connected")

        result["connected"] = _wait(connected, timeout)
        if record is not None:
            ringing = _event_time(record, "agent_ringing")
            routed = _event_time(record, "routed")
            if ringing is not None:
                result["dial_to_agent_ring_s"] = ringing - wall_started
                result["key_to_agent_ring_s"] = ringing - key_at
            if routed is not None:
                result["key_to_routed_s"] = routed - key_at
            result["agent_id"] = record["route"]["agent_id"]
        result["total_s"] = time.monotonic() - started
    except Exception as exc:  # noqa: BLE001 - a failed call is a data point, not a crash
        result["error"] = str(exc)
    finally:
        call.hangup()
        try:
            call.wait_ended(timeout=10)
        except Exception:  # noqa: BLE001 - best effort
            result["hangup_error"] = True
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3),
            "p90": round(_percentile(values, 0.9), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def main() -> int:
    """Run the benchmark and print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-calls", type=int, default=20)
    parser.add_argument("--levels", default="4,8,16,24,28")
    parser.add_argument("--agents-per-region", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]

    work = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    rtp_start = 40000
    settings = AsteriskSettings(
        instance=f"bench-{os.getpid()}", ari_port=free_port(), sip_port=free_port("udp"),
        rtp_start=rtp_start, concurrent_calls=max(levels + [4]) + 8,
        agents_per_region=args.agents_per_region)
    instance = AsteriskInstance(locate_asterisk(), settings.instance)
    state = instance.up(settings, tuple(REGION_NUMBERS))
    api_port = free_port()
    env = {**os.environ, "IVR_ASTERISK__INSTANCE": settings.instance,
           "IVR_API_PORT": str(api_port), "IVR_DATA_DIR": str(work / "var"),
           "IVR_ROUTING__RULES_FILE": str(RULES), "IVR_FLOW__WRAP_UP_S": "0.2",
           "IVR_FLOW__QUEUE_POLL_S": "0.1", "IVR_LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen[bytes]] = []
    api = f"http://127.0.0.1:{api_port}/api/v1"
    result: dict[str, Any] = {"benchmark": "calls", "machine_cpus": os.cpu_count(),
                              "asterisk": state.ports.__dict__}
    try:
        log = (work / "serve.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "ivr.cli", "serve"], env=env,
                                      stdout=log, stderr=log))
        if not _wait(lambda: _ready(api), 30):
            raise RuntimeError(f"controller not ready; see {work / 'serve.log'}")
        for region in REGION_NUMBERS:
            agent_log = (work / f"agents-{region}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ivr.cli", "agents", "--region", region, "--count",
                 str(args.agents_per_region), "--answer-after", "0.2"],
                env=env, stdout=agent_log, stderr=subprocess.DEVNULL))
        expected = args.agents_per_region * len(REGION_NUMBERS)
        if not _wait(lambda: _registered(work) >= expected, 60):
            raise RuntimeError("agent phones did not register")
        time.sleep(1.0)
        pbx = f"127.0.0.1:{state.ports.sip}"
        with stdout_to_stderr(), SipStack(StackOptions(codecs=("PCMU/8000",))) as stack:
            transfer = _prompt_seconds(instance, "transfer")
            samples = []
            for i in range(args.latency_calls):
                region = list(REGION_NUMBERS)[i % 4]
                caller = stack.caller(REGION_NUMBERS[region].format(i), pbx)
                samples.append(one_call(caller, state.hotline_number, api, args.timeout))
            result["latency"] = {
                "calls": len(samples),
                "connected": sum(1 for s in samples if s["connected"]),
                "dial_to_agent_ring_s": _summary([s["dial_to_agent_ring_s"] for s in samples
                                                  if "dial_to_agent_ring_s" in s]),
                "key_to_agent_ring_s": _summary([s["key_to_agent_ring_s"] for s in samples
                                                 if "key_to_agent_ring_s" in s]),
                "key_to_routed_s": _summary([s["key_to_routed_s"] for s in samples
                                             if "key_to_routed_s" in s]),
                "transfer_prompt_s": round(transfer, 2),
                "note": "key_to_agent_ring includes the fixed transfer prompt",
            }
            result["concurrency"] = []
            for level in levels:
                outcomes: list[dict[str, Any]] = []
                lock = threading.Lock()
                # One caller phone per region, several calls each (pjsua has 8 account slots).
                callers = {r: stack.caller(n.format(level), pbx)
                           for r, n in REGION_NUMBERS.items()}

                def run(i: int, callers: dict[str, CallerPhone] = callers,
                        outcomes: list[dict[str, Any]] = outcomes,
                        lock: threading.Lock = lock) -> None:
                    region = list(REGION_NUMBERS)[i % 4]
                    outcome = one_call(callers[region], state.hotline_number, api, args.timeout)
                    with lock:
                        outcomes.append(outcome)

                threads = [threading.Thread(target=run, args=(i,)) for i in range(level)]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                    time.sleep(0.05)
                for thread in threads:
                    thread.join()
                routed = sum(1 for o in outcomes if o["connected"])
                result["concurrency"].append({
                    "level": level, "routed": routed, "all_routed": routed == level,
                    "seconds": round(time.monotonic() - started, 1),
                    "key_to_agent_ring_s": _summary([o["key_to_agent_ring_s"] for o in outcomes
                                                     if "key_to_agent_ring_s" in o]),
                    "errors": sorted({o["error"] for o in outcomes if "error" in o})[:3],
                })
                time.sleep(2.0)
            ok = [c["level"] for c in result["concurrency"] if c["all_routed"]]
            result["max_concurrent_all_routed"] = max(ok) if ok else 0
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGINT if proc is procs[0] else signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        instance.remove()
    print(json.dumps(result, indent=2))
    return 0


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _registered(work: Path) -> int:
    total = 0
    for path in work.glob("agents-*.log"):
        total += path.read_text(errors="replace").count('"registered": true')
    return total


def _prompt_seconds(instance: AsteriskInstance, key: str) -> float:
    path = instance.dir / "sounds" / "zh" / f"{key}.wav"
    if not path.exists():
        path = cache_dir() / "prompts" / "zh" / f"{key}.wav"
    with wave.open(str(path), "rb") as src:
        return src.getnframes() / float(src.getframerate())


if __name__ == "__main__":
    raise SystemExit(main())
