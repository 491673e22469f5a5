"""Errors raised by the ``asr`` package.

Exception tree::

    AsrError
    ├── RtpError                  an RTP datagram is malformed or not accepted (``reason``)
    ├── ModelError                a speech model is missing or cannot be loaded
    │   ├── ModelNotFound         the model folder does not exist
    │   ├── ModelFilesMissing     the folder lacks model.bin, config.json, tokenizer.json, ...
    │   ├── ModelCorrupt          CTranslate2 or the tokenizer could not load the files
    │   ├── ModelDeviceUnavailable  cuda was asked for and there is no CUDA device
    │   └── DefaultModelError     the shipped default Whisper cannot be assembled or verified
    ├── IntentModelError          the intent classifier's training data is unusable
    ├── AsrOverloaded             too many utterances wait for the decoder (request refused)
    ├── EngineClosed              the engine was closed while the request waited
    ├── DecodeFailed              CTranslate2 failed while decoding a batch
    └── PortPoolExhausted         no free RTP port is left in the configured range
"""

from __future__ import annotations


class AsrError(Exception):
    """Base of every error this package raises on purpose."""


class RtpError(AsrError):
    """An RTP packet was rejected; ``reason`` is a short stable code used as a stats key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"rtp packet rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class ModelError(AsrError):
    """A speech model is missing, corrupt or failed to load."""


class PortPoolExhausted(AsrError):
    """Every port of the RTP port range is allocated or taken by another process."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__(f"no free even RTP port in {start}-{end}")
        self.start = start
        self.end = end


class IntentModelError(AsrError):
    """The intent classifier's training data is missing or malformed."""


class ModelNotFound(ModelError):
    """The model folder does not exist (or is not a folder)."""

    def __init__(self, folder: str) -> None:
        super().__init__(f"whisper model folder {folder} does not exist "
                         "(scripts/fetch_models.py downloads it; see models/README.md)")
        self.folder = folder


class ModelFilesMissing(ModelError):
    """The model folder lacks files the loader needs; ``missing`` names them."""

    def __init__(self, folder: str, missing: tuple[str, ...], hint: str = "") -> None:
        super().__init__(f"whisper model folder {folder} is missing {', '.join(missing)}"
                         + (f" ({hint})" if hint else ""))
        self.folder = folder
        self.missing = missing


class ModelCorrupt(ModelError):
    """The model files exist but CTranslate2 or the tokenizer cannot read them."""

    def __init__(self, folder: str, detail: str) -> None:
        super().__init__(f"whisper model in {folder} cannot be loaded: {detail}")
        self.folder = folder
        self.detail = detail


class ModelDeviceUnavailable(ModelError):
    """The requested device (``cuda``) is not present on this machine."""


class DefaultModelError(ModelError):
    """The default Whisper's packages are missing, or the assembled files fail their sha256."""


class AsrOverloaded(AsrError):
    """The ASR request queue is full; the request was rejected rather than queued."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(f"asr queue full: {waiting} requests waiting (limit {limit})")
        self.waiting = waiting
        self.limit = limit


class EngineClosed(AsrError):
    """The ASR engine was closed; pending and new requests fail with this."""


class DecodeFailed(AsrError):
    """Decoding a batch failed inside CTranslate2; every request of the batch gets this."""
