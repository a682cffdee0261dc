"""Assemble and run the server: load, start listeners, warm up, serve, drain on SIGTERM.

Order matters for probes: the listeners start first (liveness answers during a long warm-up),
readiness turns true only after warm-up. On SIGTERM readiness turns false, every further REST
response carries ``Connection: close`` and gRPC sends GOAWAY at once, in-flight requests finish,
then the listeners close, all by ``drain_deadline_s``, which the operator sets to end before the
kubelet would kill the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc
import uvicorn
from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from modelship.api.artifact import MANIFEST_FILE, Manifest
from modelship_runtime.serve.artifact import load_manifest, model_file, verify_model
from modelship_runtime.serve.batching import BatchingPredictor
from modelship_runtime.serve.cpu import default_threads
from modelship_runtime.serve.dataplane import DataPlane, ServedModel, Transport
from modelship_runtime.serve.grpc_server import GrpcLimits, InferenceServicer, create_server
from modelship_runtime.serve.http_server import HttpLimits, HttpServer
from modelship_runtime.serve.metrics import (
    DriftCollector,
    DriftMonitor,
    DriftObservingPredictor,
    RequestMetrics,
    register_server_info,
)
from modelship_runtime.serve.mirror import MirrorMetrics
from modelship_runtime.serve.mirror_plan import MirrorControl
from modelship_runtime.serve.model import (
    DirectPredictor,
    LoopBudget,
    OnnxModel,
    Predictor,
    SessionConfig,
    unspin_if_tiny,
)
from modelship_runtime.serve.rest import RestApp
from modelship_runtime.serve.settings import ServeSettings
from modelship_runtime.serve.tensors import InputLimits

log = logging.getLogger("modelship_runtime.serve")


class _Listener(Transport, Protocol):
    async def start(self, host: str, port: int) -> None: ...
    def drain(self) -> None: ...
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
            timeout_graceful_shutdown=max(int(self.settings.drain_deadline_s), 1),
            timeout_keep_alive=max(int(self.settings.keep_alive_timeout_s), 1),
            limit_concurrency=self.settings.max_connections,
            backlog=4096,
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="rest")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)  # uvicorn exposes no started event

    def drain(self) -> None:
        self.app.draining = True

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
    path = model_file(settings.model_dir, manifest)
    verify_model(path, manifest, settings)
    model = OnnxModel(
        path, SessionConfig(threads, settings.allow_spinning, settings.graph_optimization)
    )
    disable_created_metrics()  # type: ignore[no-untyped-call]  # halves the scrape size; nothing reads *_created
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, settings.model_name, settings.revision)
    register_server_info(registry, settings.model_name, settings.revision, settings.artifact_digest)
    stack = _build_predictors(model, manifest, settings, metrics, registry)
    served = ServedModel(
        settings.model_name, settings.model_version, model.inputs, model.outputs, stack.predictor
    )
    plane = DataPlane(
        served,
        InputLimits(settings.max_input_elements, settings.max_input_bytes),
    )
    mirroring = MirrorControl(settings, model, plane, MirrorMetrics(registry))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics_server, metrics_thread = start_http_server(
        settings.metrics_port, settings.host, registry=registry
    )
    rest, grpc_server = await _start_listeners(settings, plane, metrics, mirroring)
    following: asyncio.Task[None] | None = None
    try:
        latency_ms = await _warm_up(model, settings, stack, stop)
        if latency_ms is not None:
            _place_calls(model, stack, plane, settings, latency_ms)
            # After warm-up: a replay running beside it would skew the timings it decides by.
            following = loop.create_task(mirroring.follow(), name="mirror-plan")
            plane.serving = plane.ready = True
            _log_ready(settings, threads, latency_ms, stack)
        await stop.wait()
    finally:
        if following is not None:  # first: the drain waits for clients, never for mirrors
            following.cancel()
        mirroring.close()
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
        registry.register(DriftCollector(monitor, settings.model_name, settings.revision))
        predictor = DriftObservingPredictor(predictor, monitor, settings.drift_sample_every)
    return _PredictorStack(predictor, direct, batcher)


async def _start_listeners(
    settings: ServeSettings, plane: DataPlane, metrics: RequestMetrics, mirroring: MirrorControl
) -> tuple[_Listener, grpc.aio.Server | None]:
    """Start REST and (when enabled) gRPC, each attached to the data plane, which needs their
    request counts to tell whether a request is alone."""
    app = RestApp(plane, metrics, settings.max_request_bytes, mirroring.status)
    rest: _Listener = (
        _UvicornListener(app, settings)
        if settings.http_server == "uvicorn"
        else HttpServer(app, http_limits(settings))
    )
    plane.attach(rest)
    await rest.start(settings.host, settings.rest_port)
    if not settings.grpc_enabled:
        return rest, None
    servicer = InferenceServicer(plane, metrics)
    plane.attach(servicer)
    grpc_server = create_server(
        servicer,
        GrpcLimits(
            settings.max_request_bytes,
            settings.grpc_max_concurrent_rpcs,
            settings.max_header_bytes,
            settings.header_timeout_s,
        ),
    )
    grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await grpc_server.start()
    return rest, grpc_server


def http_limits(settings: ServeSettings) -> HttpLimits:
    return HttpLimits(
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keep_alive_s=settings.keep_alive_timeout_s,
        max_connections=settings.max_connections,
        max_pipelined=settings.max_pipelined_requests,
        max_inflight_bytes=settings.max_inflight_bytes,
    )


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
    latency_ms: float = await warm
    tiny = settings.inline_threshold_ms
    if await loop.run_in_executor(None, unspin_if_tiny, model, latency_ms, tiny):
        latency_ms = await loop.run_in_executor(None, model.warm_up, settings.warmup_runs, sizes)
        log.info("warm-up median %.3f ms: a tiny model, onnxruntime's spinning turned off",
                 latency_ms)  # fmt: skip
    return latency_ms


def _place_calls(
    model: OnnxModel,
    stack: _PredictorStack,
    plane: DataPlane,
    settings: ServeSettings,
    latency_ms: float,
) -> None:
    """Decide from the warm-up latency which calls may run on the event loop thread, and how
    large they may be (:class:`LoopBudget`: the threshold, in expected time)."""
    if stack.direct is not None and latency_ms < settings.inline_threshold_ms:
        stack.direct.inline = LoopBudget(model, latency_ms, settings.inline_threshold_ms)
    if latency_ms < settings.inline_alone_threshold_ms:
        budget = LoopBudget(model, latency_ms, settings.inline_alone_threshold_ms)
        target = stack.direct or stack.batcher
        if target is not None:
            target.alone, target.alone_budget = plane.alone, budget


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
    grpc_server: grpc.aio.Server | None,
) -> None:
    """SIGTERM: tell clients to go at once, serve what comes meanwhile, and be done by the
    deadline (the caller's remaining teardown is what the operator's margin is for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.drain_deadline_s

    def left() -> float:
        return max(deadline - loop.time(), 0.0)

    plane.ready = False
    rest.drain()  # every further response carries Connection: close
    grpc_stopped = (
        loop.create_task(grpc_server.stop(left()), name="grpc-stop")  # GOAWAY now
        if grpc_server is not None
        else None
    )
    log.info("shutting down: readiness false, draining for up to %.1f s",
             settings.drain_deadline_s)  # fmt: skip
    delay = min(settings.drain_delay_s, left())
    if delay > 0:
        await asyncio.sleep(delay)  # load balancers need time to notice readiness is false
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(plane.wait_idle(), left())
    if grpc_stopped is not None:
        await grpc_stopped
    await rest.stop(left())
    log.info("stopped: %d request(s) still in flight", plane.in_flight)
