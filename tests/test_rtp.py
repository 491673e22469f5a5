"""RTP ingest: parser, reorder window, byte order, receiver over real UDP, port pool."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.errors import PortPoolExhausted, RtpError
from asr.media import (
    JitterBuffer,
    PortPool,
    RtpOptions,
    RtpPacket,
    RtpReceiver,
    RtpStreamCore,
    parse_rtp,
    pcm_from_slin,
)

pytestmark = pytest.mark.unit

SSRC = 0x1234ABCD
FRAME = 640


def rtp(
    seq: int,
    payload: bytes = b"\x00" * FRAME,
    *,
    ts: int | None = None,
    ssrc: int = SSRC,
    pt: int = 118,
    version: int = 2,
    csrc: int = 0,
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    """Build one RTP datagram; fields can be made wrong on purpose."""
    first = (version << 6) | (0x20 if padding else 0) | (0x10 if extension is not None else 0)
    first |= csrc & 0x0F
    ts = seq * 320 if ts is None else ts
    data = struct.pack("!BBHII", first, pt & 0x7F, seq % 65536, ts % 2**32, ssrc)
    data += b"\x00\x00\x00\x01" * csrc
    if extension is not None:
        data += b"\xbe\xde" + struct.pack("!H", len(extension) // 4) + extension
    data += payload
    if padding:
        data += b"\x00" * (padding - 1) + bytes([padding])
    return data


def tagged(seq: int) -> bytes:
    """A 640-byte payload whose samples all equal ``seq`` (big-endian), to check order."""
    return struct.pack(">h", seq % 30000) * (FRAME // 2)


def tag_of(pcm: bytes) -> int:
    """Read back the tag from little-endian PCM."""
    value: int = struct.unpack("<h", pcm[:2])[0]
    return value


# -- parser ------------------------------------------------------------------------------


def test_valid_packet_parses_with_csrc_extension_and_padding() -> None:
    data = rtp(7, b"\x01\x02" * 10, csrc=2, extension=b"\x00" * 8, padding=4)
    packet = parse_rtp(data)
    assert packet == RtpPacket(2, True, False, 118, 7, 7 * 320, SSRC, b"\x01\x02" * 10)


MALFORMED = {
    "too_short": b"\x80\x76\x00",
    "bad_version": rtp(1, version=1),
    "csrc_past_end": rtp(1, b"", csrc=15)[:40],
    "extension_past_end": rtp(1, b"", extension=b"\x00" * 8)[:18],
    "bad_padding": rtp(1, b"\x00\x00")[:-1] + b"\x00\xff",  # P bit set below
    "bad_payload_type": rtp(1, pt=0),
    "too_large": rtp(1, b"\x00" * 1600),
    "odd_payload": rtp(1, b"\x00" * 641),
    "empty_payload": rtp(1, b""),
}
MALFORMED["bad_padding"] = bytes([MALFORMED["bad_padding"][0] | 0x20]) + MALFORMED[
    "bad_padding"
][1:]


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_parser_rejects_with_reason(reason: str) -> None:
    with pytest.raises(RtpError) as caught:
        parse_rtp(MALFORMED[reason])
    assert caught.value.reason == reason


def test_accepted_payload_types_and_size_are_configuration() -> None:
    options = RtpOptions(payload_types={11: "slin16-static"}, max_packet_bytes=200)
    assert parse_rtp(rtp(1, b"\x00" * 100, pt=11), options).payload_type == 11
    with pytest.raises(RtpError, match="bad_payload_type"):
        parse_rtp(rtp(1, b"\x00" * 100), options)
    with pytest.raises(RtpError, match="too_large"):
        parse_rtp(rtp(1, b"\x00" * 200, pt=11), options)


# -- byte order ----------------------------------------------------------------------------


def sine(n: int = 320, freq: float = 1000.0, amplitude: int = 12000) -> np.ndarray:
    """A known tone at 16 kHz."""
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / 16000)).astype(np.int16)


def test_big_endian_slin_becomes_little_endian_samples() -> None:
    tone = sine()
    wire = tone.astype(">i2").tobytes()
    assert wire != tone.astype("<i2").tobytes()  # the test would be blind otherwise
    assert np.array_equal(np.frombuffer(pcm_from_slin(wire), dtype="<i2"), tone)
    assert pcm_from_slin(tone.astype("<i2").tobytes(), "little") == tone.astype("<i2").tobytes()
    with pytest.raises(RtpError):
        pcm_from_slin(b"\x00")


# -- reorder window ---------------------------------------------------------------------


def order(buffer: JitterBuffer, seqs: list[int]) -> list[int]:
    """Push packets with these sequence numbers; return the released order after drain."""
    out = [p.sequence for s in seqs for p in buffer.push(parse_rtp(rtp(s)))]
    return out + [p.sequence for p in buffer.drain()]


def test_sequence_wraparound_keeps_order() -> None:
    buffer = JitterBuffer(3)
    assert order(buffer, [65533, 65534, 0, 65535, 1, 2]) == [65533, 65534, 65535, 0, 1, 2]
    assert (buffer.stats.lost, buffer.stats.late, buffer.stats.reordered) == (0, 0, 1)


def test_reordering_within_window_is_fixed_and_beyond_is_late() -> None:
    buffer = JitterBuffer(3)
    assert order(buffer, [10, 12, 13, 11, 14]) == [10, 11, 12, 13, 14]
    assert buffer.stats.reordered == 1
    late = JitterBuffer(2)
    assert order(late, [10, 12, 13, 14, 11, 15]) == [10, 12, 13, 14, 15]
    assert (late.stats.lost, late.stats.late, late.stats.accepted) == (1, 1, 5)


def test_duplicates_are_dropped() -> None:
    buffer = JitterBuffer(3)
    assert order(buffer, [1, 2, 2, 3, 1, 4, 5, 6, 2]) == [1, 2, 3, 4, 5, 6]
    assert buffer.stats.duplicates == 3
    assert buffer.stats.late == 0


def test_loss_inserts_nothing_but_is_counted() -> None:
    buffer = JitterBuffer(1)
    assert order(buffer, [1, 2, 5, 6, 7]) == [1, 2, 5, 6, 7]
    assert buffer.stats.lost == 2


def test_second_ssrc_mid_call_is_dropped_and_counted() -> None:
    core = RtpStreamCore(RtpOptions(jitter_window_packets=0))
    frames = core.feed(rtp(1, tagged(1)))
    frames += core.feed(rtp(2, tagged(99), ssrc=0xBAD))
    frames += core.feed(rtp(2, tagged(2)))
    assert [tag_of(f.pcm) for f in frames] == [1, 2]
    assert core.stats.wrong_ssrc == 1


def test_sender_sequence_restart_resynchronises() -> None:
    buffer = JitterBuffer(0)
    assert order(buffer, [5000, 5001, 10, 11, 12]) == [5000, 5001, 11, 12]
    assert buffer.stats.late == 1  # the first packet of the restart cannot be told from junk


# -- receiver over real UDP ------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[RtpReceiver]:
    """A receiver on an ephemeral loopback port."""
    rx = await RtpReceiver.bind(0, RtpOptions(jitter_window_packets=0))
    yield rx
    await rx.aclose()


def send(port: int, datagrams: list[bytes]) -> tuple[str, int]:
    """Send datagrams from a fresh socket; return its address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for data in datagrams:
            sock.sendto(data, ("127.0.0.1", port))
        address: tuple[str, int] = sock.getsockname()
        return address


