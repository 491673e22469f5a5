"""``ivr serve``: the controller and the API in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn

from asr import default_model
from asr.engine import EngineOptions, load_engine
from asr.errors import AsrError
from asr.intent import IntentClassifier
from asr.media.receiver import PortPool
from asr.silero import SileroOptions, SileroVad
from ivr.api.app import create_app
from ivr.api.services import ApiServices
from ivr.asterisk.instance import AriCredentials, AsteriskInstance
from ivr.asterisk.provision import locate_asterisk
from ivr.auth.throttle import Throttle
from ivr.auth.tokens import TokenStore
from ivr.broker import StreamBus
from ivr.bus import EventBus
from ivr.errors import IvrError
from ivr.flow.controller import HotlineController, distributor_for
from ivr.flow.monitor import MonitorMedia
from ivr.flow.session import Prompts
from ivr.flow.voice import AttemptLimit, VoiceTier
from ivr.health import LoopLag, Readiness, TaskGroup, probe_forever
from ivr.metrics import MetricsRecorder
from ivr.routing.ledger import AgentLedger
from ivr.routing.service import RoutingService
from ivr.settings import AsrSettings, SecuritySettings, Settings
from ivr.speech.listener import SpeechServices
from ivr.store.db import startup_lock
from ivr.store.journal import CallJournal
from ivr.store.nodes import NodeLease, default_node_id, keep_lease
from ivr.store.opening import master_key, open_store, previous_master_keys, purge_once
from ivr.store.repository import Store
from ivr.verification.codes import (
    AccountDirectory,
    CodeOptions,
    OneTimeCodes,
    OutboxSender,
    VerificationServices,
)
from voiceprint import dvector
from voiceprint.embedding import Embedder, EmbedderOptions, load_embedder
from voiceprint.errors import VoiceprintError
from voiceprint.scoring import Thresholds
from voiceprint.service import VoiceprintOptions, VoiceprintService
from voiceprint.templates import MasterKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PbxLink:
    """How to reach the PBX and what lives there (agents, prompts, supervisors' phones)."""

    creds: AriCredentials
    agents: tuple[tuple[str, str], ...]
    sounds_dir: str
    supervisor_phones: tuple[str, ...] = ()
    sip: str | None = None  # where phones register and call (local instance)
    hotline: str | None = None


def pbx_link(settings: Settings) -> PbxLink | None:
    """From settings (remote PBX) or from the local instance that `ivr asterisk up` made."""
    if settings.ari is not None:
        remote = settings.ari
        creds = AriCredentials(remote.url.rstrip("/"), remote.user,
                               remote.password.get_secret_value(), remote.app,
                               str(remote.ca_file) if remote.ca_file else None)
        return PbxLink(creds, tuple(remote.agents.items()), remote.sounds_dir,
                       tuple(remote.supervisor_phones))
    instance = AsteriskInstance(locate_asterisk(), settings.asterisk.instance)
    state = instance.load_state()
    if state is None:
        return None
    return PbxLink(state.ari(), tuple((a.agent_id, a.region) for a in state.agents),
                   state.sounds_dir, tuple(p.agent_id for p in state.supervisors),
                   state.pbx, state.hotline_number)


def start_summary(settings: Settings, readiness: Readiness, link: PbxLink | None
                  ) -> dict[str, Any]:
    """What an operator needs once the service is up: where things are, what runs degraded
    and why, and how to get a token for the console."""
    api = f"http://{settings.api_host}:{settings.api_port}"
    return {
        "console": f"{api}/", "api": f"{api}/api/v1", "ready": not readiness.missing(),
        "missing": readiness.missing(), "degraded": readiness.degraded(),
        "sip": link.sip if link else None,
        "hotline": (link.hotline if link and link.hotline else
                    settings.asterisk.hotline_number),
        "supervisor_token": ".venv/bin/ivr token create --role supervisor",
        "test_call": (".venv/bin/ivr call --from 01012345678 --dtmf 1 --wait 5 --json"
                      if link and link.sip else None)}


async def announce_when_ready(settings: Settings, readiness: Readiness, link: PbxLink | None,
                              server: uvicorn.Server, wait_s: float = 60.0) -> None:
    """Once the API listens and everything is connected (or after ``wait_s``, saying what is
    still missing): one ``service summary`` log record, and on a terminal a short block."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while not server.started or (  # noqa: ASYNC110 - readiness has no event to wait on
            readiness.missing() and asyncio.get_running_loop().time() < deadline):
        await asyncio.sleep(0.2)
    summary = start_summary(settings, readiness, link)
    log.info("service summary", extra=summary)
    if sys.stderr.isatty():
        lines = [f"Hotline IVR {'ready' if summary['ready'] else 'NOT ready'}",
                 f"  console     {summary['console']}  (token: {summary['supervisor_token']})",
                 f"  API         {summary['api']}"]
        if summary["sip"]:
            lines.append(f"  SIP         {summary['sip']}  hotline {summary['hotline']}")
            lines.append(f"  test call   {summary['test_call']}")
        for name in summary["missing"]:
            lines.append(f"  missing     {name}: {readiness.reasons().get(name, '')}")
        for name, reason in summary["degraded"].items():
            lines.append(f"  degraded    {name}: {reason}")
        print("\n".join(lines), file=sys.stderr, flush=True)


async def purge_forever(settings: Settings, store: Store,
                        voiceprint: VoiceprintService | None) -> None:
    """The retention job: at start, then every ``privacy.purge_every_s`` (a run that fails, for
    example on a locked database, is logged and tried again next time)."""
    while True:
        try:
            await asyncio.to_thread(purge_once, settings, store, voiceprint)
        except Exception as exc:  # noqa: BLE001 - the job must outlive one bad run
            log.error("retention purge failed; next try later", extra={"error": str(exc)[:200]})
        await asyncio.sleep(settings.privacy.purge_every_s)


def models_root(settings: Settings) -> Path:
    """Where operators put model folders: ``IVR_MODELS_DIR``, else ``models/`` of the working
    directory (a checkout); never the installed package's own location."""
    return settings.models_dir if settings.models_dir is not None else Path("models")


def default_model_dir(settings: Settings, cuda: bool | None = None) -> Path:
    """The Whisper folder, chosen by configuration and device, never by folder order: the
    configured ``asr.model_dir``; else, on a GPU (``asr.device`` cuda, or auto with one found),
    the manifest's GPU model when its folder is under the models root; else the shipped default
    (Whisper base, assembled into the cache by ``make setup`` or here, on first use). Other
    folders under ``models/whisper`` are used only when configured."""
    if settings.asr.model_dir is not None:
        return settings.asr.model_dir
    if cuda is None:
        cuda = settings.asr.device == "cuda" or (settings.asr.device == "auto"
                                                and _cuda_devices() > 0)
    gpu_folder = default_model.gpu_option()
    if cuda and gpu_folder and (models_root(settings) / gpu_folder / "model.bin").is_file():
        return models_root(settings) / gpu_folder
    return default_model.ready_dir() or default_model.install()


def _cuda_devices() -> int:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # noqa: BLE001 - no CUDA runtime at all: no GPU
        return 0


def engine_options(asr: AsrSettings, model_dir: Path) -> EngineOptions:
    """The Whisper engine's options from the ``asr`` settings."""
    by_language = tuple((language, words) for language, words in
                        (("zh", asr.hotwords_zh), ("en", asr.hotwords_en)) if words)
    return EngineOptions(
        model_dir=model_dir, device=asr.device, language=asr.language,
        language_switch_floor=asr.language_switch_floor, beam_size=asr.beam_size,
        log_prob_threshold=asr.log_prob_threshold, initial_prompt=asr.initial_prompt,
        hotwords=asr.hotwords, hotwords_by_language=by_language,
        window_margin_s=asr.window_margin_s)


async def load_speech(settings: Settings, store: Store, readiness: Readiness,
                      bus: EventBus | None = None) -> SpeechServices | None:
    """Engine + classifier, or None (keypad-only mode, said in /ready and the logs)."""
    if not settings.asr.enabled:
        readiness.degrade("asr", "speech disabled by configuration: keypad only")
        return None
    try:
        model_dir = await asyncio.to_thread(default_model_dir, settings)
    except AsrError as exc:
        readiness.degrade("asr", f"no usable Whisper model, keypad only: {exc}")
        log.warning("no speech model; keypad-only mode", extra={"error": str(exc)})
        return None
    try:
        engine = await asyncio.to_thread(load_engine, engine_options(settings.asr, model_dir))
        classifier = await asyncio.to_thread(IntentClassifier.default)
    except (AsrError, IvrError) as exc:
        readiness.degrade("asr", f"speech model unusable, keypad only: {exc}")
        log.warning("speech model unusable; keypad-only mode", extra={"error": str(exc)})
        return None
    onset_check = None
    if settings.asr.onset_check == "silero":
        try:
            silero = await asyncio.to_thread(
                SileroVad, SileroOptions(threshold=settings.asr.silero_threshold,
                                      min_chunks=settings.asr.silero_min_chunks))
            onset_check = silero.is_speech
        except (AsrError, OSError, RuntimeError) as exc:  # onnxruntime raises plain errors
            readiness.degrade("vad", f"Silero VAD unusable, barge-in on webrtcvad alone: {exc}")
            log.warning("silero vad unusable", extra={"error": str(exc)})
    readiness.model("asr", engine.model_name, str(model_dir), engine.device,
                    default_model.is_test_model(model_dir))
    log.info("speech path ready", extra={"model": engine.model_name, "device": engine.device})
    return SpeechServices(engine, classifier,
                          PortPool(settings.asr.rtp_port_start, settings.asr.rtp_port_end,
                                   settings.asr.media_bind or settings.asr.media_host),
                          store, bus or EventBus(), settings.asr,
                          redact_stored=settings.privacy.store_transcripts == "redacted",
                          onset_check=onset_check)


def default_ecapa_dir(settings: Settings) -> Path | None:
    """The configured ECAPA folder, or ``<models>/ecapa`` when it holds a model."""
    if settings.voiceprint.model_dir is not None:
        return settings.voiceprint.model_dir
    root = models_root(settings) / "ecapa"
    if (root / "hyperparams.yaml").is_file():
        return root
    folders = sorted(p for p in root.glob("*") if (p / "hyperparams.yaml").is_file()) \
        if root.is_dir() else []
    return folders[0] if folders else None


async def load_voiceprint(settings: Settings, store: Store, readiness: Readiness
                          ) -> VoiceprintService:
    """Tier 2 on the service's database. The decision log, account state and lockouts always
    work; enrollment and verification need the model and the master key, and without them
    callers who pass tier 1 go to the experts (said in /ready and in each 503)."""
    vp = settings.voiceprint
    key: MasterKey | None = None
    embedder: Embedder | None = None
    missing = ""
    if not vp.enabled:
        missing = "verification is disabled by configuration"
    else:
        key = master_key(settings)  # a malformed key stops the service: it must be fixed
        if key is None:
            missing = ("master key is not configured (IVR_VOICEPRINT__MASTER_KEY or "
                       "IVR_VOICEPRINT__MASTER_KEY_FILE)")
        else:
            embedder, missing = await _load_speaker_model(settings)
    options = VoiceprintOptions(
        challenge_max_errors=vp.challenge_max_errors,
        thresholds=(Thresholds(accept=vp.accept_threshold, reject=vp.reject_threshold)
                    if vp.accept_threshold is not None and vp.reject_threshold is not None
                    else None),
        min_enroll_speech_s=vp.min_enroll_speech_s, min_verify_speech_s=vp.min_verify_speech_s,
        retain_audio=timedelta(days=vp.retain_audio_days) if vp.retain_audio_days else None)
    service = VoiceprintService(store.engine, embedder, key, options, unavailable=missing,
                               previous_keys=previous_master_keys(settings) if key else ())
    if missing:
        readiness.degrade("voiceprint", f"voiceprint {missing}: tier 3 instead")
    else:
        assert embedder is not None
        log.info("voiceprint ready", extra={"model": embedder.model_id,
                                            "device": embedder.device})
    if embedder is not None:
        folder = _speaker_model_dir(settings)
        readiness.model("voiceprint", embedder.model_id, str(folder or ""), embedder.device,
                        default_model.is_test_model(folder))
    return service


def _speaker_model_dir(settings: Settings) -> Path | None:
    vp = settings.voiceprint
    if vp.model == "dvector":
        return vp.model_dir or dvector.installed_dir()
    return default_ecapa_dir(settings)


async def _load_speaker_model(settings: Settings) -> tuple[Embedder | None, str]:
    """The configured speaker model, or None and why not."""
    vp = settings.voiceprint
    try:
        if vp.model == "dvector":
            folder = vp.model_dir or dvector.installed_dir()
            if vp.model_dir is None and not (folder / dvector.VERIFIED_MARK).is_file():
                folder = await asyncio.to_thread(dvector.install)
            return await asyncio.to_thread(dvector.load_dvector, folder, vp.device), ""
        ecapa = default_ecapa_dir(settings)
        if ecapa is None:
            return None, "model: no ECAPA model in models/ecapa"
        return await asyncio.to_thread(load_embedder, EmbedderOptions(
            model_dir=ecapa, device=vp.device)), ""
    except VoiceprintError as exc:
        log.warning("voiceprint model unusable", extra={"error": str(exc)})
        return None, f"model unusable ({exc})"


async def load_voice_tier(settings: Settings, store: Store, readiness: Readiness
                          ) -> VoiceTier | None:
    """Tier 2 for calls, or None (callers who pass tier 1 then go to the experts)."""
    service = await load_voiceprint(settings, store, readiness)
    if not service.can_verify:
        return None
    security = settings.security
    return VoiceTier(service, settings.voiceprint, AttemptLimit(
        Throttle(store.engine), security.voice_attempts, security.voice_window_s))


def verification_services(store: Store, security: SecuritySettings | None = None
                          ) -> VerificationServices:
    """Accounts, one-time codes and the development outbox on the service's database."""
    security = security or SecuritySettings()  # type: ignore[call-arg]
    outbox = OutboxSender(store.engine)
    options = CodeOptions(max_sends=security.code_sends, send_window_s=security.code_window_s)
    return VerificationServices(AccountDirectory(store.engine),
                                OneTimeCodes(store.engine, outbox, options), outbox)


async def serve_async(settings: Settings) -> int:
    """Run controller and API until cancelled or the API server stops; the exit status is
    non-zero when a part the service cannot run without stopped on its own."""
    readiness = Readiness()
    store = await asyncio.to_thread(open_store, settings)
    store.node_id = settings.node.id or default_node_id(settings.asterisk.instance)
    lease = NodeLease(store.engine, store.node_id, settings.node.lease_s,
                      api_url=f"http://{settings.api_host}:{settings.api_port}")
    adopted = await asyncio.to_thread(lease.register)
    log.info("node registered", extra={"node": store.node_id, "adopted_calls": adopted})
    journal = CallJournal(readiness)
    routing = RoutingService(store, settings.routing, settings.regions)
    if await asyncio.to_thread(_seed_rules, routing, store):
        log.info("routing rules loaded into an empty store")
    try:
        await asyncio.to_thread(routing.refresh)
    except IvrError as exc:
        # Calls still flow: each one that cannot be routed goes to the fallback queue.
        readiness.degrade("routing", f"stored routing rules invalid, fallback queue: {exc}")
        log.error("stored routing rules invalid; calls use the fallback queue",
                  extra={"error": str(exc)})
    bus: EventBus
    if settings.broker_url:
        bus = StreamBus(url=settings.broker_url, readiness=readiness, node_id=store.node_id)
        await bus.start()
    else:
        bus = EventBus()
    speech = await load_speech(settings, store, readiness, bus)
    if speech is not None:
        speech.journal = journal
    voiceprint = await load_voiceprint(settings, store, readiness)
    security = settings.security
    voice = VoiceTier(voiceprint, settings.voiceprint, AttemptLimit(
        Throttle(store.engine), security.voice_attempts, security.voice_window_s)
    ) if voiceprint.can_verify else None
    verification = verification_services(store, settings.security)
    tokens = TokenStore(store.engine)
    metrics = MetricsRecorder(bus)
    metrics.start()
    background = TaskGroup("service")
    lag = LoopLag()
    background.spawn(lag.run(), "loop-lag")
    background.spawn(purge_forever(settings, store, voiceprint), "retention")
    background.spawn(keep_lease(lease, readiness), "node-lease")
    health = settings.health
    background.spawn(probe_forever(readiness, "database",
                                   lambda: asyncio.to_thread(store.probe_write),
                                   health.probe_every_s, health.probe_timeout_s,
                                   "database write lock"), "probe-database")
    background.spawn(_refresh_rules_forever(routing, settings.routing.refresh_every_s),
                     "routing-refresh")
    link = pbx_link(settings)
    controller: HotlineController | None = None
    controller_task: asyncio.Task[None] | None = None
    if link is None:
        log.warning("no ARI configured and no local asterisk instance; ARI stays unavailable",
                    extra={"instance": settings.asterisk.instance})
    else:
        skills = settings.routing.agent_skills
        await asyncio.to_thread(store.upsert_agents,
                                [(a, r, skills.get(a, [])) for a, r in link.agents])
        distributor = distributor_for(link.agents, skills, settings.flow.wrap_up_s)
        # Claims go through the database: several nodes on it never ring one agent.
        distributor.ledger = AgentLedger(store.engine, store.node_id)
        controller = HotlineController(
            link.creds, readiness, store, routing, distributor,
            Prompts(link.sounds_dir), settings.flow, speech=speech,
            verification=verification, voice=voice, bus=bus,
            supervisor_phones=link.supervisor_phones, health=health, journal=journal,
            monitor_media=MonitorMedia(
                speech.ports if speech is not None else PortPool(
                    settings.asr.rtp_port_start, settings.asr.rtp_port_end,
                    settings.asr.media_bind or settings.asr.media_host),
                settings.asr.media_host, settings.asr.media_bind or settings.asr.media_host))
        controller_task = asyncio.create_task(controller.run(), name="controller")
        background.spawn(probe_forever(readiness, "ari_requests", controller.probe,
                                       health.probe_every_s, health.probe_timeout_s,
                                       "ARI request (GET /asterisk/ping)"), "probe-ari")
    metrics.follow_process(lag, controller, journal)
    app = create_app(ApiServices(
        readiness, store, routing, outbox=verification.outbox, tokens=tokens,
        privacy=settings.privacy, security=settings.security, accounts=verification.accounts,
        voiceprint=voiceprint, bus=bus,
        snapshot=controller.snapshot if controller else None,
        supervise=controller.supervise if controller else None,
        supervise_in_browser=controller.supervise_in_browser if controller else None,
        end_browser_monitor=controller.end_browser_monitor if controller else None,
        metrics=metrics))
    config = uvicorn.Config(app, host=settings.api_host, port=settings.api_port,
                            log_level=settings.log_level.lower(), lifespan="off",
                            log_config=None)
    server = uvicorn.Server(config)
    if controller_task is not None:
        controller_task.add_done_callback(
            functools.partial(_controller_ended, readiness=readiness, server=server))
    background.spawn(announce_when_ready(settings, readiness, link, server), "summary")
    try:
        await server.serve()
    finally:
        if controller_task is not None:
            controller_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller_task
        if controller is not None:
            await controller.aclose()
        await background.cancel_all()
        with contextlib.suppress(Exception):  # the database may be the thing that is down
            await asyncio.to_thread(lease.stop)
        await journal.aclose()
        if speech is not None:
            await speech.engine.aclose()
        await metrics.aclose()
        if isinstance(bus, StreamBus):
            await bus.aclose()
    return 1 if readiness.fatal else 0


def _seed_rules(routing: RoutingService, store: Store) -> bool:
    with startup_lock(store.engine):  # several nodes starting at once seed the rules once
        return routing.seed_rules()


async def _refresh_rules_forever(routing: RoutingService, every_s: float) -> None:
    # Rules changed by another process (the CLI, another node) reach this one's snapshot.
    failed: str | None = None  # logged once per distinct failure, not every interval
    while True:
        await asyncio.sleep(every_s)
        try:
            if await asyncio.to_thread(routing.refresh):
                log.info("routing rules reloaded")
            failed = None
        except Exception as exc:  # noqa: BLE001 - the last good snapshot stays in force
            if str(exc) != failed:
                log.exception("routing rules not reloaded; the previous rules stay in force")
            failed = str(exc)


def _controller_ended(task: asyncio.Task[None], readiness: Readiness,
                      server: uvicorn.Server) -> None:
    # The controller only ends when cancelled; anything else is a defect: say so in /health
    # and stop the process so its supervisor (systemd, a container runtime) restarts it.
    if task.cancelled():
        return
    exc = task.exception()
    reason = f"call controller stopped: {type(exc).__name__ if exc else 'returned'}"
    log.critical("call controller stopped; exiting", exc_info=exc)
    readiness.fail(reason)
    server.should_exit = True


def serve(settings: Settings) -> None:
    """Blocking entry point for ``ivr serve`` (exits non-zero when the controller died)."""
    status = asyncio.run(serve_async(settings))
    if status:
        raise SystemExit(status)
