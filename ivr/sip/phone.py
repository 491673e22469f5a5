"""SIP phones on pjsua2 with no sound device: callers that dial, play, send DTMF and record;
agents that register and auto-answer.

pjsua2 is not thread-safe from Python, so one :class:`SipStack` owns the library on a dedicated
thread (``threadCnt = 0``: that thread also polls for SIP events); every public method marshals its
work onto that thread and waits for the result. Callbacks run on that thread too and only set
fields and wake waiters.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import sys
import threading
import time
import wave
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from ivr.errors import SipPhoneError

log = logging.getLogger(__name__)
T = TypeVar("T")
# PJSUA_MAX_ACC of our build (scripts/build_pjsua2) is 32, and going past it aborts the
# process; pjsua holds slots of its own besides our accounts (a full run reached its limit with
# 31 of ours), so we stop two short of it.
MAX_ACCOUNTS = 30

try:  # pjsua2 is built from source by scripts/build_pjsua2; callers handle its absence.
    import pjsua2 as pj
except ImportError:  # pragma: no cover - depends on the machine
    pj = None


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """pjlib prints its start-up banner on fd 1; keep stdout clean for JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    try:
        yield real
    finally:
        real.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.close()


def pjsua2_available() -> bool:
    """Whether the pjsua2 binding can be imported."""
    return pj is not None


@dataclass(frozen=True)
class StackOptions:
    """Library-wide options of a :class:`SipStack`."""

    bind_address: str = "127.0.0.1"
    clock_rate: int = 16000
    # Codec preference; the first one the PBX also offers wins.
    codecs: tuple[str, ...] = ("G722/16000", "PCMU/8000", "PCMA/8000")
    log_level: int = 0
    max_calls: int = 64  # PJSUA_MAX_CALLS of our build (scripts/build_pjsua2)


@dataclass
class CallRecord:
    """What happened on one phone call; filled in by pjsua2 callbacks."""

    local_id: int
    created_at: float = field(default_factory=time.monotonic)  # INVITE sent or received
    sip_call_id: str = ""
    remote_uri: str = ""
    state: str = "NULL"
    last_status: int = 0
    last_reason: str = ""
    connected_at: float | None = None
    disconnected_at: float | None = None
    media_active: bool = False
    dtmf_received: list[str] = field(default_factory=list)
    recording: Path | None = None
    codec: str = ""


