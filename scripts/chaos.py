#!/usr/bin/env python3
"""Fault drill: keep calls flowing and cause real faults one after another; prints one JSON.

Starts its own Asterisk (free ports), `ivr serve` and two agent phones of region north. Before
each fault it puts callers in every place a call can be: two talking to the agents, one waiting
in the queue, one in the menu. Then, one after the other:

  freeze    Asterisk SIGSTOP for longer than the ARI request timeout, then SIGCONT
  restart   Asterisk stopped and started again under the running controller
  ws_cut    every TCP connection of the controller to ARI cut (ss -K); Asterisk keeps running
  kill      `ivr serve` SIGKILL and started again
  db_lock   the SQLite database locked (BEGIN EXCLUSIVE) for --lock-s; a new caller meanwhile
  burst     --burst-calls SIPp calls at --burst-rate per second

After each: seconds until /ready is 200 again, every call of the drill accounted for in the
store with a cause (none left active once the callers hung up), nothing left in the Stasis
application, and whether each agent's phone takes a new call (stuck agents).

Usage: .venv/bin/python scripts/chaos.py [--faults freeze,restart,ws_cut,kill,db_lock,burst]
       [--lock-s 30] [--freeze-s 8] [--burst-calls 200] [--burst-rate 50]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402

from ivr.asterisk.instance import AsteriskInstance  # noqa: E402
from ivr.asterisk.provision import locate_asterisk  # noqa: E402
from ivr.sip.load import Burst, run_burst  # noqa: E402
from ivr.sip.phone import PhoneCall, SipStack, StackOptions, stdout_to_stderr  # noqa: E402

from conftest import RunningAsterisk, make_test_settings  # noqa: E402
from hotline import Agents, Hotline, dial_and_press, hotline_env, wait_until  # noqa: E402

FAULTS = ("freeze", "restart", "ws_cut", "kill", "db_lock", "burst")
REGIONS = ("north", "east", "south", "west")
FAST = {"IVR_HEALTH__ARI_TIMEOUT_S": "2", "IVR_HEALTH__PROBE_EVERY_S": "0.5",
        "IVR_HEALTH__PROBE_TIMEOUT_S": "1", "IVR_FLOW__SWEEP_EVERY_S": "2",
        "IVR_FLOW__ARI_RETRY_PAUSE_S": "0.5"}


class Drill:
    """One Asterisk, one controller, two agents, and the callers of the current fault."""

    def __init__(self, work: Path, stack: SipStack) -> None:
        base = make_test_settings()
        self.settings = make_test_settings(instance=base.instance, ari_port=base.ari_port,
                                           sip_port=base.sip_port, rtp_start=base.rtp_start,
                                           rtp_end=base.rtp_start + 799)
        instance = AsteriskInstance(locate_asterisk(), self.settings.instance)
        self.pbx = RunningAsterisk(instance, instance.up(self.settings, REGIONS))
        self.stack = stack
        self.hotline = Hotline(self.pbx, work / "var", work / "serve.log",
                               hotline_env(self.pbx, work / "var", **FAST))
        self.hotline.start()
        self.team = Agents(stack, self.pbx, work)
        self.agents = [self.team.register("north", i, answer_after_s=0.3) for i in (1, 2)]
        self.sip_ids: list[str] = []
        self.callers: list[PhoneCall] = []
        self.serial = 0

    def number(self) -> str:
        self.serial += 1
        return f"0106{self.serial:07d}"

    def dial(self, key: str) -> PhoneCall:
        call = dial_and_press(self.stack, self.pbx, self.number(), key)
        self.sip_ids.append(call.record.sip_call_id)
        self.callers.append(call)
        return call

    def state(self, call: PhoneCall) -> str | None:
        try:
            return str(self.hotline.call(call.record.sip_call_id)["state"])
        except httpx.HTTPError:
            return None

    def populate(self) -> None:
        """Two callers talking, one queued, one in the menu."""
        for _ in range(2):
            call = self.dial("1")
            wait_until(lambda c=call: self.state(c) == "connected", 40, "a caller to connect")
        queued = self.dial("1")
        wait_until(lambda: self.state(queued) == "queued", 40, "a caller to queue")
        self.dial("")

    def hang_up_all(self) -> None:
        for call in self.callers:
            if not call.ended:
                call.hangup()
        for call in self.callers:
            call.wait_ended(15)
        self.callers.clear()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.hotline.api}/ready", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def stuck_agents(self) -> list[str]:
        """Agents whose phone does not take a new call (two callers at once: one each)."""
        calls = [self.dial("1") for _ in self.agents]
        reached: set[str] = set()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(reached) < len(self.agents):
            for call in calls:
                try:
                    record = self.hotline.call(call.record.sip_call_id)
                except httpx.HTTPError:
                    continue
                if record["state"] == "connected":
                    reached.add(record["route"]["agent_id"])
            time.sleep(0.2)
        self.hang_up_all()
        return sorted({a.agent_id for a in self.agents} - reached)

    def accounting(self) -> dict[str, Any]:
        """Every call of the drill: how it ended, and any still active or in Stasis."""
        wait_until(lambda: not self.active(), 60, "no active call in the store")
        app = self.hotline.ari_get(f"/applications/{self.pbx.state.ari_app}")
        causes: collections.Counter[str] = collections.Counter()
        for item in self.hotline.get("/calls", "admin", limit=500).json()["items"]:
            causes[(item["hangup_cause"] or "none").split(":")[0]] += 1
        return {"causes": dict(causes), "active": len(self.active()),
                "left_in_stasis": len(app["channel_ids"]) + len(app["bridge_ids"]),
                **self.loop_lag()}

    def loop_lag(self) -> dict[str, float]:
        """The controller's event-loop lag (p99 over the last minute, max since start)."""
        text = httpx.get(f"{self.hotline.api.removesuffix('/api/v1')}/metrics",
                         headers=self.hotline.headers("admin"), timeout=5).text
        values = {}
        for line in text.splitlines():
            for name in ("p99", "max"):
                if line.startswith(f"ivr_event_loop_lag_{name}_seconds "):
                    values[f"loop_lag_{name}_ms"] = round(float(line.split()[1]) * 1000, 1)
        return values

    def active(self) -> list[Any]:
        items: list[Any] = self.hotline.get("/calls", "admin", active="true",
                                            limit=500).json()["items"]
        return items

    def close(self) -> None:
        self.hang_up_all()
        self.team.close()
        self.hotline.stop()
        self.pbx.instance.remove()


