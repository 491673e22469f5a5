"""Errors raised by the ``ivr`` package.

Exception tree::

    IvrError
    ├── ProvisioningError        installing or locating a PBX / SIP stack failed
    │   └── ToolMissingError     a host tool (debootstrap, chroot, ...) is not installed
    ├── AsteriskError            running an Asterisk instance failed
    │   ├── PortInUseError       a port the instance needs is already taken
    │   └── AsteriskStartError   the process did not come up (names the step and the log)
    ├── AriError                 the ARI REST or WebSocket interface failed
    │   ├── AriUnavailableError  ARI cannot be reached (connection refused, timeout)
    │   └── AriRequestError      ARI answered with an error status
    ├── RuleError                a routing rule is invalid (names the field)
    ├── PromptError              spoken prompts could not be generated
    ├── SipPhoneError            a pjsua2 phone could not do what was asked
    └── MonitorRefused           a supervisor's listen/whisper/barge cannot start (HTTP status)
"""

from __future__ import annotations


class IvrError(Exception):
    """Base of every error this package raises on purpose."""


class ProvisioningError(IvrError):
    """Installing or locating a dependency (Asterisk, pjsua2) failed."""


class ToolMissingError(ProvisioningError):
    """A host program needed for provisioning is not installed."""


class AsteriskError(IvrError):
    """An Asterisk instance could not be started, queried or stopped."""


class PortInUseError(AsteriskError):
    """A port the instance needs is already bound by another process."""

    def __init__(self, port: int, proto: str, purpose: str) -> None:
        super().__init__(f"{proto.upper()} port {port} ({purpose}) is already in use")
        self.port = port
        self.proto = proto
        self.purpose = purpose


class AsteriskStartError(AsteriskError):
    """Asterisk did not come up; ``step`` says where, ``log`` where to look."""

    def __init__(self, step: str, detail: str, log: str | None = None) -> None:
        where = f" (see {log})" if log else ""
        super().__init__(f"asterisk start failed at step '{step}': {detail}{where}")
        self.step = step
        self.detail = detail
        self.log = log


class AriError(IvrError):
    """The Asterisk REST Interface failed."""


class AriUnavailableError(AriError):
    """ARI could not be reached at all."""


class AriRequestError(AriError):
    """ARI answered a request with an error status."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"ARI {method} {path} -> {status}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class SipPhoneError(IvrError):
    """A SIP phone operation failed (registration, call set-up, media)."""


class RuleError(IvrError):
    """A routing rule is invalid; ``field`` is the dotted path of the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)  # both in args, so the error pickles intact
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class PromptError(IvrError):
    """Spoken prompts could not be generated (catalogue, espeak-ng or sox)."""


class MonitorRefused(IvrError):
    """A monitor cannot start (no such call, no agent to whisper to, unknown phone)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
