"""G.711 µ-law (ITU-T G.711, the PCMU of RTP payload type 0) to and from 16-bit linear PCM."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_BIAS = 0x84
_BIAS_14 = _BIAS >> 2  # the encoder works on 14-bit magnitudes, as the reference coder does
_CLIP_14 = 8159
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def _decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


_DECODE = _decode_table()


def ulaw_decode(payload: bytes) -> bytes:
    """µ-law bytes to 16-bit little-endian PCM (one sample per byte)."""
    return _DECODE[np.frombuffer(payload, dtype=np.uint8)].astype("<i2").tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """16-bit little-endian PCM to µ-law bytes (an odd trailing byte is ignored)."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int32) >> 2
    mask = np.where(samples < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(samples), _CLIP_14) + _BIAS_14
    segment = np.searchsorted(_SEGMENT_ENDS, magnitude)
    code = np.where(segment < 8, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F), 0x7F)
    return (code ^ mask).astype(np.uint8).tobytes()
