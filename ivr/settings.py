"""Configuration in one place: defaults, a YAML file (``IVR_CONFIG_FILE``), then ``IVR_*`` env."""

from __future__ import annotations

import os
from datetime import date
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_REGIONS = ("north", "east", "south", "west")


class AsteriskSettings(BaseModel):
    """The Asterisk instance this process runs or talks to."""

    instance: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")
    ari_port: int = Field(8088, ge=1, le=65535)
    sip_port: int = Field(5060, ge=1, le=65535)
    # The RTP range is sized for this many simultaneous calls unless rtp_end is given.
    concurrent_calls: int = Field(120, ge=1, le=5000)
    rtp_start: int = Field(10000, ge=1024, le=65535)
    rtp_end: int | None = Field(None, ge=1024, le=65535)
    agents_per_region: int = Field(4, ge=0, le=200)
    supervisors: int = Field(2, ge=0, le=50)  # supervisor-1.. SIP phones for monitoring
    start_timeout_s: float = Field(45.0, gt=0)
    hotline_number: str = Field("4008101111", pattern=r"^\d{3,20}$")
    ari_app: str = Field("ivr", pattern=r"^[A-Za-z0-9_-]+$")
    # The address SIP, ARI and the calls' media listen on (an address of this host).
    address: IPv4Address = IPv4Address("127.0.0.1")
    # Several nodes: agents and supervisors register at this SIP proxy (Kamailio, host:port),
    # not here; Asterisk reaches them through it and qualifies them there (None: they
    # register with this Asterisk).
    agent_proxy: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$")

    @model_validator(mode="after")
    def _range_ok(self) -> AsteriskSettings:
        if self.rtp_end is not None and self.rtp_end - self.rtp_start < 4:
            raise ValueError("asterisk.rtp_end must be at least rtp_start + 4")
        if self.rtp_last_port() > 65535:
            raise ValueError("asterisk.rtp_end: range for concurrent_calls passes port 65535")
        return self

    def rtp_last_port(self) -> int:
        """Last RTP port: given, or sized from ``concurrent_calls``.

        A call has up to four RTP streams in Asterisk (caller, agent, ExternalMedia for the
        speech path, a supervisor snoop), each an even RTP port plus its RTCP port; 25 % headroom
        covers ports still held by calls that are ending.
        """
        if self.rtp_end is not None:
            return self.rtp_end
        return self.rtp_start + (self.concurrent_calls * 4 * 2 * 5) // 4 - 1


class FlowSettings(BaseModel):
    """Timings and limits of the IVR call flow."""

    greeting_language: Literal["zh", "en"] = "zh"
    english_key: str = Field("9", pattern=r"^[0-9*#]$")
    menu_timeout_s: float = Field(6.0, gt=0)
    max_failures: int = Field(3, ge=1, le=10)
    callback_first_digit_s: float = Field(10.0, gt=0)
    callback_digit_s: float = Field(5.0, gt=0)
    callback_attempts: int = Field(2, ge=1, le=5)
    position_announce_every_s: float = Field(30.0, gt=0)
    wrap_up_s: float = Field(5.0, ge=0)
    queue_poll_s: float = Field(0.5, gt=0)
    # Admission control, enforced before answer (refused callers hear busy: SIP 486).
    max_calls: int = Field(150, ge=1, le=10000)  # calls this controller holds at once
    max_setup: int = Field(30, ge=1, le=1000)  # calls being answered and greeted at once
    # A stalled ARI request (frozen or overloaded PBX): how often a call retries, and the pause;
    # a call whose requests stall more often than this ends (ari_unreachable).
    ari_retries: int = Field(3, ge=0, le=10)
    ari_retry_pause_s: float = Field(1.0, ge=0, le=30)
    # Internal errors one call may meet before it is ended (each degrades it first).
    max_internal_errors: int = Field(3, ge=1, le=10)
    # Every this often, calls in our Stasis application without a live state machine are taken
    # over (and stored calls without a channel are closed): nothing is left stranded.
    sweep_every_s: float = Field(15.0, gt=0)


