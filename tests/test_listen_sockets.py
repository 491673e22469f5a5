"""Every socket a running Asterisk binds sits on the configured address (``asterisk.address``,
loopback by default): its SIP transport, ARI and, during a real call, the call's RTP and RTCP.
Nothing may be bound to a wildcard (0.0.0.0 / ::) or to another address."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ivr.sip.audio import band_energy_ratio, dominant_frequency, read_wav, write_tone
from ivr.sip.phone import SipStack

from conftest import RunningAsterisk, run_asterisk

pytestmark = pytest.mark.asterisk

TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Bound:
    """One bound socket of a process."""

    proto: str  # tcp / udp (IPv4 or IPv6)
    family: int
    address: str
    port: int
    inode: str

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.family == socket.AF_INET6 else self.address
        return f"{self.proto}{'6' if self.family == socket.AF_INET6 else ''} {host}:{self.port}"


def _address(hex_text: str) -> tuple[int, str, int]:
    """``0100007F:1F90`` (as /proc/net/* writes it) -> family, address, port."""
    host, port = hex_text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.AF_INET, socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    # IPv6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.AF_INET6, str(ipaddress.ip_address(words)), int(port, 16)


def bound_sockets(pid: int) -> list[Bound]:
    """The listening TCP and all bound UDP sockets owned by ``pid`` (from /proc; no ss/lsof)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes:
                continue
            if table.startswith("tcp") and state != TCP_LISTEN:
                continue  # accepted ARI connections: their local end is the listener's address
            family, address, port = _address(local)
            found.append(Bound(table.rstrip("6"), family, address, port, inode))
    return found


def pjsip_dns_resolver(sockets: list[Bound], running: RunningAsterisk) -> set[str]:
    """Inodes of the two DNS *client* sockets of pjproject's resolver, the one exception.

    res_pjsip creates a pjproject DNS resolver at load (``ast_sip_initialize_dns``, whenever
    the system has a nameserver, and glibc always reports one); pjlib-util's ``init_sock``
    binds its UDP sockets to 0.0.0.0:0 and [::]:0 with no setting to change that in Asterisk
    22 or pjproject. They only carry DNS queries (SIP here uses IP addresses only) on
    kernel-chosen ports (which may fall in the RTP range). Allowed, narrowly: UDP, wildcard,
    open right after start (before any call opened RTP), at most one per address family, and
    not the SIP port.
    """
    resolver = [s for s in sockets
                if s.proto == "udp" and s.wildcard and s.port != running.state.ports.sip]
    families = [s.family for s in resolver]
    assert len(families) == len(set(families)), (
        "more wildcard UDP sockets than pjproject's DNS resolver opens: "
        + ", ".join(map(str, resolver)))
    return {s.inode for s in resolver}


@pytest.fixture(scope="module")
def own_asterisk() -> Iterator[RunningAsterisk]:
    """A fresh instance of its own: what it binds at start-up is not mixed with earlier tests'
    calls on the shared one."""
    yield from run_asterisk()


def test_every_asterisk_socket_is_on_the_configured_address(
        own_asterisk: RunningAsterisk, sip_stack: SipStack, tmp_path: Path) -> None:
    running = own_asterisk
    pid = running.instance.pid()
    assert pid is not None
    address = running.state.address
    ports = running.state.ports

    at_start = bound_sockets(pid)
    resolver = pjsip_dns_resolver(at_start, running)

    # A real call, answered by Asterisk's echo line, so the call's RTP/RTCP ports are open;
    # the caller's tone coming back proves media flows both ways on those ports.
    tone = write_tone(tmp_path / "caller-440.wav", 440.0, 2.0)
    heard = tmp_path / "heard.wav"
    call = sip_stack.caller("02112345678", running.pbx).dial("4008109902", record_to=heard)
    call.wait_connected()
    call.play(tone, wait=False)
    time.sleep(1.0)
    during_call = bound_sockets(pid)
    time.sleep(1.2)
    call.hangup()
    call.wait_ended()
    call.wait_released()

    listing = "\n  ".join(map(str, during_call))
    assert any(s.proto == "tcp" and s.port == ports.ari for s in during_call), (
        f"ARI listener not found among\n  {listing}")
    assert any(s.proto == "udp" and s.port == ports.sip for s in during_call), (
        f"SIP transport not found among\n  {listing}")
    rtp = [s for s in during_call if s.proto == "udp" and s.inode not in resolver
           and ports.rtp_start <= s.port <= ports.rtp_end]
    assert len(rtp) >= 2, f"no RTP + RTCP socket open during the call among\n  {listing}"
    wrong = [s for s in during_call if s.inode not in resolver and s.address != address]
    assert not wrong, (
        f"Asterisk sockets not bound to the configured address {address}: "
        + ", ".join(f"{s}{' (wildcard)' if s.wildcard else ''}" for s in wrong))

    echoed = read_wav(heard)
    assert abs(dominant_frequency(echoed, skip_s=0.5) - 440.0) < 15.0
    assert band_energy_ratio(echoed, 440.0) > 0.5
