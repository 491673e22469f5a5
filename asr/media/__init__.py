"""Media ingest: RTP from Asterisk ExternalMedia to in-order 20 ms PCM frames."""

from __future__ import annotations

from asr.media.receiver import PortPool, RtpReceiver, RtpStreamCore
from asr.media.rtp import (
    JitterBuffer,
    RtpOptions,
    RtpPacket,
    StreamStats,
    parse_rtp,
    pcm_from_slin,
)

__all__ = [
    "JitterBuffer",
    "PortPool",
    "RtpOptions",
    "RtpPacket",
    "RtpReceiver",
    "RtpStreamCore",
    "StreamStats",
    "parse_rtp",
    "pcm_from_slin",
]
