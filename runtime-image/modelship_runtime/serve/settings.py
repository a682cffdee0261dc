"""Server settings: environment variables (prefix ``MODELSHIP_``) overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """Everything ``python -m modelship_runtime serve`` can be told. Env: MODELSHIP_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="MODELSHIP_", extra="ignore")

    model_dir: Path = Field(
        default=Path("/models"),
        description="Artifact directory with model.onnx and (optionally) manifest.json.",
    )
    model_name: str = Field(default="model", min_length=1, description="Name clients use.")
    model_version: str = Field(default="1", min_length=1, description="Version clients may use.")

    artifact_uri: str | None = Field(
        default=None,
        description="s3://bucket/prefix of the artifact store; with artifact_digest, the artifact "
        "is downloaded into model_dir before serving.",
    )
    artifact_digest: str | None = Field(default=None, description="Digest to download.")
    artifact_s3_endpoint: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (empty: AWS S3)."
    )
    artifact_s3_region: str | None = None
    download_only: bool = Field(
        default=False, description="Download the artifact and exit (init-container mode)."
    )

    host: str = "0.0.0.0"
    http_server: Literal["builtin", "uvicorn"] = Field(
        default="builtin",
        description="REST transport: the lean built-in HTTP/1.1 server, or uvicorn (fallback).",
    )
    rest_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=8081, ge=0, le=65535)
    grpc_enabled: bool = True
    metrics_port: int = Field(default=9090, ge=0, le=65535)

    max_batch_size: int = Field(
        default=0, ge=0, le=1024, description="Dynamic batching: largest merged batch; 0 = off."
    )
    max_delay_ms: float = Field(
        default=5.0, ge=0, le=1000, description="Dynamic batching: longest wait for a batch."
    )

    intra_op_threads: int = Field(
        default=0, ge=0, le=256, description="onnxruntime intra-op threads; 0 = the CPU limit."
    )
    allow_spinning: bool = Field(
        default=True,
        description="Let onnxruntime's threads spin between operators instead of sleeping: "
        "measured 1.2x the requests/s at concurrency 1 on a 2-CPU machine (docs/runtime.md). "
        "They spin only while requests run and briefly after, never when idle; turn it off to "
        "trade that for less CPU per request.",
    )
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    warmup_runs: int = Field(default=3, ge=0, le=1000)
    inline_threshold_ms: float = Field(
        default=0.5,
        ge=0,
        description="Models faster than this (median warm-up latency) run on the event loop "
        "thread; slower ones on a worker thread so the loop keeps accepting requests.",
    )
    inline_alone_threshold_ms: float = Field(
        default=50.0,
        ge=0,
        description="Models faster than this run a request on the event loop thread when it is "
        "the only one in the server (skips the worker-thread hop and, batched, the batch queue: "
        "4-9 percent more requests/s for MiniLM-16 at concurrency 1); the loop is busy that "
        "long, so keep it well below the probes' timeouts. 0 = off. Built-in HTTP server only.",
    )

    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
