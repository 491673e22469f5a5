"""Replay detection: a binary audio fingerprint that flags near-copies of earlier audio.

The fingerprint follows the band-energy-difference idea of Haitsma & Kalker (2002): the sign of
the time derivative of the frequency derivative of log band energies. Signs of log-energy
differences do not change with gain, survive band-limiting to telephone bandwidth (only
300–3000 Hz is used) and G.711 companding, and move little under mild noise. Frames that are
silent in either recording are left out of the comparison, so pauses (digital silence in one
copy, noise in the other) neither help nor hurt.

Layout of ``Fingerprint.data``: magic ``b"VFP"``, format version (1 byte), frame count (uint32
LE), one uint32 LE of sub-fingerprint bits per frame, then the active-frame mask packed 8 per byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

SAMPLE_RATE: Final = 16_000
FRAME: Final = 2048  # 128 ms: long frames make the bits robust to small time misalignment
HOP: Final = 128  # 8 ms: worst-case misalignment between two copies is 4 ms
BANDS: Final = 33  # 33 bands -> 32 bits per frame
LOW_HZ: Final = 300.0
HIGH_HZ: Final = 3000.0
SILENCE_BELOW_PEAK_DB: Final = 35.0
SILENCE_FLOOR_DBFS: Final = -75.0
MAX_OFFSET_S: Final = 1.0
# Fewer frames than this (≈0.4 s of speech) compared at an offset is not evidence of a copy.
MIN_OVERLAP_FRAMES: Final = 50

# Measured with espeak-ng 1.51 (en-us) "3 8 1 9 0 4" at 16 kHz, similarity to the original of:
#   copies (sox gain + 8 kHz u-law round trip + white noise): gain 0.6 at 30 dB SNR 0.78,
#   gain 1.4 at 25 dB 0.71; gain 0.6 at 40/20 dB 0.84/0.63; shifted 0.5 s later 0.72,
#   first 0.73 s cut off 0.73;
#   not copies: "7 2 5 6 1 8" 0.11, same digits at -s 140 0.09, -s 200 0.10, -p 70 0.27,
#   -p 30 0.38; "3 8 1 7 2 5" (its first half is the identical synthetic audio) 0.44.
# 0.5 sits above every non-copy, even the half-identical one, and below a copy at 20 dB SNR.
DEFAULT_REPLAY_THRESHOLD: Final = 0.5

_MAGIC: Final = b"VFP"
_VERSION: Final = 1
_HEADER: Final = struct.Struct("<3sBI")


@dataclass(frozen=True)
class Fingerprint:
    """A compact, storable fingerprint of one recording (see the module docstring for layout)."""

    data: bytes

    def __post_init__(self) -> None:
        self.unpack()  # fail on construction, not on first comparison

    @property
    def frames(self) -> int:
        """Number of 8 ms frames."""
        return int(_HEADER.unpack_from(self.data)[2])

    def unpack(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
        """The per-frame 32-bit sub-fingerprints and the active (non-silent) frame mask."""
        if len(self.data) < _HEADER.size:
            raise ValueError("fingerprint is too short")
        magic, version, count = _HEADER.unpack_from(self.data)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError(f"not a version {_VERSION} voiceprint fingerprint")
        mask_len = (count + 7) // 8
        if len(self.data) != _HEADER.size + 4 * count + mask_len:
            raise ValueError("fingerprint length does not match its frame count")
        bits = np.frombuffer(self.data, dtype="<u4", count=count, offset=_HEADER.size)
        packed = np.frombuffer(self.data, dtype=np.uint8, offset=_HEADER.size + 4 * count)
        active = np.unpackbits(packed, count=count).astype(bool)
        return bits.astype(np.uint32), active


def _as_float(pcm: bytes | npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    if isinstance(pcm, bytes | bytearray | memoryview):
        samples = np.frombuffer(bytes(pcm), dtype="<i2")
    else:
        samples = np.asarray(pcm)
        if samples.dtype != np.int16:
            raise ValueError(f"PCM must be int16 samples, got {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError("PCM must be mono (one dimension)")
    return samples.astype(np.float64) / 32768.0


def _band_edges() -> npt.NDArray[np.intp]:
    hz = np.geomspace(LOW_HZ, HIGH_HZ, BANDS + 1)
    return np.round(hz * FRAME / SAMPLE_RATE).astype(np.intp)


def fingerprint(pcm: bytes | npt.NDArray[np.int16]) -> Fingerprint:
    """Fingerprint 16 kHz mono 16-bit PCM (bytes, little-endian, or an int16 array)."""
    x = _as_float(pcm)
    if x.size < FRAME:
        x = np.pad(x, (0, FRAME - x.size))
    view = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP]
    power = np.abs(np.fft.rfft(view * np.hanning(FRAME), axis=1)) ** 2
    edges = _band_edges()
    cumulative = np.concatenate(
        [np.zeros((power.shape[0], 1)), np.cumsum(power, axis=1)], axis=1
    )
    band_power = cumulative[:, edges[1:]] - cumulative[:, edges[:-1]]
    log_e = np.log10(band_power + 1e-12)
    freq_diff = log_e[:, :-1] - log_e[:, 1:]
    time_diff = np.diff(freq_diff, axis=0, prepend=freq_diff[:1])
    weights = (1 << np.arange(BANDS - 1, dtype=np.uint64)).astype(np.uint64)
    bits = ((time_diff > 0).astype(np.uint64) @ weights).astype("<u4")

    frame_db = 10.0 * np.log10(band_power.sum(axis=1) / (FRAME / 2) ** 2 + 1e-20)
    floor = max(float(frame_db.max()) - SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS)
    active = frame_db > floor
    active[0] = False  # its time difference is against itself
    header = _HEADER.pack(_MAGIC, _VERSION, bits.size)
    return Fingerprint(header + bits.tobytes() + np.packbits(active).tobytes())


def similarity(a: Fingerprint, b: Fingerprint, max_offset_s: float = MAX_OFFSET_S) -> float:
    """Best agreement of ``a`` and ``b`` over time offsets up to ``max_offset_s``, in [0, 1].

    1 is bit-identical on every frame both have speech in; unrelated audio scores near 0 (the
    score is ``1 - 2 * bit_error_rate``, clamped at 0).
    """
    bits_a, act_a = a.unpack()
    bits_b, act_b = b.unpack()
    max_lag = int(round(max_offset_s * SAMPLE_RATE / HOP))
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        # frame i of a is compared with frame i + lag of b
        start_a = max(0, -lag)
        stop_a = min(bits_a.size, bits_b.size - lag)
        if stop_a - start_a < MIN_OVERLAP_FRAMES:
            continue
        both = act_a[start_a:stop_a] & act_b[start_a + lag : stop_a + lag]
        compared = int(both.sum())
        if compared < MIN_OVERLAP_FRAMES:
            continue
        diff = bits_a[start_a:stop_a][both] ^ bits_b[start_a + lag : stop_a + lag][both]
        errors = int(np.bitwise_count(diff).sum())
        best = max(best, 1.0 - 2.0 * errors / (32 * compared))
    return best


def is_replay(
    candidate: Fingerprint,
    earlier: Iterable[Fingerprint],
    threshold: float = DEFAULT_REPLAY_THRESHOLD,
) -> tuple[bool, float]:
    """Whether ``candidate`` is a near-copy of any ``earlier`` fingerprint, and the best score."""
    best = 0.0
    for previous in earlier:
        best = max(best, similarity(candidate, previous))
    return best >= threshold, best


# ---- the lookup index: which earlier prints are worth a full comparison -------------------

# Each active frame gives two 16-bit keys (the low and the high half of its 32 bits, told apart
# by bit 16). A copy of earlier audio shares many exact keys with it at one consistent frame
# offset; unrelated audio shares few, at scattered offsets. Measured on espeak-ng speech through
# a sox G.711 round trip with noise (scripts/bench_voiceprint.py keeps the numbers honest):
# copies at 20-40 dB SNR, shifted 0.5 s or with the first 0.73 s cut got 101-283 votes at their
# best offset; different utterances 3-53 (the 53: half of it was the identical synthetic audio).
INDEX_VOTES: Final = 20  # votes at one offset that make an earlier print a candidate
INDEX_CANDIDATES: Final = 16  # at most this many candidates get the full comparison
HIT_BUDGET: Final = 40_000  # stored key hits read per check, rarest keys first
_OFFSET_BIN: Final = 2  # frames; two copies may be misaligned by up to one frame
_HALF: Final = 1 << 16


def index_keys(fp: Fingerprint) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(keys, frames) of a fingerprint's active frames, two keys per frame."""
    bits, active = fp.unpack()
    frames = np.nonzero(active)[0].astype(np.int64)
    values = bits[frames].astype(np.int64)
    keys = np.concatenate([values & 0xFFFF, (values >> 16) | _HALF])
    return keys, np.concatenate([frames, frames])


