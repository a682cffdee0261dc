"""Settings of the runtime image shared by the builder and the store (env prefix MODELSHIP_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelship.api.serving import ENV_PREFIX, SourceMounts


class IOSettings(BaseSettings, SourceMounts):
    """How sources are fetched and where claims are mounted (``pvc_root`` is set by the
    operator, see :class:`~modelship.api.serving.SourceMounts`); every field is an env variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of CAs to trust for https sources (default: system)."
    )
    http_timeout_s: float = Field(default=30.0, gt=0, description="Connect and read timeout.")
    http_attempts: int = Field(default=4, ge=1, description="Tries per https download.")
    http_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles.")
    max_download_bytes: int = Field(
        default=20 * 1024**3, gt=0, description="Largest source accepted (bytes)."
    )
    max_extract_bytes: int = Field(
        default=20 * 1024**3, gt=0, description="Largest total size unpacked from an archive."
    )
    max_extract_ratio: float = Field(
        default=200.0, gt=1, description="Largest unpacked/packed size ratio (archive bombs)."
    )
    max_archive_members: int = Field(default=10_000, gt=0, description="Most archive entries.")
