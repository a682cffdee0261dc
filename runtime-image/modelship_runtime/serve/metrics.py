"""Prometheus metrics, served on their own port. Label sets are fixed and bounded.

Every per-model series carries ``model`` and ``revision`` (the revision the pod belongs to, empty
when the pod was not told), so a Prometheus that scrapes both revisions of a canary tells them
apart. The operator's canary analysis reads
``modelship_requests_total{model,revision,protocol,code}`` (success rate: non-5xx over all) and
``modelship_request_duration_seconds{model,revision,protocol}`` (p99), from each pod or from
Prometheus. ``code`` is the HTTP status for both protocols (gRPC statuses are mapped: OK=200,
INVALID_ARGUMENT=400, ...), and ``model`` is the served model's name or "_unknown" for requests
naming another model, so a client cannot create series at will. Requests another pod mirrored
here (header ``modelship-mirror``) are counted only in ``modelship_mirror_served_total``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelship.api.artifact import TensorStats
from modelship_runtime.serve.model import Feeds, Outputs, Predictor

UNKNOWN_MODEL = "_unknown"
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RequestMetrics:
    """Request counters, latency, in-flight and batching figures for one served model."""

    def __init__(
        self, registry: CollectorRegistry, model_name: str, revision: str | None = None
    ) -> None:
        self.model_name = model_name
        self.revision = revision or ""
        self.requests = Counter(
            "modelship_requests",
            "Inference requests by model, revision, protocol (rest|grpc) and code (HTTP "
            "status, also for gRPC).",
            ["model", "revision", "protocol", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "modelship_request_duration_seconds",
            "Inference request latency from receipt to response, in seconds.",
            ["model", "revision", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "modelship_requests_in_flight",
            "Inference requests being processed now.",
            ["model", "revision"],
            registry=registry,
        ).labels(model_name, self.revision)
        self.queue_seconds = Histogram(
            "modelship_batch_queue_seconds",
            "Time a request waited in the dynamic-batching queue, in seconds.",
            ["model", "revision"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(model_name, self.revision)
        self.batch_size = Histogram(
            "modelship_batch_size",
            "Items per model call made by the dynamic batcher.",
            ["model", "revision"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        ).labels(model_name, self.revision)
        self.mirrored = Counter(
            "modelship_mirror_served",
            "Mirrored requests answered, by source (live|replay) and code (HTTP status): "
            "requests a mirroring pod marked with the modelship-mirror header, counted here "
            "instead of in the client request metrics.",
            ["model", "revision", "source", "code"],
            registry=registry,
        )
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        self._mirrored: dict[tuple[str, str, int], Any] = {}

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, protocol: str, model: str, code: int, started: float) -> None:
        self.in_flight.dec()
        if model != self.model_name:
            model = UNKNOWN_MODEL
        key = (model, protocol, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(
                model, self.revision, protocol, str(code)
            )
        counter.inc()
        histogram = self._histograms.get((model, protocol))
        if histogram is None:
            histogram = self._histograms[(model, protocol)] = self.duration.labels(
                model, self.revision, protocol
            )
        histogram.observe(time.perf_counter() - started)

    def mirror_served(self, model: str, source: str, code: int) -> None:
        """A mirrored request was answered: counted apart, so the figures canary analysis
        reads are the clients' alone."""
        if model != self.model_name:
            model = UNKNOWN_MODEL
        key = (model, source, code)
        counter = self._mirrored.get(key)
        if counter is None:
            counter = self._mirrored[key] = self.mirrored.labels(
                model, self.revision, source, str(code)
            )
        counter.inc()

    def observe_batch(self, size: int, queue_seconds: Sequence[float]) -> None:
        self.batch_size.observe(size)
        for seconds in queue_seconds:
            self.queue_seconds.observe(seconds)


def register_server_info(
    registry: CollectorRegistry, model_name: str, revision: str | None, digest: str | None
) -> None:
    """``modelship_server_info{model,revision,digest} 1``: which revision a scraped pod runs."""
    Gauge(
        "modelship_server_info",
        "Always 1; its labels say which model, revision and artifact digest this pod serves "
        "(empty when the pod was not told).",
        ["model", "revision", "digest"],
        registry=registry,
    ).labels(model_name, revision or "", digest or "").set(1)


class _Window:
    __slots__ = ("count", "histogram", "sum", "sum_sq")

    def __init__(self, bins: int) -> None:
        self.count = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.histogram = np.zeros(bins, dtype=np.int64)