async def until_received(rx: RtpReceiver, count: int) -> None:
    """Wait (bounded) until the receiver has seen ``count`` datagrams."""
    for _ in range(200):
        if rx.stats.received >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"received {rx.stats.received} of {count}")


async def test_malformed_datagrams_are_counted_and_never_break_the_stream(
    receiver: RtpReceiver,
) -> None:
    good = [rtp(1, tagged(1)), rtp(2, tagged(2))]
    datagrams = [good[0], *MALFORMED.values(), good[1]]
    source = send(receiver.local_port, datagrams)
    await until_received(receiver, len(datagrams))
    assert receiver.stats.malformed == dict.fromkeys(MALFORMED, 1)
    assert receiver.stats.accepted == 2
    assert receiver.remote_addr == source
    assert receiver.internal_errors == 0
    await receiver.aclose()
    assert [tag_of(f.pcm) async for f in receiver] == [1, 2]


async def test_known_sine_arrives_as_little_endian_frames(receiver: RtpReceiver) -> None:
    tone = sine(320 * 3)
    payloads = [tone[i * 320 : (i + 1) * 320].astype(">i2").tobytes() for i in range(3)]
    send(receiver.local_port, [rtp(100 + i, p) for i, p in enumerate(payloads)])
    chunks = [await anext(receiver) for _ in range(3)]
    assert [c.timestamp_s for c in chunks] == [0.0, 0.02, 0.04]
    assert all(len(c.pcm) == FRAME and c.sample_rate == 16000 for c in chunks)
    got = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2")
    assert np.array_equal(got, tone)


async def test_full_queue_drops_oldest_frames_and_counts_them() -> None:
    rx = await RtpReceiver.bind(0, RtpOptions(jitter_window_packets=0, queue_frames=5))
    send(rx.local_port, [rtp(i, tagged(i)) for i in range(8)])
    await until_received(rx, 8)
    assert rx.stats.dropped_queue_full == 3
    await rx.aclose()
    assert [tag_of(f.pcm) async for f in rx] == [3, 4, 5, 6, 7]


async def test_aclose_wakes_a_waiting_consumer(receiver: RtpReceiver) -> None:
    async def consume() -> list[int]:
        return [tag_of(f.pcm) async for f in receiver]

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    await receiver.aclose()
    assert await asyncio.wait_for(task, 1.0) == []


# -- port pool --------------------------------------------------------------------------


