"""Listening to one leg of a call: snoop + ExternalMedia (slin16 RTP) -> VAD -> Whisper -> intent.

For each listened leg the controller asks Asterisk for a snoop channel on the leg (``spy=in``:
only what that party says) and an ExternalMedia channel that sends the snooped audio as RTP to a
port of ours, both joined in a small mixing bridge. The leg itself never changes bridges for
this, so the caller can move from the menu to the queue to the agent while we keep listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from asr.engine import AsrEngine, Transcript
from asr.errors import AsrError
from asr.frames import SpeechStarted, Utterance
from asr.intent import IntentClassifier
from asr.media.receiver import PortPool, RtpReceiver, host_for_url
from asr.vad import TurnDetector, VadOptions
from ivr.ari.client import AriClient
from ivr.bus import EventBus
from ivr.errors import AriError, AriRequestError
from ivr.flow.events import FlowEvent, IntentHeard, Spoken
from ivr.flow.events import SpeechStarted as FlowSpeechStarted
from ivr.redaction import redact
from ivr.settings import AsrSettings
from ivr.store.journal import CallJournal
from ivr.store.repository import Store

log = logging.getLogger(__name__)


@dataclass
class SpeechServices:
    """What every listener shares: one engine, one classifier, the port pool, store and bus."""

    engine: AsrEngine
    classifier: IntentClassifier
    ports: PortPool
    store: Store
    bus: EventBus
    settings: AsrSettings
    vad: VadOptions = field(default_factory=VadOptions)
    # privacy.store_transcripts == "redacted": personal data never reaches the database.
    redact_stored: bool = False
    # Second opinion on each webrtcvad onset (Silero); None: webrtcvad alone.
    onset_check: Callable[[bytes], bool] | None = None
    journal: CallJournal = field(default_factory=CallJournal)  # shared with the call flow


class LegListener:
    """Transcribes one party of one call; delivers barge-in and intents to the call's flow."""

    def __init__(self, services: SpeechServices, ari: AriClient, app: str, call_id: str,
                 channel_id: str, speaker: str, call_started_at: datetime,
                 deliver: Callable[[FlowEvent], None] | None,
                 ignore_channel: Callable[[str], None]) -> None:
        self.services = services
        self.ari = ari
        self.app = app
        self.call_id = call_id
        self.channel_id = channel_id
        self.speaker = speaker
        self.deliver = deliver
        self.ignore_channel = ignore_channel
        self.call_started_at = call_started_at
        tag = uuid.uuid4().hex[:12]
        self.snoop_id = f"snoop-{tag}"
        self.media_id = f"media-{tag}"
        self.bridge_id = f"listen-{tag}"
        self.port: int | None = None
        self.receiver: RtpReceiver | None = None
        self.language: str | None = services.settings.language
        # What the caller is asked to say right now (the flow sets it, e.g. challenge digits).
        self.prompt: str | None = None
        self._detector: TurnDetector | None = None
        self._hangover_ms: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._offset_s = 0.0
        self._debug: BinaryIO | None = None
        self._partial_busy = False

    async def start(self) -> None:
        """Open the RTP port and ask Asterisk to send this leg's audio there."""
        services = self.services
        self.port = services.ports.allocate()
        try:
            settings = services.settings
            self.receiver = await RtpReceiver.bind(
                self.port, host=settings.media_bind or settings.media_host)
            for channel in (self.snoop_id, self.media_id):
                self.ignore_channel(channel)
            await self.ari.request("POST", f"/channels/{self.channel_id}/snoop", params={
                "spy": "in", "app": self.app, "appArgs": f"snoop,{self.call_id}",
                "snoopId": self.snoop_id})
            here = f"{host_for_url(settings.media_host)}:{self.port}"
            await self.ari.request("POST", "/channels/externalMedia", params={
                "app": self.app, "external_host": here,
                "format": "slin16", "channelId": self.media_id, "encapsulation": "rtp",
                "transport": "udp"})
            await self.ari.request("POST", "/bridges", params={
                "type": "mixing", "bridgeId": self.bridge_id, "name": f"listen-{self.call_id}"})
            await self._join_bridge()
        except BaseException:
            await self.close()
            raise
        self._offset_s = (datetime.now(self.call_started_at.tzinfo) - self.call_started_at
                          ).total_seconds()
        self._task = asyncio.create_task(self._listen())

    async def _join_bridge(self, attempts: int = 40) -> None:
        # Snoop and ExternalMedia channels enter our application a moment after ARI answers
        # their creation; until then Asterisk refuses to bridge them (422). Retry briefly.
        for attempt in range(attempts):
            try:
                await self.ari.request("POST", f"/bridges/{self.bridge_id}/addChannel",
                                       params={"channel": f"{self.snoop_id},{self.media_id}"})
                return
            except AriRequestError as exc:
                if exc.status != 422 or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.05)

    async def _listen(self) -> None:
        assert self.receiver is not None
        detector = TurnDetector(self.services.vad, self.services.onset_check)
        detector.set_hangover(self._hangover_ms)
        self._detector = detector
        folder = self.services.settings.debug_audio_dir
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            # Raw 16 kHz little-endian PCM, written as it arrives (debugging only).
            self._debug = (Path(folder) / f"{self.call_id}-{self.speaker}.s16le").open("wb")
        every = self.services.settings.partial_every_s
        speech: list[bytes] | None = None  # audio of the turn in progress, for partials
        speech_start = 0.0
        spoke_at = 0.0  # monotonic time the current turn began
        next_partial = 0.0
        async for chunk in self.receiver:
            if self._debug is not None:
                self._debug.write(chunk.pcm)
                self._debug.flush()
            if speech is not None:
                speech.append(chunk.pcm)
                if chunk.timestamp_s >= next_partial and not self._partial_busy:
                    next_partial = chunk.timestamp_s + every
                    self._spawn(self._partial(b"".join(speech), speech_start))
            for event in detector.process(chunk.pcm, chunk.timestamp_s):
                if isinstance(event, SpeechStarted):
                    speech, speech_start = [], event.at_s
                    spoke_at = time.monotonic()
                    next_partial = event.at_s + every
                    if self.deliver is not None:
                        self.deliver(FlowSpeechStarted())
                elif isinstance(event, Utterance):
                    speech = None
                    self._spawn(self._recognise(event, spoke_at))

    def expect(self, prompt: str | None, hangover_ms: int | None) -> None:
        """What the caller is about to say (Whisper's prompt) and the pause that ends it;
        None, None: back to ordinary listening."""
        self.prompt = prompt
        self._hangover_ms = hangover_ms
        if self._detector is not None:
            self._detector.set_hangover(hangover_ms)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _partial(self, pcm: bytes, start_s: float) -> None:
        """About once a second while the party speaks: what was said so far, for live views."""
        self._partial_busy = True
        try:
            transcript = await self.services.engine.transcribe_partial(
                pcm, call_id=self.call_id, language=self.language,
                offset_s=self._offset_s + start_s, prompt=self.prompt)
        except AsrError:
            return  # partials are best effort; the final transcript is what is stored
        finally:
            self._partial_busy = False
        if not transcript.dropped:
            self.services.bus.publish("transcript.partial", self.call_id, {
                "speaker": self.speaker, "start_s": round(self._offset_s + start_s, 3),
                "text": transcript.text, "language": transcript.language})

    async def _recognise(self, utterance: Utterance, spoke_at: float) -> None:
        services = self.services
        started = time.monotonic()
        try:
            transcript = await services.engine.transcribe(
                utterance.pcm, call_id=self.call_id, language=self.language,
                offset_s=self._offset_s + utterance.audio_start_s, prompt=self.prompt)
        except AsrError as exc:
            log.warning("utterance not recognised", extra={"call_id": self.call_id,
                                                           "error": type(exc).__name__})
            if self.deliver is not None and self.speaker == "caller":
                self.deliver(Spoken("", True, spoke_at, utterance.pcm))
            return
        intent, confidence = self._intent(transcript)
        kept = redact(transcript.text) if services.redact_stored else transcript.text
        start_s = self._offset_s + utterance.start_s
        end_s = self._offset_s + utterance.end_s
        at, store, call_id, speaker = datetime.now(UTC), services.store, self.call_id, self.speaker
        await services.journal.write("transcript", lambda: store.add_transcript(
            call_id, speaker=speaker, start_s=start_s, end_s=end_s, text=kept,
            language=transcript.language, confidence=transcript.confidence,
            model=transcript.model, intent=intent, intent_confidence=confidence,
            dropped_reason=transcript.dropped_reason, at=at))
        services.bus.publish("transcript.final", self.call_id, {
            "speaker": self.speaker, "start_s": round(start_s, 3), "end_s": round(end_s, 3),
            "text": kept, "language": transcript.language, "intent": intent,
            "seconds": round(time.monotonic() - started, 3)})
        if self.deliver is not None and self.speaker == "caller":
            self.deliver(Spoken(transcript.text, transcript.dropped, spoke_at, utterance.pcm))
            if not transcript.dropped:
                self.deliver(IntentHeard(intent or "unknown", confidence or 0.0,
                                         transcript.text))

    def _intent(self, transcript: Transcript) -> tuple[str | None, float | None]:
        if transcript.dropped or not transcript.text:
            return None, None
        result = self.services.classifier.classify(
            transcript.text, threshold=self.services.settings.min_intent_confidence)
        return result.intent, result.confidence

    async def close(self) -> None:
        """Stop listening and remove what we created in Asterisk; safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for task in list(self._pending):  # let utterances already heard be stored
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10.0)
        with contextlib.suppress(AriError):
            await self.ari.request("DELETE", f"/bridges/{self.bridge_id}")
        for channel in (self.snoop_id, self.media_id):
            with contextlib.suppress(AriError):
                await self.ari.request("DELETE", f"/channels/{channel}")
        await self.close_local()

    async def close_local(self) -> None:
        """Release only what lives in this process (ARI is gone; Asterisk cleans up its side)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for task in list(self._pending):
            task.cancel()
        if self.receiver is not None:
            await self.receiver.aclose()
            self.receiver = None
        if self.port is not None:
            self.services.ports.release(self.port)
            self.port = None
        self._write_debug()

    def _write_debug(self) -> None:
        if self._debug is not None:
            self._debug.close()
            self._debug = None

    def stats(self) -> dict[str, Any]:
        """RTP counters of this leg."""
        if self.receiver is None:
            return {}
        stats = self.receiver.stats
        return {k: v for k, v in vars(stats).items() if isinstance(v, int)}
