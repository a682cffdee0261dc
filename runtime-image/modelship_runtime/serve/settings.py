"""Server settings: the operator's serving contract plus the server's own knobs.

The fields the operator sets come from :mod:`modelship.api.serving` (one declaration of each
name, default and type); the rest are tuning a person may change. Every field reads
``MODELSHIP_<FIELD>``; CLI flags override (``serve/cli.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelship.api.serving import ENV_PREFIX, DownloadConfig, ServingConfig


class ServeSettings(BaseSettings, ServingConfig, DownloadConfig):
    """Everything ``python -m modelship_runtime serve`` can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = Field(default="0.0.0.0", description="Address the listeners bind to.")
    http_server: Literal["builtin", "uvicorn"] = Field(
        default="builtin",
        description="REST transport: the lean built-in HTTP/1.1 server, or uvicorn (fallback).",
    )
    allow_spinning: bool = Field(
        default=True,
        description="Let onnxruntime's threads spin between operators instead of sleeping. "
        "They spin only while requests run and briefly after, never when idle; turn it off "
        "to trade requests/s at low concurrency for less CPU per request "
        "(figures: docs/benchmarks.md).",
    )
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = Field(
        default="all", description="onnxruntime graph optimization level at session start."
    )
    warmup_runs: int = Field(
        default=3, ge=0, le=1000, description="Model calls before readiness turns true."
    )
    inline_threshold_ms: float = Field(
        default=0.5,
        ge=0,
        description="Models faster than this (median warm-up latency) always run on the event "
        "loop thread; slower ones on a worker thread so the loop keeps accepting requests.",
    )
    inline_alone_threshold_ms: float = Field(
        default=50.0,
        ge=0,
        description="Models faster than this run a request on the event loop thread when the "
        "data plane sees no other request or connection (it skips the worker-thread hop and, "
        "batched, the batch queue). The loop is busy that long, so keep it well below the "
        "probes' timeouts. 0 = off. Transports that cannot count their connections (uvicorn) "
        "turn it off.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body or gRPC message."
    )
    grace_period_s: float = Field(
        default=30.0, ge=0, description="SIGTERM: longest wait for in-flight requests."
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="SIGTERM: keep serving this long after readiness turns false, so load "
        "balancers stop sending first (bounded by grace_period_s).",
    )
    drift_sample_every: int = Field(
        default=1, ge=1, description="Feed every n-th request's inputs to the drift statistics."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the server."
    )