class SipStack:
    """Owns the pjsua2 endpoint on one thread; phones are created from it."""

    def __init__(self, options: StackOptions | None = None) -> None:
        if pj is None:
            raise SipPhoneError("pjsua2 is not installed; run scripts/build_pjsua2")
        self.options = options or StackOptions()
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name="pjsua2", daemon=True)
        self._cond = threading.Condition()
        self._ep: Any = None
        self._accounts: list[Any] = []
        self._slots = threading.RLock()  # making a phone: check the slots, then take one
        # Call objects by token; a disconnected call is destroyed on the next loop turn (never
        # inside its own callback) and always before libDestroy, as pjsua2 requires.
        self._calls: dict[int, _PhoneCall] = {}
        self._finished: list[int] = []
        self._tokens = itertools.count(1)
        self._every_call: weakref.WeakSet[_PhoneCall] = weakref.WeakSet()
        self._callers: OrderedDict[tuple[str, str], CallerPhone] = OrderedDict()
        self._retired: list[Any] = []
        self.local_port = 0

    # -- thread plumbing ---------------------------------------------------------------------

    def start(self) -> SipStack:
        """Start the library thread and wait until the endpoint is ready."""
        self._thread.start()
        self._ready.result(timeout=30)
        return self

    def _main(self) -> None:
        try:
            self._init_library()
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._ready.set_exception(SipPhoneError(f"pjsua2 start failed: {exc}"))
            return
        self._ready.set_result(None)
        while not self._stop.is_set():
            self._drain_jobs()
            self._ep.libHandleEvents(10)
            self._reap_calls()
        self._drain_jobs()
        self._shutdown_library()

    def _drain_jobs(self) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

    def _reap_calls(self) -> None:
        while self._finished:
            call = self._calls.pop(self._finished.pop(), None)
            if call is not None:
                call.release_media()
        self.notify()

    def call_soon(self, job: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``job`` on the pjsua2 thread and return its result."""
        if threading.current_thread() is self._thread:
            return job()
        if self._stop.is_set():
            raise SipPhoneError("SIP stack is stopped")
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future.result(timeout=timeout)

    def notify(self) -> None:
        """Wake threads waiting on call or registration state."""
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until ``predicate()`` holds; raise :class:`SipPhoneError` naming ``what``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SipPhoneError(f"timed out after {timeout:.1f}s waiting for {what}")
                self._cond.wait(min(remaining, 0.1))

    # -- library set-up ----------------------------------------------------------------------

    def _init_library(self) -> None:
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.userAgent = "hotline-ivr-testphone"
        cfg.uaConfig.maxCalls = self.options.max_calls
        cfg.logConfig.level = self.options.log_level
        cfg.logConfig.consoleLevel = self.options.log_level
        cfg.medConfig.clockRate = self.options.clock_rate
        cfg.medConfig.sndClockRate = self.options.clock_rate
        cfg.medConfig.noVad = True  # keep sending silence: a real phone does, and tests measure it
        cfg.medConfig.ecTailLen = 0  # no echo canceller: recordings must be what arrived
        # Keep the null device (the media clock) running between calls.
        cfg.medConfig.sndAutoCloseTime = -1
        cfg.medConfig.threadCnt = 1
        ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = 0
        tcfg.boundAddress = self.options.bind_address
        tcfg.publicAddress = self.options.bind_address
        transport_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        ep.libStart()
        ep.audDevManager().setNullDev()
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, 0)
        for rank, name in enumerate(self.options.codecs):
            ep.codecSetPriority(name, 250 - rank)
        self.local_port = ep.transportGetInfo(transport_id).localName.rsplit(":", 1)[-1]
        self._ep = ep

    def _shutdown_library(self) -> None:
        ep = self._ep
        if ep is None:
            return
        try:
            ep.hangupAllCalls()
            for _ in range(20):
                ep.libHandleEvents(10)
            for call in self._calls.values():
                call.release_media()
            self._calls.clear()
            self._finished.clear()
            # A call object still referenced elsewhere (say, by a traceback) must not run its
            # C++ destructor after libDestroy: pjsua asserts on the stale call id.
            for call in list(self._every_call):
                call.thisown = False
            for account in self._accounts:
                account.shutdown()
            # Phones may outlive the library; their accounts must then never be destroyed.
            for account in (*self._accounts, *self._retired):
                account.thisown = False
            self._accounts.clear()
            self._retired.clear()
            self._callers.clear()
            ep.libDestroy()
        except Exception:  # noqa: BLE001 - best effort at shutdown; logged, not raised
            log.exception("pjsua2 shutdown failed")
        self._ep = None

    def stop(self) -> None:
        """Hang up everything and destroy the library; safe to call twice."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout=15)

    def __enter__(self) -> SipStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- phones ------------------------------------------------------------------------------

    def caller(self, number: str, pbx: str) -> CallerPhone:
        """A phone whose From user (and so caller number) is ``number``; ``pbx`` is host:port.

        Caller phones are reused per number; pjsua has a small fixed number of account slots,
        so idle caller phones are retired (oldest first) to make room for new ones.
        """
        key = (number, pbx)
        with self._slots:  # callers are made from several threads at once (load tests)
            phone = self._callers.pop(key, None)
            if phone is None:
                self._free_a_slot()
                phone = CallerPhone(self, number, pbx)
            self._callers[key] = phone
        return phone

    def _free_a_slot(self) -> None:
        """Make room for one more account (call with ``_slots`` held): retire idle callers."""
        while len(self._accounts) >= MAX_ACCOUNTS - 1:
            idle = next((k for k, p in self._callers.items() if p.idle()), None)
            if idle is None:
                raise SipPhoneError("all pjsua account slots are in use by active calls")
            self._callers.pop(idle).close()

    def _drop_account(self, account: Any) -> None:
        if account in self._accounts:
            self._accounts.remove(account)
            account.shutdown()
            # The SWIG object must not be destroyed by the garbage collector on another thread
            # (pjlib asserts on unregistered threads): it stays here until libDestroy.
            self._retired.append(account)

    def agent(self, agent_id: str, password: str, pbx: str,
              options: AgentOptions | None = None) -> AgentPhone:
        """A registering, auto-answering agent phone."""
        with self._slots:
            self._free_a_slot()
            return AgentPhone(self, agent_id, password, pbx, options or AgentOptions())

    # -- helpers used by phones (pjsua2 thread only) -------------------------------------------

    def _new_account(self, cfg: Any, owner: _PhoneBase) -> Any:
        if len(self._accounts) >= MAX_ACCOUNTS:
            # pjsua would assert (and abort the whole process) on one account too many.
            raise SipPhoneError(f"all {MAX_ACCOUNTS} pjsua account slots are in use")
        account = _Account(self, owner)
        account.create(cfg)
        self._accounts.append(account)
        return account

    def _register_call(self, call: _PhoneCall) -> int:
        token = next(self._tokens)
        call.token = token
        self._calls[token] = call
        self._every_call.add(call)
        return token

    def _call(self, token: int) -> _PhoneCall | None:
        return self._calls.get(token)

    def _call_finished(self, token: int) -> None:
        self._finished.append(token)

    def _account_config(self, user: str, pbx: str) -> Any:
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{user}@{pbx.split(':')[0]}"
        acfg.mediaConfig.transportConfig.boundAddress = self.options.bind_address
        acfg.mediaConfig.transportConfig.publicAddress = self.options.bind_address
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        return acfg


class _PhoneBase:
    """Common parts of caller and agent phones."""

    def __init__(self, stack: SipStack) -> None:
        self.stack = stack
        self.calls: list[CallRecord] = []
        self.account: Any = None

    def on_incoming(self, call_id: int) -> None:
        """An INVITE arrived for this phone (pjsua2 thread)."""
        call = _PhoneCall(self.stack, self, self.account, call_id)
        self.stack._register_call(call)
        op = pj.CallOpParam()
        op.statusCode = 486  # callers never take calls
        call.hangup(op)

    def on_media_active(self, call: _PhoneCall, media: Any) -> None:
        """The call's audio is flowing (pjsua2 thread)."""

    def on_call_ended(self, call: _PhoneCall) -> None:
        """The call was disconnected (pjsua2 thread)."""


def _new_player(media: Any, path: Path, loop: bool) -> Any:
    player = pj.AudioMediaPlayer()
    player.createPlayer(str(path), 0 if loop else pj.PJMEDIA_FILE_NO_LOOP)
    player.startTransmit(media)
    return player


def wav_complete(path: Path) -> bool:
    """Whether a recorder has closed ``path`` (its RIFF size matches the file size)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(8)
        size = path.stat().st_size
    except OSError:
        return False
    return (len(header) == 8 and header[:4] == b"RIFF"
            and int.from_bytes(header[4:8], "little") == size - 8)


def wav_seconds(path: Path) -> float:
    """Duration of a WAV file."""
    with wave.open(str(path), "rb") as src:
        return src.getnframes() / float(src.getframerate())


class CallerPhone(_PhoneBase):
    """A caller: dial a number, play WAVs into the call, send RFC 4733 DTMF, record, hang up."""

    def __init__(self, stack: SipStack, number: str, pbx: str) -> None:
        super().__init__(stack)
        self.number = number
        self.pbx = pbx
        self.account = stack.call_soon(
            lambda: stack._new_account(stack._account_config(number, pbx), self))

    def idle(self) -> bool:
        """No call of this phone is still going."""
        return all(record.disconnected_at is not None for record in self.calls)

    def close(self) -> None:
        """Remove this phone's account (after its calls ended)."""
        self.stack.call_soon(lambda: self.stack._drop_account(self.account))

    def dial(self, destination: str, record_to: Path | None = None) -> PhoneCall:
        """Start a call to ``destination`` (a number at the PBX); returns at once."""

        def make() -> PhoneCall:
            call = _PhoneCall(self.stack, self, self.account, pj.PJSUA_INVALID_ID)
            call.record_to = record_to
            op = pj.CallOpParam(True)
            try:
                call.makeCall(f"sip:{destination}@{self.pbx}", op)
            except pj.Error as exc:
                raise SipPhoneError(f"dial {destination} failed: {exc.info()}") from None
            token = self.stack._register_call(call)
            self.calls.append(call.record)
            return PhoneCall(self.stack, token, call.record)

        return self.stack.call_soon(make)


@dataclass(frozen=True)
class AgentOptions:
    """How an agent phone behaves when a call comes in."""

    answer_after_s: float = 0.5
    record_dir: Path | None = None
    play: Path | None = None  # what the agent "says", looped while the call lasts
    register_timeout_s: float = 10.0
    reject_with: int | None = None  # a final SIP status (e.g. 480) instead of answering


class AgentPhone(_PhoneBase):
    """An agent phone: registers with digest auth and answers every call after a delay."""

    _seq = itertools.count(1)

    def __init__(self, stack: SipStack, agent_id: str, password: str, pbx: str,
                 options: AgentOptions) -> None:
        super().__init__(stack)
        self.agent_id = agent_id
        self.options = options
        self.registered = False
        self.reg_status = 0
        self.active: list[PhoneCall] = []

        def create() -> Any:
            acfg = stack._account_config(agent_id, pbx)
            acfg.regConfig.registrarUri = f"sip:{pbx}"
            acfg.regConfig.timeoutSec = 300
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", agent_id, 0, password))
            return stack._new_account(acfg, self)

        self.account = stack.call_soon(create)

    def wait_registered(self, timeout: float | None = None) -> None:
        """Block until the PBX accepted the registration."""
        limit = timeout if timeout is not None else self.options.register_timeout_s
        self.stack.wait_for(lambda: self.registered or self.reg_status >= 300, limit,
                            f"registration of {self.agent_id}")
        if not self.registered:
            raise SipPhoneError(f"{self.agent_id}: registration refused ({self.reg_status})")

    def close(self, timeout: float = 5.0) -> None:
        """Unregister (REGISTER with expiry 0) and remove the account; calls are hung up."""
        for call in self.active:
            call.hangup()

        def shutdown() -> None:
            if self.registered:
                self.account.setRegistration(False)

        try:
            self.stack.call_soon(shutdown)
            self.stack.wait_for(lambda: not self.registered, timeout,
                                f"{self.agent_id} to unregister")
        finally:
            self.stack.call_soon(lambda: self.stack._drop_account(self.account))

    def on_incoming(self, call_id: int) -> None:
        call = _PhoneCall(self.stack, self, self.account, call_id)
        token = self.stack._register_call(call)
        self.calls.append(call.record)
        if self.options.record_dir is not None:
            name = f"{self.agent_id}-{next(self._seq)}.wav"
            call.record_to = self.options.record_dir / name
        op = pj.CallOpParam()
        op.statusCode = 180
        call.answer(op)
        if self.options.reject_with is not None:
            op = pj.CallOpParam()
            op.statusCode = self.options.reject_with
            call.hangup(op)
            return
        self.active.append(PhoneCall(self.stack, token, call.record))
        timer = threading.Timer(self.options.answer_after_s, self._answer, args=(token,))
        timer.daemon = True
        timer.start()

    def _answer(self, token: int) -> None:
        def do() -> None:
            call = self.stack._call(token)
            if call is None or call.record.disconnected_at is not None:
                return
            op = pj.CallOpParam()
            op.statusCode = 200
            call.answer(op)

        try:
            self.stack.call_soon(do)
        except SipPhoneError:
            pass  # the stack stopped before the answer timer fired

    def on_media_active(self, call: _PhoneCall, media: Any) -> None:
        if self.options.play is not None and not call.players:
            call.players.append(_new_player(media, self.options.play, loop=True))


class _Account(pj.Account if pj is not None else object):  # type: ignore[misc]
    def __init__(self, stack: SipStack, owner: _PhoneBase) -> None:
        super().__init__()
        self.stack = stack
        self.owner = owner

    def onRegState(self, prm: Any) -> None:  # noqa: N802 - pjsua2 callback name
        info = self.getInfo()
        if isinstance(self.owner, AgentPhone):
            self.owner.reg_status = int(prm.code)
            self.owner.registered = bool(info.regIsActive) and int(prm.code) // 100 == 2
        self.stack.notify()

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802 - pjsua2 callback name
        self.owner.on_incoming(prm.callId)
        self.stack.notify()


class _PhoneCall(pj.Call if pj is not None else object):  # type: ignore[misc]
    def __init__(self, stack: SipStack, owner: _PhoneBase, account: Any, call_id: int) -> None:
        super().__init__(account, call_id)
        self.stack = stack
        self.owner = owner
        self.record = CallRecord(local_id=call_id)
        self.token = 0
        self.record_to: Path | None = None
        self.players: list[Any] = []
        self.recorder: Any = None
        self.media: Any = None

    def release_media(self) -> None:
        """Stop players and close the recorder (its WAV header is written on close)."""
        self.players.clear()
        self.recorder = None
        self.media = None

    def onCallState(self, prm: Any) -> None:  # noqa: N802 - pjsua2 callback name
        info = self.getInfo()
        rec = self.record
        rec.local_id = info.id
        rec.sip_call_id = info.callIdString
        rec.remote_uri = info.remoteUri
        rec.state = info.stateText
        rec.last_status = int(info.lastStatusCode)
        rec.last_reason = info.lastReason
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and rec.connected_at is None:
            rec.connected_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            rec.state = "DISCONNECTED"
            rec.disconnected_at = time.monotonic()
            rec.media_active = False
            self.owner.on_call_ended(self)
            self.stack._call_finished(self.token)
        self.stack.notify()

    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802 - pjsua2 callback name
        info = self.getInfo()
        for media_info in info.media:
            if (media_info.type == pj.PJMEDIA_TYPE_AUDIO
                    and media_info.status == pj.PJSUA_CALL_MEDIA_ACTIVE):
                media = self.getAudioMedia(media_info.index)
                self.media = media
                self.record.media_active = True
                try:
                    self.record.codec = self.getStreamInfo(media_info.index).codecName
                except Exception:  # noqa: BLE001 - codec name is informational only
                    self.record.codec = ""
                if self.record_to is not None and self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(str(self.record_to))
                    media.startTransmit(self.recorder)
                    self.record.recording = self.record_to
                self.owner.on_media_active(self, media)
        self.stack.notify()

    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802 - pjsua2 callback name
        self.record.dtmf_received.append(str(prm.digit))
        self.stack.notify()


class PhoneCall:
    """Thread-safe handle on one call of a phone."""

    def __init__(self, stack: SipStack, token: int, record: CallRecord) -> None:
        self._stack = stack
        self._token = token
        self._record = record

    @property
    def record(self) -> CallRecord:
        """Live facts about the call."""
        return self._record

    def _live(self) -> _PhoneCall:
        call = self._stack._call(self._token)
        if call is None:
            raise SipPhoneError("the call has ended")
        return call

    def wait_released(self, timeout: float = 5.0) -> None:
        """Block until the ended call's recorder is closed (its WAV file is complete)."""
        self._stack.wait_for(lambda: self._stack._call(self._token) is None, timeout,
                             "the call's media to be released")
        path = self.record.recording
        if path is not None:
            # The conference bridge removes ports asynchronously: the header comes a tick later.
            self._stack.wait_for(lambda: wav_complete(path), timeout, f"{path} to be closed")

    @property
    def connected(self) -> bool:
        """Answered and not yet hung up."""
        return self.record.connected_at is not None and self.record.disconnected_at is None

    @property
    def ended(self) -> bool:
        """Disconnected (by either side)."""
        return self.record.disconnected_at is not None

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Block until answered with audio flowing; raise if it ends or times out first."""
        self._stack.wait_for(lambda: (self.connected and self.record.media_active) or self.ended,
                             timeout, "the call to be answered")
        if self.ended:
            raise SipPhoneError(f"call ended before it was answered: {self.record.last_status} "
                                f"{self.record.last_reason}")

    def wait_ended(self, timeout: float = 10.0) -> None:
        """Block until the call is disconnected."""
        self._stack.wait_for(lambda: self.ended, timeout, "the call to end")

    def wait_dtmf(self, count: int, timeout: float = 10.0) -> list[str]:
        """Block until ``count`` DTMF digits were received."""
        self._stack.wait_for(lambda: len(self.record.dtmf_received) >= count or self.ended,
                             timeout, f"{count} DTMF digits")
        return list(self.record.dtmf_received)

    def play(self, wav: Path, wait: bool = True) -> float:
        """Play a WAV file into the call; with ``wait`` block for its duration. Returns seconds."""

        def start() -> None:
            call = self._live()
            if call.media is None:
                raise SipPhoneError("no active audio on the call")
            call.players.append(_new_player(call.media, wav, loop=False))

        self._stack.call_soon(start)
        seconds = wav_seconds(wav)
        if wait:
            time.sleep(seconds)
        return seconds

    def send_dtmf(self, digits: str, gap_s: float = 0.25) -> None:
        """Send DTMF as RFC 4733 telephone events, one digit at a time."""
        for digit in digits:
            if digit not in "0123456789*#ABCD":
                raise SipPhoneError(f"not a DTMF digit: {digit!r}")

            def send(d: str = digit) -> None:
                param = pj.CallSendDtmfParam()
                param.method = pj.PJSUA_DTMF_METHOD_RFC2833
                param.digits = d
                self._live().sendDtmf(param)

            self._stack.call_soon(send)
            time.sleep(gap_s)

    def hangup(self) -> None:
        """Hang up (BYE, or CANCEL while ringing); no error if already ended."""

        def bye() -> None:
            call = self._stack._call(self._token)
            if call is not None and self.record.disconnected_at is None:
                call.hangup(pj.CallOpParam())

        if not self.ended:
            try:
                self._stack.call_soon(bye)
            except Exception as exc:  # noqa: BLE001 - pjsua2 raises when the call just ended
                if not self.ended:
                    raise SipPhoneError(f"hang-up failed: {exc}") from exc