class DriftMonitor:
    """Compares live input values with the calibration statistics from the manifest.

    Score per input: the population stability index over the calibration histogram when the
    manifest has one (0 = same distribution, > 0.25 is usually called a major shift), else the
    shift of the mean in calibration standard deviations. Computed over the last one or two
    windows of ``window`` values, so it follows recent traffic.
    """

    def __init__(self, baseline: Mapping[str, TensorStats], window: int = 100_000) -> None:
        self.baseline = dict(baseline)
        self.window = window
        self._edges = {
            name: np.asarray(stats.histogram_edges[1:-1], dtype=np.float64)
            for name, stats in self.baseline.items()
            if len(stats.histogram_counts) >= 2
            and len(stats.histogram_edges) == len(stats.histogram_counts) + 1
        }
        self._current = {name: self._new(name) for name in self.baseline}
        self._previous: dict[str, _Window | None] = dict.fromkeys(self.baseline)
        self.flush_values = 65_536
        self._pending: list[tuple[str, np.ndarray[Any, Any]]] = []
        self._pending_values = 0
        self._lock = threading.Lock()  # scrapes flush from the metrics server's thread

    def _new(self, name: str) -> _Window:
        edges = self._edges.get(name)
        return _Window(0 if edges is None else len(edges) + 1)

    def observe(self, feeds: Feeds) -> None:
        """Queue the inputs; statistics are computed in bulk (see :meth:`flush`).

        Per-request numpy work costs several microseconds per call, as much as a tiny model's
        whole inference; appending a reference costs nothing and one vectorised pass over many
        requests costs little more than over one.
        """
        for name in self._current:
            array = feeds.get(name)
            if array is not None and array.dtype.kind in "biuf" and array.size:
                self._pending.append((name, array))
                self._pending_values += array.size
        if self._pending_values >= self.flush_values or len(self._pending) >= 256:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending, self._pending_values = self._pending, [], 0
            by_name: dict[str, list[np.ndarray[Any, Any]]] = {}
            for name, array in pending:
                by_name.setdefault(name, []).append(array.reshape(-1))
            for name, arrays in by_name.items():
                self._add(name, np.concatenate(arrays).astype(np.float64, copy=False))

    def _add(self, name: str, values: np.ndarray[Any, Any]) -> None:
        window = self._current[name]
        window.count += values.size
        window.sum += float(values.sum())
        window.sum_sq += float(np.square(values).sum())  # np.dot would wake BLAS threads
        edges = self._edges.get(name)
        if edges is not None:
            window.histogram += np.bincount(
                np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1
            )
        if window.count >= self.window:
            self._previous[name] = window
            self._current[name] = self._new(name)

    def scores(self) -> dict[str, float]:
        self.flush()
        result: dict[str, float] = {}
        for name, stats in self.baseline.items():
            windows = [w for w in (self._previous[name], self._current[name]) if w and w.count]
            if not windows:
                continue
            count = sum(w.count for w in windows)
            if name in self._edges:
                observed = np.sum([w.histogram for w in windows], axis=0)
                result[name] = population_stability_index(
                    np.asarray(stats.histogram_counts, np.float64), observed
                )
            else:
                mean = sum(w.sum for w in windows) / count
                result[name] = abs(mean - stats.mean) / (stats.std if stats.std > 0 else 1.0)
        return result


def population_stability_index(
    expected: np.ndarray[Any, Any], observed: np.ndarray[Any, Any]
) -> float:
    """PSI of ``observed`` against ``expected``, two histograms (counts) over the same bins:
    sum((o - e) * ln(o / e)) over the bin shares. Shares are floored at 1e-4 so that an empty
    bin on one side gives a large but finite term instead of an infinite one."""
    eps = 1e-4
    p = np.maximum(expected / max(expected.sum(), 1), eps)
    q = np.maximum(observed / max(observed.sum(), 1), eps)
    value = float(np.sum((q - p) * np.log(q / p)))
    return value if math.isfinite(value) else 0.0


class DriftCollector(Collector):
    """Exposes ``modelship_input_drift_score{model,revision,input}``, computed at scrape time."""

    def __init__(self, monitor: DriftMonitor, model_name: str, revision: str | None = None) -> None:
        self.monitor = monitor
        self.model_name = model_name
        self.revision = revision or ""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "modelship_input_drift_score",
            "Input drift against the calibration statistics: PSI over the calibration "
            "histogram, or the mean shift in calibration standard deviations.",
            labels=["model", "revision", "input"],
        )
        for name, score in self.monitor.scores().items():
            family.add_metric([self.model_name, self.revision, name], score)
        yield family


class DriftObservingPredictor:
    """Predictor wrapper feeding every n-th request's inputs to a :class:`DriftMonitor`."""

    def __init__(self, inner: Predictor, monitor: DriftMonitor, every: int = 1) -> None:
        self.inner = inner
        self.monitor = monitor
        self.every = every
        self._seen = 0

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs:
        self._seen += 1
        if self._seen >= self.every:
            self._seen = 0
            self.monitor.observe(feeds)
        return await self.inner.predict(feeds, output_names)

    async def close(self) -> None:
        await self.inner.close()
