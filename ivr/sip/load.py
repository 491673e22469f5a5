"""Bursts of real SIP calls with SIPp (Debian ``sip-tester``): load tests and fault drills.

Each call INVITEs the hotline from a number of the injection list, stays on the line for
``hold_ms`` and hangs up; a refusal before answer (486/503) counts as a proper, finished call.
A call that never gets a final answer within ``answer_timeout_s`` counts as failed.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ivr.errors import ToolMissingError

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "hotline_caller.xml"
# Callers of every region (Beijing, Shanghai, Guangzhou, Chengdu; landline and mobile).
CALLERS = ("01062345678", "13800210000", "02012345678", "02885551234", "13911112222")


@dataclass(frozen=True)
class Burst:
    """What to send: ``calls`` calls at ``rate`` per second, each held ``hold_ms``."""

    calls: int = 200
    rate: float = 50.0
    hold_ms: int = 3000
    answer_timeout_s: float = 15.0


@dataclass(frozen=True)
class BurstResult:
    """SIPp's own counts at the end of the burst."""

    sent: int
    finished: int  # answered and hung up, or refused at once (486/503)
    failed: int  # no final answer in time, or an unexpected message
    seconds: float
    returncode: int


def sipp_available() -> bool:
    """Whether SIPp is installed."""
    return shutil.which("sipp") is not None


def run_burst(pbx: str, number: str, burst: Burst, local_ip: str = "127.0.0.1",
              timeout_s: float = 300.0) -> BurstResult:
    """Send the burst to ``pbx`` (host:port) calling ``number``; blocks until SIPp is done."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise ToolMissingError("sipp is not installed (Debian package sip-tester)")
    with tempfile.TemporaryDirectory(prefix="ivr-sipp-") as folder:
        work = Path(folder)
        callers = work / "callers.csv"
        callers.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in CALLERS),
                           encoding="ascii")
        stat = work / "stat.csv"
        command = [
            sipp, pbx, "-sf", str(SCENARIO), "-inf", str(callers), "-s", number,
            "-i", local_ip, "-p", "0", "-mp", "0", "-m", str(burst.calls),
            "-r", str(burst.rate), "-rp", "1000", "-d", str(burst.hold_ms),
            "-l", str(burst.calls), "-recv_timeout", str(int(burst.answer_timeout_s * 1000)),
            "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-nostdin",
            "-trace_stat", "-stf", str(stat), "-fd", "1",
        ]
        done = subprocess.run(command, cwd=work, capture_output=True, text=True,
                              timeout=timeout_s + 30, check=False)
        rows = list(csv.DictReader(stat.read_text(encoding="ascii").splitlines(),
                                   delimiter=";")) if stat.exists() else []
    if not rows:
        raise RuntimeError(f"sipp wrote no statistics (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout)[-500:]}")
    last = rows[-1]
    elapsed = last.get("ElapsedTime(C)", "0:0:0").split(":")
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(elapsed[:3])))
    return BurstResult(int(last["OutgoingCall(C)"]), int(last["SuccessfulCall(C)"]),
                       int(last["FailedCall(C)"]), seconds, done.returncode)