def inject(drill: Drill, fault: str, args: argparse.Namespace) -> dict[str, Any]:
    """Cause ``fault``; returns what it did."""
    pbx, done = drill.pbx, {}
    if fault == "freeze":
        pid = pbx.instance.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        time.sleep(args.freeze_s)
        os.kill(pid, signal.SIGCONT)
        done["frozen_s"] = args.freeze_s
    elif fault == "restart":
        pbx.instance.down()
        pbx.instance.up(drill.settings, REGIONS)
        for agent in drill.agents:
            agent.wait_registered(30)
    elif fault == "ws_cut":
        subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=",
                        f":{pbx.state.ports.ari}"], check=True, capture_output=True)
    elif fault == "kill":
        drill.hotline.kill()
        time.sleep(1.0)
        drill.hotline.start()
    elif fault == "db_lock":
        lock = sqlite3.connect(drill.hotline.data_dir / "ivr.sqlite3", timeout=0,
                               isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(args.lock_s, lambda: (lock.execute("ROLLBACK"), lock.close()))
        release.start()
        during = drill.dial("1")  # a new caller while nothing can be written
        release.join()
        done["locked_s"] = args.lock_s
        done["new_caller_state_after"] = drill.state(during)
    elif fault == "burst":
        result = run_burst(pbx.pbx, pbx.state.hotline_number,
                           Burst(args.burst_calls, args.burst_rate, 3000))
        done["sipp"] = vars(result)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--lock-s", type=float, default=30.0)
    parser.add_argument("--freeze-s", type=float, default=8.0)
    parser.add_argument("--burst-calls", type=int, default=200)
    parser.add_argument("--burst-rate", type=float, default=50.0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (serve.log, the database)")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {sorted(unknown)}")
    report: dict[str, Any] = {"faults": {}}
    with tempfile.TemporaryDirectory(prefix="ivr-chaos-") as temporary, \
            stdout_to_stderr() as out:
        folder = args.keep or temporary
        Path(folder).mkdir(parents=True, exist_ok=True)
        stack = SipStack(StackOptions(log_level=1)).start()
        drill = Drill(Path(folder), stack)
        try:
            for fault in faults:
                drill.populate()
                started = time.monotonic()
                details = inject(drill, fault, args)
                injected = time.monotonic()
                wait_until(drill.ready, 120, "/ready after the fault")
                recovered = time.monotonic()
                drill.hang_up_all()
                stuck = drill.stuck_agents()
                report["faults"][fault] = {
                    **details, "fault_s": round(injected - started, 1),
                    "recover_s": round(recovered - injected, 1), "stuck_agents": stuck,
                    **drill.accounting()}
        finally:
            drill.close()
            stack.stop()
        totals = report["faults"].values()
        report["stranded_calls"] = sum(f["active"] + f["left_in_stasis"] for f in totals)
        report["stuck_agents"] = sum(len(f["stuck_agents"]) for f in totals)
        print(json.dumps(report, indent=2), file=out, flush=True)


if __name__ == "__main__":
    main()