def test_port_pool_allocates_even_ports_until_exhausted_then_reuses_released() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1] // 2 * 2
    pool = PortPool(base - 10 if base > 20000 else base + 10, base if base > 20000 else base + 20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        ports: list[int] = []
        with pytest.raises(PortPoolExhausted):
            for _ in range(20):
                ports.append(pool.allocate())
                if len(ports) == 1:
                    taken.bind(("127.0.0.1", ports[0] + 2))  # another process grabs the next
        assert all(p % 2 == 0 and pool.start <= p <= pool.end for p in ports)
        assert ports[0] + 2 not in ports
        assert len(set(ports)) == len(ports) == 5
        pool.release(ports[2])
        pool.release(ports[2])  # twice is harmless
        assert pool.allocate() == ports[2]
        assert pool.in_use == frozenset(ports)
    with pytest.raises(ValueError):
        PortPool(100, 50)


# -- fuzz -------------------------------------------------------------------------------

valid_packets = st.builds(
    lambda seq, ssrc, ts: rtp(seq, tagged(seq), ssrc=ssrc, ts=ts),
    st.integers(0, 65535) | st.integers(65530, 65535) | st.integers(0, 8),
    st.sampled_from([SSRC, SSRC, SSRC, 7]),
    st.integers(0, 2**32 - 1),
)
datagrams = st.lists(st.binary(max_size=1600) | valid_packets, max_size=60)


def rejected_by_parser(data: bytes) -> bool:
    """True when the parser refuses the datagram."""
    try:
        parse_rtp(data)
    except RtpError:
        return True
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams, st.integers(0, 4))
def test_fuzz_never_raises_and_every_datagram_is_accounted_for(
    packets: list[bytes], window: int
) -> None:
    core = RtpStreamCore(RtpOptions(jitter_window_packets=window))
    live = [f for data in packets for f in core.feed(data, ("127.0.0.1", 9))]
    frames = live + core.drain()
    s = core.stats
    assert s.received == len(packets)
    assert s.received == s.accepted + s.duplicates + s.late + s.wrong_ssrc + s.malformed_total
    assert s.lost >= 0 and s.reordered <= s.accepted
    if all(len(p) == 12 + FRAME or rejected_by_parser(p) for p in packets):
        assert len(frames) == s.accepted  # every accepted 20 ms packet comes out once
    # The asyncio-facing wrapper swallows nothing it should count, and raises nothing.
    rx = RtpReceiver(RtpOptions(jitter_window_packets=window, queue_frames=4))
    for data in packets:
        rx.datagram_received(data, ("127.0.0.1", 9))
    assert rx.internal_errors == 0
    assert rx.stats.received == len(packets)
    assert rx.stats.accepted == s.accepted
    assert rx.stats.dropped_queue_full == max(0, len(live) - 4)  # queue holds the newest 4


# -- G.711 µ-law and the packer (the browser monitor's path back into Asterisk) ---------------


@pytest.mark.unit
def test_ulaw_reference_values_and_round_trip() -> None:
    from asr.media.g711 import ulaw_decode, ulaw_encode

    # Code words of ITU-T G.711 (as the reference coder and Asterisk produce them).
    pcm = np.array([0, -1, 32767, -32768, 1000, -1000], dtype="<i2").tobytes()
    assert ulaw_encode(pcm).hex() == "ff7e8000ce4e"
    assert np.frombuffer(ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])), "<i2").tolist() == [
        0, 0, 32124, -32124]
    # Every 16-bit value survives a round trip within about half a quantisation step (a step is
    # 1/16 to 1/32 of the value in each segment; near zero the 14-bit encoder rounds down).
    every = np.arange(-32768, 32768, dtype=np.int32)
    back = np.frombuffer(ulaw_decode(ulaw_encode(every.astype("<i2").tobytes())), "<i2")
    error = np.abs(back.astype(np.int32) - np.clip(every, -32124, 32124))
    assert (error <= np.maximum(8, np.abs(every) // 10)).all()
    assert ulaw_encode(b"\x01") == b""  # an odd trailing byte is not a sample


@pytest.mark.unit
def test_packer_builds_packets_the_receiver_reads_back() -> None:
    from types import MappingProxyType

    from asr.media.rtp import DEFAULT_RTP_OPTIONS, RtpOptions, RtpPacker

    for options in (DEFAULT_RTP_OPTIONS,
                    RtpOptions(payload_types=MappingProxyType({0: "ulaw"}), sample_rate=8000)):
        packer = RtpPacker(options, ssrc=7)
        packer.sequence, packer.timestamp = 65535, 2**32 - 10  # both wrap on the next packet
        tone = (np.sin(np.arange(options.frame_bytes // 2) / 5.0) * 8000).astype("<i2")
        core = RtpStreamCore(options)
        chunks = [c for _ in range(3) for c in core.feed(packer.pack(tone.tobytes()))]
        chunks += core.drain()
        assert core.stats.accepted == 3 and core.stats.malformed_total == 0
        heard = np.frombuffer(b"".join(c.pcm for c in chunks), "<i2")
        assert len(heard) == 3 * len(tone)
        assert np.abs(heard[: len(tone)].astype(int) - tone).max() <= 300
        assert packer.sequence == 2 and packer.ssrc == 7
