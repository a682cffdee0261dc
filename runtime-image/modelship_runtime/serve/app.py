"""Assemble and run the server: load, start listeners, warm up, serve, drain on SIGTERM.

Order matters for probes: the listeners start first (liveness answers during a long warm-up),
readiness turns true only after warm-up, and on SIGTERM readiness turns false before anything
stops, then in-flight requests finish, then the listeners close, all within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import uvicorn
from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from modelship.api.artifact import MANIFEST_FILE, MODEL_FILE, Manifest
from modelship.api.serving import env_name
from modelship_runtime.serve.batching import BatchingPredictor
from modelship_runtime.serve.cpu import default_threads
from modelship_runtime.serve.dataplane import DataPlane, ServedModel, Transport
from modelship_runtime.serve.grpc_server import InferenceServicer, create_server
from modelship_runtime.serve.http_server import HttpServer
from modelship_runtime.serve.metrics import (
    DriftCollector,
    DriftMonitor,
    DriftObservingPredictor,
    RequestMetrics,
    register_server_info,
)
from modelship_runtime.serve.model import DirectPredictor, OnnxModel, Predictor, SessionConfig
from modelship_runtime.serve.rest import RestApp
from modelship_runtime.serve.settings import ServeSettings

log = logging.getLogger("modelship_runtime.serve")


class ArtifactError(Exception):
    """The artifact directory cannot be served; the message says what to fix."""


def load_manifest(model_dir: Path) -> Manifest | None:
    path = model_dir / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise ArtifactError(f"{path} is not a valid artifact manifest: {exc}") from exc


def model_file(model_dir: Path, manifest: Manifest | None) -> Path:
    path = model_dir / (manifest.model_file if manifest else MODEL_FILE)
    if not path.is_file():
        raise ArtifactError(
            f"no model at {path}; point --model-dir ({env_name('model_dir')}) at an artifact "
            "directory with model.onnx and manifest.json, or set --artifact-uri and "
            "--artifact-digest to download one"
        )
    return path


class _Listener(Transport, Protocol):
    async def start(self, host: str, port: int) -> None: ...
    async def stop(self, timeout: float) -> None: ...


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the lifecycle below owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _UvicornListener:
    """The REST app under uvicorn (``--http-server uvicorn``), as a start/stop listener."""

    def __init__(self, app: RestApp, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            loop="none",
            http="httptools",
            ws="none",
            lifespan="off",
            access_log=False,
            server_header=False,
            date_header=False,
            log_level="warning",
            timeout_graceful_shutdown=max(int(self.settings.grace_period_s), 1),
            backlog=4096,
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="rest")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)  # uvicorn exposes no started event

    async def stop(self, timeout: float) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._task, timeout)

    def pending(self) -> None:
        """Always None: uvicorn shows no count of its connections or parsed requests, and
        without one no request can be known to be alone."""
        return None


async def serve(settings: ServeSettings) -> int:
    loop = asyncio.get_running_loop()
    manifest = load_manifest(settings.model_dir)
    if manifest is None:
        log.warning("no %s in %s: serving without drift statistics", MANIFEST_FILE,
                    settings.model_dir)  # fmt: skip
    threads = settings.intra_op_threads or default_threads()
    model = OnnxModel(
        model_file(settings.model_dir, manifest),
        SessionConfig(threads, settings.allow_spinning, settings.graph_optimization),
    )
    disable_created_metrics()  # type: ignore[no-untyped-call]  # halves the scrape size; nothing reads *_created
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, settings.model_name)
    register_server_info(registry, settings.model_name, settings.revision, settings.artifact_digest)
    stack = _build_predictors(model, manifest, settings, metrics, registry)
    served = ServedModel(
        settings.model_name, settings.model_version, model.inputs, model.outputs, stack.predictor
    )
    plane = DataPlane(served)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics_server, metrics_thread = start_http_server(
        settings.metrics_port, settings.host, registry=registry
    )
    rest, grpc_server = await _start_listeners(settings, plane, metrics)
    try:
        latency_ms = await _warm_up(model, settings, stack, stop)
        if latency_ms is not None:
            _place_calls(stack, plane, settings, latency_ms)
            plane.serving = plane.ready = True
            _log_ready(settings, threads, latency_ms, stack)
        await stop.wait()
    finally:
        await _drain(settings, plane, rest, grpc_server)
        await stack.predictor.close()
        metrics_server.shutdown()
        metrics_thread.join(timeout=5)
    return 0


@dataclass(frozen=True, slots=True)
class _PredictorStack:
    """The predictors a request passes through: ``predictor`` is the outermost (what the data
    plane awaits); ``direct`` or ``batcher``, whichever runs the model, is what warm-up tunes."""

    predictor: Predictor
    direct: DirectPredictor | None
    batcher: BatchingPredictor | None


def _build_predictors(
    model: OnnxModel,
    manifest: Manifest | None,
    settings: ServeSettings,
    metrics: RequestMetrics,
    registry: CollectorRegistry,
) -> _PredictorStack:
    direct: DirectPredictor | None = None
    batcher: BatchingPredictor | None = None
    predictor: Predictor
    if settings.max_batch_size > 1 and model.batchable:
        batcher = BatchingPredictor(model, settings.max_batch_size, settings.max_delay_ms, metrics)
        batcher.start()
        predictor = batcher
    else:
        if settings.max_batch_size > 1:
            log.warning(
                "batching requested but the model has a fixed batch dimension; serving unbatched"
            )
        direct = DirectPredictor(model)
        predictor = direct
    if manifest is not None and manifest.calibration_stats:
        monitor = DriftMonitor(manifest.calibration_stats)
        registry.register(DriftCollector(monitor, settings.model_name))
        predictor = DriftObservingPredictor(predictor, monitor, settings.drift_sample_every)
    return _PredictorStack(predictor, direct, batcher)


async def _start_listeners(
    settings: ServeSettings, plane: DataPlane, metrics: RequestMetrics
) -> tuple[_Listener, grpc.aio.Server | None]:
    """Start REST and (when enabled) gRPC, each attached to the data plane, which needs their
    request counts to tell whether a request is alone."""
    app = RestApp(plane, metrics, settings.max_request_bytes)
    rest: _Listener = (
        _UvicornListener(app, settings) if settings.http_server == "uvicorn" else HttpServer(app)
    )
    plane.attach(rest)
    await rest.start(settings.host, settings.rest_port)
    if not settings.grpc_enabled:
        return rest, None
    servicer = InferenceServicer(plane, metrics)
    plane.attach(servicer)
    grpc_server = create_server(servicer, settings.max_request_bytes)
    grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await grpc_server.start()
    return rest, grpc_server


async def _warm_up(
    model: OnnxModel, settings: ServeSettings, stack: _PredictorStack, stop: asyncio.Event
) -> float | None:
    """The median warm-up latency in ms, or None when SIGTERM came first.

    Warm-up runs on a worker thread so the loop keeps answering liveness probes meanwhile.
    """
    loop = asyncio.get_running_loop()
    sizes = [1, settings.max_batch_size] if stack.batcher is not None else [1]
    warm = loop.run_in_executor(None, model.warm_up, settings.warmup_runs, sizes)
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait([warm, stopping], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    finally:
        stopping.cancel()
    if stop.is_set():
        return None
    return await warm


def _place_calls(
    stack: _PredictorStack, plane: DataPlane, settings: ServeSettings, latency_ms: float
) -> None:
    """Decide from the warm-up latency which calls may run on the event loop thread."""
    if stack.direct is not None:
        stack.direct.inline = latency_ms < settings.inline_threshold_ms
    if latency_ms < settings.inline_alone_threshold_ms:
        if stack.direct is not None:
            stack.direct.alone = plane.alone
        elif stack.batcher is not None:
            stack.batcher.alone = plane.alone


def _log_ready(
    settings: ServeSettings, threads: int, latency_ms: float, stack: _PredictorStack
) -> None:
    log.info(
        "ready: model '%s' v%s, %d intra-op threads, warm-up median %.2f ms (%s), "
        "batching %s, REST :%d, gRPC %s, metrics :%d",
        settings.model_name, settings.model_version, threads, latency_ms,
        "inline" if stack.direct is not None and stack.direct.inline else "worker thread",
        f"max {settings.max_batch_size} / {settings.max_delay_ms} ms" if stack.batcher
        else "off",
        settings.rest_port,
        f":{settings.grpc_port}" if settings.grpc_enabled else "off",
        settings.metrics_port,
    )  # fmt: skip


async def _drain(
    settings: ServeSettings,
    plane: DataPlane,
    rest: _Listener,
    grpc_server: object | None,
) -> None:
    deadline = time.monotonic() + settings.grace_period_s
    plane.ready = False
    log.info("shutting down: readiness false, draining for up to %.1f s", settings.grace_period_s)
    delay = min(settings.drain_delay_s, settings.grace_period_s)
    if delay > 0:
        await asyncio.sleep(delay)  # load balancers need time to notice readiness is false
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(plane.wait_idle(), max(deadline - time.monotonic(), 0))
    if grpc_server is not None:
        await grpc_server.stop(max(deadline - time.monotonic(), 0))  # type: ignore[attr-defined]
    await rest.stop(max(deadline - time.monotonic(), 0) + 1)
    log.info("stopped: %d request(s) still in flight", plane.in_flight)
