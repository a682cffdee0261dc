"""Settings of the runtime image shared by the builder and the store (env prefix MODELSHIP_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelship.api.serving import ENV_PREFIX, SourceMounts


class IOSettings(BaseSettings, SourceMounts):
    """How sources are fetched, where claims are mounted and how much a build may write
    (the :class:`~modelship.api.serving.SourceMounts` fields are set by the operator in build
    pods); every field is an env variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of CAs to trust for https sources (default: system)."
    )
    http_timeout_s: float = Field(default=30.0, gt=0, description="Connect and read timeout.")
    http_attempts: int = Field(default=4, ge=1, description="Tries per https download.")
    http_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles.")
    max_extract_ratio: float = Field(
        default=200.0, gt=1, description="Largest unpacked/packed size ratio (archive bombs)."
    )
    max_archive_members: int = Field(default=10_000, gt=0, description="Most archive entries.")
