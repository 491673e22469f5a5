"""UDP RTP receiver for one call: datagrams in, ordered 20 ms ``AudioChunk`` frames out."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Final, cast

from asr.errors import PortPoolExhausted, RtpError
from asr.frames import AudioChunk
from asr.media.rtp import (
    DEFAULT_RTP_OPTIONS,
    TS_MOD,
    JitterBuffer,
    RtpOptions,
    RtpPacket,
    StreamStats,
    parse_rtp,
    pcm_from_payload,
    signed_delta,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]


def host_for_url(address: str) -> str:
    """An address as it goes before ``:port`` (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


class RtpStreamCore:
    """Synchronous heart of the receiver: parse, reorder, convert and cut into fixed frames.

    Kept free of sockets and the event loop so it can be tested and fuzzed directly.
    """

    def __init__(self, options: RtpOptions = DEFAULT_RTP_OPTIONS) -> None:
        self.options = options
        self.stats = StreamStats()
        self.remote_addr: Address | None = None
        self._jitter = JitterBuffer(options.jitter_window_packets, self.stats)
        self._pending = bytearray()  # converted PCM not yet a whole frame
        self._pending_start_s = 0.0
        self._first_ts: int | None = None
        self._last_ts = 0  # extended RTP timestamp of the last released packet

    def feed(self, data: bytes, addr: Address | None = None) -> list[AudioChunk]:
        """Take one datagram; return the whole frames it completes. Never raises."""
        self.stats.received += 1
        try:
            packet = parse_rtp(data, self.options)
        except RtpError as exc:
            self.stats.count_malformed(exc.reason)
            return []
        accepted_before = self.stats.accepted
        released = self._jitter.push(packet)
        if self.remote_addr is None and addr is not None and self.stats.accepted > accepted_before:
            # Symmetric RTP: answer to where the first good packet came from.
            self.remote_addr = addr
        return self._frames(released)

    def drain(self) -> list[AudioChunk]:
        """Flush the reorder window at end of stream; a trailing partial frame is dropped."""
        frames = self._frames(self._jitter.drain())
        self._pending.clear()
        return frames

    def _frames(self, packets: list[RtpPacket]) -> list[AudioChunk]:
        out: list[AudioChunk] = []
        rate = self.options.sample_rate
        size = self.options.frame_bytes
        for packet in packets:
            if self._first_ts is None:
                self._first_ts = self._last_ts = packet.timestamp
            self._last_ts += signed_delta(packet.timestamp, self._last_ts % TS_MOD, TS_MOD)
            if not self._pending:
                # Media time comes from the RTP clock so a lost packet leaves a visible gap.
                self._pending_start_s = (self._last_ts - self._first_ts) / rate
            codec = self.options.payload_types[packet.payload_type]
            self._pending += pcm_from_payload(packet.payload, codec, self.options.wire_byte_order)
            while len(self._pending) >= size:
                out.append(AudioChunk(bytes(self._pending[:size]), rate, self._pending_start_s))
                del self._pending[:size]
                self._pending_start_s += size / 2 / rate
        return out


_CLOSED: Final = object()


class RtpReceiver(asyncio.DatagramProtocol):
    """One call's RTP endpoint on loopback: ``async for chunk in receiver``, then ``aclose()``.

    Nothing raised by a datagram escapes ``datagram_received``: a bad packet must never take
    down the call, so every outcome is counted in ``stats`` instead.
    """

    def __init__(self, options: RtpOptions = DEFAULT_RTP_OPTIONS) -> None:
        self.options = options
        self.core = RtpStreamCore(options)
        self._queue: asyncio.Queue[AudioChunk | object] = asyncio.Queue(options.queue_frames)
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False
        self.internal_errors = 0

    @classmethod
    async def bind(
        cls, port: int, options: RtpOptions = DEFAULT_RTP_OPTIONS, host: str = "127.0.0.1"
    ) -> RtpReceiver:
        """Open a receiver on ``host:port`` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        receiver = cls(options)
        await loop.create_datagram_endpoint(lambda: receiver, local_addr=(host, port))
        return receiver

    @property
    def stats(self) -> StreamStats:
        """Counters of this stream."""
        return self.core.stats

    @property
    def remote_addr(self) -> Address | None:
        """Where the first valid packet came from (for symmetric RTP), once known."""
        return self.core.remote_addr

    @property
    def local_port(self) -> int:
        """The UDP port this receiver is bound to."""
        if self._transport is None:
            raise RuntimeError("receiver is not bound")
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, addr: Address) -> None:
        """Send one datagram from this receiver's port (symmetric RTP: the same socket)."""
        if self._transport is not None and not self._closed:
            self._transport.sendto(data, addr)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio callback)."""
        # The selector transport is not a DatagramTransport subclass, only shaped like one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed one datagram through the core and queue its frames (asyncio callback)."""
        if self._closed:
            return
        try:
            for chunk in self.core.feed(data, addr):
                self._enqueue(chunk)
        except Exception:  # a bug here must cost one packet, never the call
            self.internal_errors += 1
            log.exception("rtp datagram handling failed", extra={"port": self._port_or_none()})

    def error_received(self, exc: Exception) -> None:
        """ICMP errors on a receive-only socket are harmless; just log them."""
        log.debug("rtp socket error", extra={"error": repr(exc)})

    def _enqueue(self, chunk: AudioChunk) -> None:
        if self._queue.full():
            # Drop the OLDEST frame: for turn-taking and barge-in the caller's latest words
            # matter more than audio the consumer is already too far behind to use.
            self._queue.get_nowait()
            self.stats.dropped_queue_full += 1
        self._queue.put_nowait(chunk)

    def _port_or_none(self) -> int | None:
        return self.local_port if self._transport is not None else None

    def __aiter__(self) -> RtpReceiver:
        return self

    async def __anext__(self) -> AudioChunk:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, AudioChunk):
            return item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop receiving; frames already queued (and the reorder window) are still yielded."""
        if self._closed:
            return
        for chunk in self.core.drain():
            self._enqueue(chunk)
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        if self._queue.empty():
            self._queue.put_nowait(_CLOSED)  # wakes a consumer blocked in __anext__


class PortPool:
    """Hands out even UDP ports (RTP convention; odd is RTCP) from ``start..end`` per call."""

    def __init__(self, start: int, end: int, host: str = "127.0.0.1") -> None:
        if not 0 < start <= end < 65536:
            raise ValueError(f"bad port range {start}-{end}")
        self.start = start
        self.end = end
        self.host = host
        self._ports = list(range(start + start % 2, end + 1, 2))
        self._in_use: set[int] = set()
        self._cursor = 0

    @property
    def in_use(self) -> frozenset[int]:
        """Ports currently allocated."""
        return frozenset(self._in_use)

    def allocate(self) -> int:
        """Return a free even port; raise ``PortPoolExhausted`` when none is left."""
        # Round-robin, so a just-released port is reused last: late packets of the previous
        # call must not land in the next call's stream.
        for _ in range(len(self._ports)):
            port = self._ports[self._cursor]
            self._cursor = (self._cursor + 1) % len(self._ports)
            if port not in self._in_use and self._bindable(port):
                self._in_use.add(port)
                return port
        raise PortPoolExhausted(self.start, self.end)

    def release(self, port: int) -> None:
        """Give a port back; releasing twice is harmless so cleanup paths can be simple."""
        self._in_use.discard(port)

    def _bindable(self, port: int) -> bool:
        # Another process (or Asterisk's own RTP range) may hold it; skip rather than fail later.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((self.host, port))
            except OSError:
                return False
        return True