class HealthSettings(BaseModel):
    """Probes behind /ready, and the ARI request timeout they measure against."""

    ari_timeout_s: float = Field(5.0, gt=0, le=60)  # one ARI REST request
    probe_every_s: float = Field(2.0, gt=0, le=60)
    probe_timeout_s: float = Field(2.0, gt=0, le=60)


class NodeSettings(BaseModel):
    """This controller's place among several sharing one database (``ivr cluster``)."""

    # Who owns the calls this controller takes; stable across restarts of the same node.
    # None: "<host name>-<asterisk instance>".
    id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # A node that has not renewed its lease for this long is lost: another node closes its
    # calls (their channels lived on that node's Asterisk). Renewed every third of it.
    lease_s: float = Field(15.0, ge=2, le=600)


class RoutingSettings(BaseModel):
    """Region resolution and routing rules inputs."""

    timezone: str = "Asia/Shanghai"
    holidays: tuple[date, ...] = ()
    vip_numbers: tuple[str, ...] = ()
    default_region: str = "east"
    regions_file: Path | None = None  # province -> region map; None: the shipped one
    rules_file: Path | None = None  # rules loaded on first start; None: the shipped defaults
    agent_skills: dict[str, list[str]] = Field(default_factory=dict)
    # Calls are routed from an in-memory copy of the rules; API edits refresh it at once,
    # edits by other processes are picked up this often.
    refresh_every_s: float = Field(2.0, gt=0, le=300)

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class AsrSettings(BaseModel):
    """The speech path: model, device and the controller's RTP ports for ExternalMedia."""

    enabled: bool = True
    model_dir: Path | None = None  # None: models/whisper/<first folder>, else Whisper base
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # None: Whisper detects each utterance's language. Otherwise each leg is heard in its call's
    # menu language (greeting language, 9 toggles), this value only where a call has none.
    language: str | None = "zh"
    # The call's menu language is forced, unless Whisper's language detection is at least this
    # sure of the other menu language (an English caller who never pressed 9); None: forced.
    language_switch_floor: float | None = Field(0.6, ge=0, le=1)
    beam_size: int = Field(5, ge=1, le=10)
    # Whisper's own guard; -1.0 dropped a third of intelligible telephone Mandarin (measured).
    log_prob_threshold: float | None = -1.5
    # Domain vocabulary through Whisper's prompt. Off by default: on the spoken set it made the
    # base model write prompt words into unclear audio (scripts/bench_asr.py --sections prompts).
    initial_prompt: str | None = None
    # Encoder window: each batch padded to its longest utterance plus this margin instead of
    # Whisper's 30 s. On the spoken set 4.5x less CPU per utterance at the same accuracy and
    # English WER (scripts/bench_asr.py --sections accuracy,wer); None: the full 30 s.
    window_margin_s: float | None = Field(5.0, ge=0, le=30)
    hotwords: str | None = None  # every language
    hotwords_zh: str | None = None
    hotwords_en: str | None = None
    # Barge-in: webrtcvad onsets confirmed by Silero VAD ("silero") or webrtcvad alone ("none");
    # scripts/bench_asr.py --sections turns measures both.
    onset_check: Literal["silero", "none"] = "silero"
    silero_threshold: float = Field(0.85, gt=0, lt=1)
    silero_min_chunks: int = Field(2, ge=1, le=10)  # 32 ms chunks at the threshold
    # Where Asterisk sends each call's audio (slin16 RTP); one port per listened leg.
    rtp_port_start: int = Field(46000, ge=1024, le=65535)
    # Where the PBX sends each listened leg's audio (ExternalMedia): an address of this host
    # the PBX can reach; the receivers bind to ``media_bind`` (None: the same address).
    media_host: str = "127.0.0.1"
    media_bind: str | None = None
    rtp_port_end: int = Field(46999, ge=1024, le=65535)
    min_intent_confidence: float = Field(0.5, ge=0, le=1)
    partial_every_s: float = Field(1.0, gt=0)
    # Debugging only: raw PCM of every listened leg is written here (personal data!).
    debug_audio_dir: Path | None = None


