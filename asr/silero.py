"""Silero VAD (ONNX, MIT) as the second opinion on a webrtcvad speech onset.

webrtcvad is an energy/spectrum GMM: music on hold, babble and line noise look voiced to it and
would stop a prompt (false barge-in). Silero is a small neural VAD trained to tell speech from
those. Running it on every frame of every call would cost a lot of the event loop; it is asked
only when webrtcvad is about to declare an onset, over the audio of that onset (a few hundred
milliseconds), from a fresh state. Its model ships in the ``silero-vad`` wheel; onnxruntime runs
it without torch.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.errors import ModelFilesMissing

SAMPLE_RATE = 16000
CHUNK = 512  # samples the 16 kHz model takes per step (32 ms)
CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk


@dataclass(frozen=True)
class SileroOptions:
    """When Silero confirms an onset."""

    # An onset is speech when this many 32 ms chunks reach this probability. Chosen on
    # scripts/bench_turns.py: 0.5 x 1 let 33 of 40 music clips barge in, 0.85 x 2 let 7,
    # for about 100 ms more onset delay and no extra missed barge-in.
    threshold: float = 0.85
    min_chunks: int = 2
    model_path: Path | None = None  # None: the model inside the silero-vad package


def packaged_model() -> Path:
    """The 16 kHz ONNX model of the installed ``silero-vad`` package (not imported: no torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing("silero_vad", ("silero_vad.onnx",), "pip install silero-vad")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


class SileroVad:
    """Speech probability of short 16 kHz clips; one ONNX session shared by every call."""

    def __init__(self, options: SileroOptions | None = None) -> None:
        import onnxruntime

        self.options = options or SileroOptions()
        path = self.options.model_path or packaged_model()
        if not path.is_file():
            raise ModelFilesMissing(str(path.parent), (path.name,), "pip install silero-vad")
        session_options = onnxruntime.SessionOptions()
        # One thread: it runs inline for a few milliseconds; a pool would fight the decoder.
        session_options.intra_op_num_threads = 1
        session_options.inter_op_num_threads = 1
        self._session: Any = onnxruntime.InferenceSession(
            str(path), sess_options=session_options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def probabilities(self, pcm16le: bytes) -> list[float]:
        """Speech probability of each 32 ms chunk of ``pcm16le`` (fresh state; tail dropped)."""
        audio = np.frombuffer(pcm16le, dtype="<i2").astype(np.float32) / 32768.0
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros((1, CONTEXT), dtype=np.float32)
        out: list[float] = []
        with self._lock:
            for start in range(0, len(audio) - CHUNK + 1, CHUNK):
                chunk = np.concatenate([context, audio[None, start:start + CHUNK]], axis=1)
                prob, state = self._session.run(
                    None, {"input": chunk, "state": state, "sr": self._sr})
                context = chunk[:, -CONTEXT:]
                out.append(float(prob[0, 0]))
        return out

    def is_speech(self, pcm16le: bytes) -> bool:
        """True when enough chunks of the clip reach the threshold."""
        probabilities = self.probabilities(pcm16le)
        return sum(p >= self.options.threshold for p in probabilities) >= self.options.min_chunks
