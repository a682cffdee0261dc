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
        "(figures: docs/benchmarks.md). Models faster than inline_threshold_ms never spin.",
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
        "loop thread; slower ones on a worker thread so the loop keeps accepting requests. "
        "Only calls expected to take less than this (the warm-up latency scaled by input "
        "elements) run there.",
    )
    inline_alone_threshold_ms: float = Field(
        default=50.0,
        ge=0,
        description="Models faster than this run a request on the event loop thread when the "
        "data plane sees no other request or connection (it skips the worker-thread hop and, "
        "batched, the batch queue), if the call is expected to take less than this (the "
        "warm-up latency scaled by input elements). The loop is busy that long, so keep it "
        "well below the "
        "probes' timeouts. 0 = off. Transports that cannot count their connections (uvicorn) "
        "turn it off.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body or gRPC message."
    )
    max_input_elements: int = Field(
        default=1 << 26,
        ge=1,
        description="Largest number of elements over all inputs of one request, from the "
        "declared shapes before decoding (a 0-sized dimension counts as 1); over it: 413 / "
        "RESOURCE_EXHAUSTED.",
    )
    max_input_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest decoded size (elements x datatype size) over all inputs of one "
        "request, checked like max_input_elements.",
    )
    max_url_bytes: int = Field(
        default=8 * 1024, ge=256, description="REST: longest request URL; longer: 414."
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="REST: longest request line plus headers (431 beyond), and gRPC's metadata "
        "limit.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="REST: a request's line and headers must arrive within this (from the "
        "connect, for a connection's first request; 408 and close beyond); gRPC: the "
        "connection handshake's limit.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="REST: a request body must arrive within this once it may be read (408 "
        "and close beyond), and a client that reads none of its answers this long is "
        "disconnected.",
    )
    keep_alive_timeout_s: float = Field(
        default=75.0, gt=0, description="REST: idle keep-alive connections close after this."
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="REST: open connections; at the cap an idle connection, or the one slowest "
        "to send its head, is closed to make room, and when none is, the new one is refused.",
    )
    max_pipelined_requests: int = Field(
        default=16,
        ge=1,
        description="REST: requests one connection may have waiting for answers; beyond it "
        "the connection is not read until answers go out (back-pressure).",
    )
    max_inflight_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="REST: request body bytes held by the server at once (received or being "
        "received, not yet answered); a body is read only when it fits (its 100 Continue "
        "waits too), and one larger than the budget only when nothing else is held.",
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=256,
        ge=1,
        description="gRPC: RPCs handled at once; more are refused with RESOURCE_EXHAUSTED.",
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="SIGTERM: keep serving this long after readiness turns false, so load "
        "balancers stop sending first (bounded by drain_deadline_s). In a pod the preStop "
        "pause does this, so the operator leaves it at 0.",
    )
    mirror_poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Mirroring: how often the plan file (mirror_file) is read again; a change "
        "starts, swaps or stops mirroring within this long.",
    )
    mirror_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Mirroring: how long the canary may take to answer a mirrored request "
        "(connect included) before it counts as failed.",
    )
    mirror_connections: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Mirroring: worker threads (each with one keep-alive connection) that send "
        "mirrored requests and compare the answers.",
    )
    mirror_max_queue_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Mirroring: input bytes held by the mirror queue at most; a request that "
        "does not fit is dropped (and counted).",
    )
    mirror_example_cosine: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Mirroring: a compared request whose cosine is below this (or whose top-1 "
        "differs) is kept as a mismatching example (GET /v2/mirror).",
    )
    mirror_examples: int = Field(
        default=8, ge=1, le=256, description="Mirroring: mismatching examples kept (newest)."
    )
    drift_sample_every: int = Field(
        default=1, ge=1, description="Feed every n-th request's inputs to the drift statistics."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the server."
    )
