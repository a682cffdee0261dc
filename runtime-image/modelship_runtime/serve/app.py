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
from pathlib import Path
from typing import Protocol

import uvicorn
from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from modelship.api.artifact import MANIFEST_FILE, MODEL_FILE, Manifest
from modelship.api.serving import env_name
from modelship_runtime.serve.batching import BatchingPredictor
from modelship_runtime.serve.cpu import default_threads
from modelship_runtime.serve.dataplane import DataPlane, ServedModel
from modelship_runtime.serve.grpc_server import create_server
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


class _Listener(Protocol):
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
    register_server_info(
        registry, settings.model_name, settings.revision, settings.artifact_digest
    )

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

    plane = DataPlane(
        ServedModel(
            settings.model_name, settings.model_version, model.inputs, model.outputs, predictor
        )
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics_server, metrics_thread = start_http_server(
        settings.metrics_port, settings.host, registry=registry
    )
    app = RestApp(plane, metrics, settings.max_request_bytes)
    rest: _Listener = (
        _UvicornListener(app, settings) if settings.http_server == "uvicorn" else HttpServer(app)
    )
    await rest.start(settings.host, settings.rest_port)
    grpc_server = None
    if settings.grpc_enabled:
        grpc_server = create_server(plane, metrics, settings.max_request_bytes)
        grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        await grpc_server.start()

    try:
        sizes = [1, settings.max_batch_size] if batcher is not None else [1]
        warm = loop.run_in_executor(None, model.warm_up, settings.warmup_runs, sizes)
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([warm, stopping], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not stop.is_set():
            latency_ms = await warm
            if direct is not None:
                direct.inline = latency_ms < settings.inline_threshold_ms
            if isinstance(rest, HttpServer) and latency_ms < settings.inline_alone_threshold_ms:
                http = rest

                def alone() -> bool:
                    return http.alone() and plane.in_flight <= 1

                if direct is not None:
                    direct.alone = alone
                elif batcher is not None:
                    batcher.alone = alone
            plane.serving = plane.ready = True
            log.info(
                "ready: model '%s' v%s, %d intra-op threads, warm-up median %.2f ms (%s), "
                "batching %s, REST :%d, gRPC %s, metrics :%d",
                settings.model_name, settings.model_version, threads, latency_ms,
                "inline" if direct is not None and direct.inline else "worker thread",
                f"max {settings.max_batch_size} / {settings.max_delay_ms} ms" if batcher
                else "off",
                settings.rest_port,
                f":{settings.grpc_port}" if grpc_server else "off",
                settings.metrics_port,
            )  # fmt: skip
        await stop.wait()
        stopping.cancel()
    finally:
        await _drain(settings, plane, rest, grpc_server)
        await predictor.close()
        metrics_server.shutdown()
        metrics_thread.join(timeout=5)
    return 0


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