class PrivacySettings(BaseModel):
    """What personal data is kept, and who may read it in clear over the API."""

    # "redacted": transcripts are redacted before they are stored (nobody can read them in clear).
    store_transcripts: Literal["clear", "redacted"] = "clear"
    # Roles that may ask for ``?unredacted=true``; every such read is audited.
    unredacted_roles: tuple[Literal["admin", "supervisor", "security", "agent"], ...] = (
        "security",)
    # Retention, in days (None: kept until deleted by hand). Calls go with their events,
    # transcripts and callback requests; transcripts may go sooner than their calls. Retained
    # voice audio has its own limit (voiceprint.retain_audio_days). Each purge is recorded.
    retain_calls_days: int | None = Field(365, ge=1, le=36_500)
    retain_transcripts_days: int | None = Field(90, ge=1, le=36_500)
    purge_every_s: float = Field(3600.0, gt=0, le=86_400)


class SecuritySettings(BaseModel):
    """Limits of the REST API and the live socket, and throttles that hold across processes."""

    # Every request body; larger ones are 413 before they are read (a rules import may be as
    # large as the biggest rule set an export can write, whichever is more).
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    # Bodies at least this large are parsed as JSON in a worker thread, not on the event loop.
    offload_json_bytes: int = Field(64 << 10, ge=0)
    # The interactive documentation pages (/docs, /redoc); the OpenAPI document stays public.
    api_docs: bool = False
    # Failed authentication per source address (REST and the live socket): past the limit in a
    # window, 429 with Retry-After until the window ends.
    auth_failures: int = Field(20, ge=1, le=100_000)
    auth_window_s: int = Field(60, ge=1, le=86_400)
    # Per account: one-time codes sent, and voice verification attempts, per window.
    code_sends: int = Field(5, ge=1, le=1000)
    code_window_s: int = Field(3600, ge=60, le=86_400)
    voice_attempts: int = Field(10, ge=1, le=1000)
    voice_window_s: int = Field(3600, ge=60, le=86_400)
    # How often an open live socket re-checks its token (revocation by another process).
    live_recheck_s: float = Field(2.0, gt=0, le=300)


class VoiceprintSettings(BaseModel):
    """Tier 2: the speaker model, the master key, thresholds and enrollment limits."""

    enabled: bool = True
    # dvector: the trained GE2E encoder installed by make setup (the default); ecapa: a
    # SpeechBrain ECAPA-TDNN folder the operator brings (models/ecapa/<folder>).
    model: Literal["dvector", "ecapa"] = "dvector"
    model_dir: Path | None = None  # None: the installed d-vector weights, or models/ecapa
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # base64 or hex of 32 bytes, or a file holding it; never in the repo. Neither set: a key is
    # generated once per install (generate_master_key) in the per-install secrets folder.
    master_key: SecretStr | None = None
    master_key_file: Path | None = None
    generate_master_key: bool = True
    # Key rotation: the master keys before this one, still accepted to open what they wrapped
    # until `ivr keys rotate` has re-wrapped it all under the current key.
    previous_master_key_files: tuple[Path, ...] = ()
    # None: the model's calibration (voiceprint/calibration/<model>.json), chosen with
    # scripts/eval_voiceprint.py for a stated false-match rate.
    accept_threshold: float | None = None
    reject_threshold: float | None = None
    min_enroll_speech_s: float = Field(20.0, gt=0)
    min_verify_speech_s: float = Field(1.0, gt=0)
    challenge_digits: int = Field(6, ge=4, le=10)
    challenge_attempts: int = Field(2, ge=1, le=5)
    # Recognition errors (digit edits) a spoken challenge may have and still count as said.
    challenge_max_errors: int = Field(1, ge=0, le=3)
    answer_timeout_s: float = Field(8.0, gt=0)  # to start speaking after a prompt
    # Pause that ends the spoken challenge: callers read digits in groups; with the usual
    # 500 ms the answer was cut after the first group.
    answer_hangover_ms: int = Field(1200, ge=300, le=3000)
    enroll_phrases: int = Field(3, ge=1, le=10)
    # Raw enrollment/attempt audio is kept only when this is > 0 (sealed, deleted after expiry).
    retain_audio_days: int = Field(0, ge=0, le=365)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> VoiceprintSettings:
        if (self.accept_threshold is None) != (self.reject_threshold is None):
            raise ValueError("set both voiceprint.accept_threshold and reject_threshold, or "
                             "neither (the model's calibration)")
        if (self.reject_threshold is not None and self.accept_threshold is not None
                and self.reject_threshold > self.accept_threshold):
            raise ValueError("voiceprint.reject_threshold must not exceed accept_threshold")
        return self