def offset_votes(query: Fingerprint, ids: npt.ArrayLike, keys: npt.ArrayLike,
                 frames: npt.ArrayLike) -> dict[int, int]:
    """For each earlier print (``ids``, with its indexed ``keys`` at ``frames``), the number
    of keys it shares with ``query`` at the best single frame offset."""
    hit_ids = np.asarray(ids, dtype=np.int64)
    hit_keys = np.asarray(keys, dtype=np.int64)
    hit_frames = np.asarray(frames, dtype=np.int64)
    query_keys, query_frames = index_keys(query)
    if hit_ids.size == 0 or query_keys.size == 0:
        return {}
    order = np.argsort(query_keys, kind="stable")
    query_keys, query_frames = query_keys[order], query_frames[order]
    low = np.searchsorted(query_keys, hit_keys, "left")
    count = np.searchsorted(query_keys, hit_keys, "right") - low
    total = int(count.sum())
    if total == 0:
        return {}
    # Every (hit, query frame with the same key) pair: a ragged expansion without a loop.
    first = np.repeat(low - (np.cumsum(count) - count), count)
    position = np.arange(total) + first
    offsets = np.repeat(hit_frames, count) - query_frames[position]
    bins = np.floor_divide(offsets, _OFFSET_BIN) + (1 << 30)
    pairs, votes = np.unique(np.repeat(hit_ids, count) * (1 << 31) + bins, return_counts=True)
    best: dict[int, int] = {}
    for pair, vote in zip((pairs >> 31).tolist(), votes.tolist(), strict=True):
        if vote > best.get(pair, 0):
            best[pair] = vote
    return best


def informative_keys(counts: Iterable[tuple[int, int]], budget: int = HIT_BUDGET) -> list[int]:
    """The rarest of the query's keys, as many as fit ``budget`` stored hits: a key that many
    earlier prints share says little about any one of them, and reading it costs the most.
    ``counts`` pairs each key with how often the account's index holds it."""
    chosen: list[int] = []
    spent = 0
    for key, count in sorted(counts, key=lambda pair: (pair[1], pair[0])):
        if spent + count > budget:
            break
        chosen.append(key)
        spent += count
    return chosen


def candidates(votes: dict[int, int]) -> list[int]:
    """The earlier prints worth a full comparison, most votes first."""
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    return [print_id for print_id, vote in ranked[:INDEX_CANDIDATES] if vote >= INDEX_VOTES]
