"""RTP (RFC 3550) parsing, per-stream reordering and slin16 byte-order conversion."""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np

from asr.errors import RtpError
from asr.media.g711 import ulaw_decode, ulaw_encode

ByteOrder = Literal["big", "little"]

RTP_HEADER_BYTES = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

# Reason codes: stable strings, used as keys of StreamStats.malformed.
TOO_SHORT = "too_short"
TOO_LARGE = "too_large"
BAD_VERSION = "bad_version"
CSRC_PAST_END = "csrc_past_end"
EXTENSION_PAST_END = "extension_past_end"
BAD_PADDING = "bad_padding"
BAD_PAYLOAD_TYPE = "bad_payload_type"
ODD_PAYLOAD = "odd_payload"
EMPTY_PAYLOAD = "empty_payload"

_HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True)
class RtpOptions:
    """What the ingest accepts from the wire; defaults match Asterisk ExternalMedia slin16."""

    # ExternalMedia format=slin16 uses a dynamic payload type; 118 is Asterisk's default for it.
    payload_types: Mapping[int, str] = field(
        default_factory=lambda: MappingProxyType({118: "slin16"})
    )
    max_packet_bytes: int = 1500
    # Asterisk sends slin in network (big-endian) order; the end-to-end test checks this
    # against a known tone, so change it only with that test's evidence.
    wire_byte_order: ByteOrder = "big"
    sample_rate: int = 16000
    frame_ms: int = 20
    # 3 packets = 60 ms at 20 ms ptime: enough for loopback reordering, small for turn-taking.
    jitter_window_packets: int = 3
    queue_frames: int = 250

    @property
    def frame_bytes(self) -> int:
        """Bytes of one PCM frame handed downstream (640 for 20 ms at 16 kHz)."""
        return self.sample_rate * self.frame_ms // 1000 * 2


DEFAULT_RTP_OPTIONS = RtpOptions()


@dataclass(frozen=True)
class RtpPacket:
    """One parsed RTP packet; ``payload`` excludes CSRCs, extension and padding."""

    version: int
    padding: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass
class StreamStats:
    """Counters of one RTP stream; every received datagram lands in exactly one outcome."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    wrong_ssrc: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # sequence numbers never seen (not datagrams, so not an outcome)
    reordered: int = 0  # accepted packets that arrived after a later one
    dropped_queue_full: int = 0  # PCM frames dropped downstream of the jitter buffer

    @property
    def malformed_total(self) -> int:
        """Datagrams rejected by the parser, all reasons together."""
        return sum(self.malformed.values())

    @property
    def rejected(self) -> int:
        """Datagrams dropped before reaching the PCM queue."""
        return self.duplicates + self.late + self.wrong_ssrc + self.malformed_total

    def count_malformed(self, reason: str) -> None:
        """Record one datagram rejected by the parser."""
        self.malformed[reason] = self.malformed.get(reason, 0) + 1


def parse_rtp(data: bytes, options: RtpOptions = DEFAULT_RTP_OPTIONS) -> RtpPacket:
    """Parse one datagram as RTP carrying 16-bit PCM; raise ``RtpError(reason)`` if unusable."""
    size = len(data)
    # Size first: never spend effort parsing something no sane sender produces.
    if size > options.max_packet_bytes:
        raise RtpError(TOO_LARGE, f"{size} bytes")
    if size < RTP_HEADER_BYTES:
        raise RtpError(TOO_SHORT, f"{size} bytes")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    version = first >> 6
    if version != 2:
        raise RtpError(BAD_VERSION, str(version))
    has_padding = bool(first & 0x20)
    has_extension = bool(first & 0x10)
    offset = RTP_HEADER_BYTES + 4 * (first & 0x0F)
    if offset > size:
        raise RtpError(CSRC_PAST_END)
    if has_extension:
        if offset + 4 > size:
            raise RtpError(EXTENSION_PAST_END)
        words = int.from_bytes(data[offset + 2 : offset + 4], "big")
        offset += 4 + 4 * words
        if offset > size:
            raise RtpError(EXTENSION_PAST_END)
    end = size
    if has_padding:
        # The last octet counts the padding including itself, so 0 is invalid (RFC 3550 5.1).
        pad = data[-1] if size > offset else 0
        if pad == 0 or offset + pad > size:
            raise RtpError(BAD_PADDING, str(pad))
        end -= pad
    payload_type = second & 0x7F
    if payload_type not in options.payload_types:
        raise RtpError(BAD_PAYLOAD_TYPE, str(payload_type))
    length = end - offset
    if length == 0:
        raise RtpError(EMPTY_PAYLOAD)
    if length % 2 and options.payload_types[payload_type] != "ulaw":
        raise RtpError(ODD_PAYLOAD, f"{length} bytes")
    return RtpPacket(
        version=version,
        padding=has_padding,
        marker=bool(second & 0x80),
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
    )


def pcm_from_payload(payload: bytes, codec: str, wire_byte_order: ByteOrder = "big") -> bytes:
    """Little-endian 16-bit PCM from one packet's payload of ``codec`` (slin* or ulaw)."""
    return ulaw_decode(payload) if codec == "ulaw" else pcm_from_slin(payload, wire_byte_order)


