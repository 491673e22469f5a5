"""Configuration in one place: defaults, a YAML file (``IVR_CONFIG_FILE``), then ``IVR_*`` env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator
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
    start_timeout_s: float = Field(45.0, gt=0)
    hotline_number: str = Field("4008101111", pattern=r"^\d{3,20}$")
    ari_app: str = Field("ivr", pattern=r"^[A-Za-z0-9_-]+$")

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


class RemoteAriSettings(BaseModel):
    """ARI of an Asterisk that this process does not run (for example from a container)."""

    url: str = Field(pattern=r"^https?://")
    user: str
    password: SecretStr
    app: str = Field("ivr", pattern=r"^[A-Za-z0-9_-]+$")


class Settings(BaseSettings):
    """Process-wide settings (env prefix ``IVR_``, nested with ``__``)."""

    model_config = SettingsConfigDict(env_prefix="IVR_", env_nested_delimiter="__",
                                      extra="forbid")

    data_dir: Path = Path("var")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=1, le=65535)
    log_level: str = "INFO"
    regions: tuple[str, ...] = DEFAULT_REGIONS
    asterisk: AsteriskSettings = Field(default_factory=AsteriskSettings)  # type: ignore[arg-type]
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