class RemoteAriSettings(BaseModel):
    """ARI of an Asterisk that this process does not run (for example from a container)."""

    url: str = Field(pattern=r"^https?://")
    user: str
    password: SecretStr
    app: str = Field("ivr", pattern=r"^[A-Za-z0-9_-]+$")
    sounds_dir: str = "/var/lib/asterisk/sounds/ivr"  # where the prompts are on that PBX
    # TLS: a CA bundle to verify the PBX's certificate (https/wss); None: the system's.
    ca_file: Path | None = None
    agents: dict[str, str] = Field(default_factory=dict)  # agent endpoint -> region
    supervisor_phones: tuple[str, ...] = ()  # endpoints rung for listen / whisper / barge


class Settings(BaseSettings):
    """Process-wide settings (env prefix ``IVR_``, nested with ``__``)."""

    model_config = SettingsConfigDict(env_prefix="IVR_", env_nested_delimiter="__",
                                      extra="forbid")

    data_dir: Path = Path("var")
    # SQLite in data_dir unless a URL is given (e.g. postgresql+psycopg://...).
    database_url: str | None = None
    # Several nodes: live events through a Redis stream (redis://HOST:6379/0); None: in-process.
    broker_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=1, le=65535)
    log_level: str = "INFO"
    regions: tuple[str, ...] = DEFAULT_REGIONS
    asterisk: AsteriskSettings = Field(default_factory=AsteriskSettings)  # type: ignore[arg-type]
    flow: FlowSettings = Field(default_factory=FlowSettings)  # type: ignore[arg-type]
    routing: RoutingSettings = Field(default_factory=RoutingSettings)  # type: ignore[arg-type]
    asr: AsrSettings = Field(default_factory=AsrSettings)  # type: ignore[arg-type]
    voiceprint: VoiceprintSettings = Field(default_factory=VoiceprintSettings)  # type: ignore[arg-type]
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)  # type: ignore[arg-type]
    security: SecuritySettings = Field(default_factory=SecuritySettings)  # type: ignore[arg-type]
    health: HealthSettings = Field(default_factory=HealthSettings)  # type: ignore[arg-type]
    node: NodeSettings = Field(default_factory=NodeSettings)  # type: ignore[arg-type]
    # Model folders (models/whisper/<name>, models/ecapa/<name>): configuration, never the
    # installed package's location. None: ./models of the working directory if it exists.
    models_dir: Path | None = None
    # When set, the controller uses this ARI instead of the local instance's (`ivr asterisk up`).
    ari: RemoteAriSettings | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, env, the YAML config file, defaults."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("IVR_CONFIG_FILE")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Settings from defaults, the config file and the environment, plus ``overrides``."""
    return Settings(**overrides)