def pcm_from_slin(payload: bytes, wire_byte_order: ByteOrder = "big") -> bytes:
    """Convert 16-bit signed linear audio from wire order to little-endian PCM."""
    if len(payload) % 2:
        raise RtpError(ODD_PAYLOAD, f"{len(payload)} bytes")
    if wire_byte_order == "little":
        return bytes(payload)
    return np.frombuffer(payload, dtype=">i2").astype("<i2").tobytes()


def signed_delta(value: int, reference: int, modulus: int) -> int:
    """Shortest signed distance from ``reference`` to ``value`` on a wrapping counter."""
    half = modulus // 2
    return (value - reference + half) % modulus - half


class JitterBuffer:
    """Reorders one RTP stream within a small window and releases packets in sequence order.

    Sequence numbers are extended past 16 bits so 65535 -> 0 is just the next packet. Losses
    are counted, never concealed: the recogniser copes with a gap better than with invented audio.
    """

    # Packets this far behind are old rather than a restart; RFC 3550 A.1 uses 100 too.
    MAX_MISORDER = 100

    def __init__(self, window_packets: int = 3, stats: StreamStats | None = None) -> None:
        if window_packets < 0:
            raise ValueError("window_packets must be >= 0")
        self.window_packets = window_packets
        self.stats = stats if stats is not None else StreamStats()
        self.ssrc: int | None = None
        self._next: int | None = None  # extended sequence number to release next
        self._highest: int = 0
        self._pending: dict[int, RtpPacket] = {}
        self._released: deque[int] = deque(maxlen=128)  # tells duplicates from late packets
        self._restart_candidate: int | None = None

    def push(self, packet: RtpPacket) -> list[RtpPacket]:
        """Admit one packet; return the packets now releasable, in sequence order."""
        if self.ssrc is None:
            self.ssrc = packet.ssrc
        elif packet.ssrc != self.ssrc:
            # A second source mid-call is a misrouted or injected stream, not the caller.
            self.stats.wrong_ssrc += 1
            return []
        if self._next is None:
            self._next = self._highest = packet.sequence
        ext = self._highest + signed_delta(packet.sequence, self._highest % SEQ_MOD, SEQ_MOD)
        if ext < self._next - self.MAX_MISORDER:
            released = self._maybe_restart(packet)
            if released is not None:
                return released
            self.stats.late += 1
            return []
        self._restart_candidate = None
        if ext in self._pending or (ext < self._next and ext in self._released):
            self.stats.duplicates += 1
            return []
        if ext < self._next:
            self.stats.late += 1
            return []
        self.stats.accepted += 1
        if ext < self._highest:
            self.stats.reordered += 1
        self._highest = max(self._highest, ext)
        self._pending[ext] = packet
        return self._release(force=False)

    def drain(self) -> list[RtpPacket]:
        """Release everything still held (end of stream), counting the gaps as lost."""
        return self._release(force=True)

    def _maybe_restart(self, packet: RtpPacket) -> list[RtpPacket] | None:
        """Two consecutive far-behind packets mean the sender restarted its sequence."""
        if self._restart_candidate != packet.sequence:
            self._restart_candidate = (packet.sequence + 1) % SEQ_MOD
            return None
        released = self.drain()
        self._restart_candidate = None
        self._released.clear()
        self._next = self._highest = packet.sequence
        self.stats.accepted += 1
        self._pending[packet.sequence] = packet
        return released + self._release(force=False)

    def _release(self, force: bool) -> list[RtpPacket]:
        out: list[RtpPacket] = []
        assert self._next is not None or not self._pending
        while self._pending:
            assert self._next is not None
            packet = self._pending.pop(self._next, None)
            if packet is not None:
                out.append(packet)
                self._released.append(self._next)
                self._next += 1
            elif force or len(self._pending) > self.window_packets:
                # Waited a full window for the gap: give up on it and move on.
                oldest = min(self._pending)
                self.stats.lost += oldest - self._next
                self._next = oldest
            else:
                break
        return out


class RtpPacker:
    """Builds the RTP datagrams of one outgoing stream in the first payload type of
    ``options`` (slin16 or ulaw): one SSRC, sequence and timestamp counters that wrap, PCM
    turned to the wire format."""

    def __init__(self, options: RtpOptions = DEFAULT_RTP_OPTIONS, ssrc: int | None = None
                 ) -> None:
        self.options = options
        self.ssrc = ssrc if ssrc is not None else int.from_bytes(os.urandom(4), "big")
        self.payload_type, self.codec = next(iter(options.payload_types.items()))
        self.sequence = int.from_bytes(os.urandom(2), "big")
        self.timestamp = int.from_bytes(os.urandom(4), "big")
        self._first = True

    def pack(self, pcm: bytes) -> bytes:
        """One datagram carrying ``pcm`` (16-bit little-endian samples)."""
        if len(pcm) % 2:
            raise RtpError(ODD_PAYLOAD, f"{len(pcm)} bytes")
        if self.codec == "ulaw":
            payload = ulaw_encode(pcm)
        elif self.options.wire_byte_order == "little":
            payload = pcm
        else:
            payload = np.frombuffer(pcm, dtype="<i2").astype(">i2").tobytes()
        marker = 0x80 if self._first else 0
        self._first = False
        header = _HEADER.pack(0x80, marker | (self.payload_type & 0x7F),
                              self.sequence, self.timestamp, self.ssrc)
        self.sequence = (self.sequence + 1) % SEQ_MOD
        self.timestamp = (self.timestamp + len(pcm) // 2) % TS_MOD
        return header + payload
