"""Mirroring to a canary: send a sampled share of served requests to it, compare its answers.

The data plane offers the mirror each request it sampled, already decoded, with the stable's
own output, once the answer is on its way to the client (:meth:`Mirror.served`, scheduled
with ``call_soon``). That call only puts the request on a bounded queue (or drops it, counted,
when the queue or its byte budget is full): it never waits. Worker threads send the queued
requests to the canary over REST (OIP v2 with the binary tensor extension, one keep-alive
connection each, marked with the ``modelship-mirror`` header so the canary counts them apart
from its clients), compare the chosen output with :mod:`modelship_runtime.agreement` (the
builder's accuracy-gate arithmetic) and record per revision pair and source (``live`` here,
``replay`` for the golden set, :mod:`.replay`); the canary's answers never reach a client, and
its errors and timeouts are only counted. Mismatching examples (cosine below
``mirror_example_cosine`` or top-1 differing) go to a small ring buffer, served read-only at
``GET /v2/mirror``. Beside the per-request figures, the newest compared output values of both
sides are kept (bounded), so that a scrape can tell whether the canary's outputs are
*distributed* like the stable's (:class:`OutputDriftCollector`). Which pair a pod mirrors, if
any, is the operator's plan file (:mod:`.mirror_plan`): a Mirror serves one plan and is
closed when the plan changes.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelship.api.serving import MIRROR_HEADER, MirrorPlan
from modelship_runtime.agreement import cosine, max_abs_error, top1_matches
from modelship_runtime.serve.metrics import population_stability_index
from modelship_runtime.serve.model import Feeds, TensorInfo
from modelship_runtime.serve.settings import ServeSettings
from modelship_runtime.serve.tensors import NUMPY_DTYPES, datatype_of, to_bytes, to_json_data

log = logging.getLogger("modelship_runtime.serve.mirror")

Array = np.ndarray[Any, Any]
OUTCOMES = ("compared", "dropped", "failed")
LIVE, REPLAY = "live", "replay"
SOURCES = (LIVE, REPLAY)
"""Where a mirrored request came from: a client's (sampled) or the golden set's."""
COSINE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
"""Fine near 1, where a faithful canary lives; the +Inf bucket catches rounding above 1."""
ABS_ERROR_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0, 10.0)
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
SERIES_LABELS = ("model", "revision", "canary", "source")
SIDES = ("stable", "canary")
OUTPUT_DRIFT_BINS = 10
OUTPUT_DRIFT_MIN_VALUES = 100
"""Values per side below which a pair and source has no output drift series: a PSI over a
handful of values is noise, and an absent series reads as "no data", where 0 would read as
"same distribution"."""
_FAILURE_LOG_EVERY_S = 60.0


class MirrorFailed(Exception):
    """The canary did not give a comparable answer (unreachable, timeout, error, bad reply)."""


class MirrorUnreachable(MirrorFailed):
    """The request did not get an answer at all (connection refused or reset, timeout)."""


class PlanRejected(Exception):
    """This pod cannot follow the mirroring plan; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """What a mirroring pod follows: the operator's plan, with the server's knobs filled in."""

    url: str
    model_name: str
    revision: str
    canary: str
    output: str
    share: float
    queue: int = 64
    keep_inputs: bool = False
    timeout_s: float = 2.0
    connections: int = 2
    max_queue_bytes: int = 64 * 1024 * 1024
    example_cosine: float = 0.99
    examples: int = 8
    replay_interval_s: float | None = None
    replay_samples: int = 32
    output_window: int = 50_000
    """Compared output values kept per side for the output drift (the newest)."""

    @classmethod
    def from_plan(
        cls, plan: MirrorPlan, settings: ServeSettings, outputs: Sequence[TensorInfo]
    ) -> MirrorConfig:
        """Raises :class:`PlanRejected` when the output to compare is not a float output of
        this model: a wrong plan must not stop the pod serving its clients."""
        output = chosen_output(outputs, plan.output)
        if output is None:
            floats = [o.name for o in outputs if o.datatype in FLOAT_DATATYPES] or "none"
            what = (
                f"output '{plan.output}' is not a float output of the model"
                if plan.output
                else "the model has no float output to compare"
            )
            raise PlanRejected(f"{what}; the model's float outputs are {floats}")
        return cls(
            url=plan.url.rstrip("/"),
            model_name=settings.model_name,
            revision=plan.stable,
            canary=plan.canary,
            output=output,
            share=plan.share,
            queue=plan.queue,
            keep_inputs=plan.keep_inputs,
            timeout_s=settings.mirror_timeout_s,
            connections=settings.mirror_connections,
            max_queue_bytes=settings.mirror_max_queue_bytes,
            example_cosine=settings.mirror_example_cosine,
            examples=settings.mirror_examples,
            replay_interval_s=plan.replay_interval_s,
            replay_samples=plan.replay_samples,
        )


def chosen_output(outputs: Sequence[TensorInfo], name: str | None) -> str | None:
    """The named output if it is a float tensor, else (no name) the first float output."""
    for info in outputs:
        if info.datatype in FLOAT_DATATYPES and (not name or info.name == name):
            return info.name
    return None


# --- what is compared -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agreement:
    cosine: float
    max_abs_error: float
    top1_agree: int
    top1_rows: int
    """0 when the output has no class axis (last axis of one element or a scalar)."""


def compare(stable: Array, canary: Array) -> Agreement:
    """The stable's and the canary's output for one request; shapes must agree."""
    if stable.shape != canary.shape:
        raise MirrorFailed(
            f"the canary answered shape {list(canary.shape)}, the stable {list(stable.shape)}"
        )
    a = np.asarray(stable, np.float64).reshape(-1)
    b = np.asarray(canary, np.float64).reshape(-1)
    agree = rows = 0
    if stable.ndim and stable.shape[-1] > 1:
        agree, rows = top1_matches(stable, canary)
    return Agreement(cosine(a, b), max_abs_error(a, b), agree, rows)


def label_hits(label: int, stable: Array, canary: Array) -> tuple[bool, bool] | None:
    """Whether the stable's and the canary's arg-max over the class axis is ``label``, for the
    output of one request of one row ([C] or [1, C]); None when it has no class axis (a last
    axis of one element, a scalar) or more than one row, where one label does not apply."""
    if not stable.ndim or stable.shape[-1] < 2 or stable.size != stable.shape[-1]:
        return None
    return int(np.argmax(stable)) == label, int(np.argmax(canary)) == label


def input_sha256(feeds: Mapping[str, Array]) -> str:
    """sha256 over the inputs in name order, each as name, datatype, shape (comma-separated)
    and raw little-endian bytes, NUL-separated: equal requests hash equal, whatever the wire
    format (JSON or binary, REST or gRPC) they came in."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        array = feeds[name]
        shape = ",".join(str(d) for d in array.shape)
        digest.update(f"{name}\0{datatype_of(array)}\0{shape}\0".encode())
        digest.update(to_bytes(np.ascontiguousarray(array)))
        digest.update(b"\0")
    return digest.hexdigest()


# --- the wire ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorJob:
    request_id: str
    feeds: Feeds
    stable: Array
    size: int
    """Input bytes, what the job holds of the queue's byte budget (0: not queued)."""
    source: str = LIVE
    label: int | None = None
    """The true class of a labelled golden row (replay only)."""


def encode_request(job: MirrorJob, output: str) -> tuple[bytes, int]:
    """An OIP v2 infer body with binary inputs asking for ``output`` in binary; and the length
    of its JSON header (``Inference-Header-Content-Length``)."""
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in job.feeds.items():
        blob = to_bytes(np.ascontiguousarray(array))
        blobs.append(blob)
        inputs.append(
            {
                "name": name,
                "datatype": datatype_of(array),
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    header = orjson.dumps(
        {
            "id": job.request_id,
            "inputs": inputs,
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    return b"".join([header, *blobs]), len(header)


def decode_output(body: bytes, header_length: int | None, output: str) -> Array:
    """The named output of an OIP v2 infer answer (binary extension or JSON data)."""
    try:
        header = orjson.loads(body[: header_length if header_length is not None else len(body)])
        offset = header_length or len(body)
        for entry in header["outputs"]:
            size = (entry.get("parameters") or {}).get("binary_data_size")
            dtype = NUMPY_DTYPES[entry["datatype"]]
            shape = [int(d) for d in entry["shape"]]
            if entry["name"] == output:
                if size is None:
                    return np.asarray(entry["data"], dtype=dtype).reshape(shape)
                count = int(size) // dtype.itemsize
                return np.frombuffer(body, dtype, count, offset).reshape(shape)
            offset += int(size or 0)
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise MirrorFailed(f"the canary's answer is not a readable infer response: {exc}") from exc
    raise MirrorFailed(f"the canary's answer has no output '{output}'")


Sender = Callable[[MirrorJob], Array]
"""Sends one job to the canary and returns its output (raises on any failure)."""


class HttpSender:
    """POSTs to the canary's REST endpoint, one keep-alive connection per thread (each worker,
    and the replay's), each request marked as mirrored (:data:`MIRROR_HEADER`)."""

    def __init__(self, config: MirrorConfig) -> None:
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._path = f"{parts.path.rstrip('/')}/v2/models/{config.model_name}/infer"
        self._output = config.output
        self._timeout = config.timeout_s
        self._local = threading.local()

    def __call__(self, job: MirrorJob) -> Array:
        body, header_length = encode_request(job, self._output)
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._local.connection = kind(
                self._host, self._port, timeout=self._timeout
            )
        try:
            connection.request(
                "POST",
                self._path,
                body,
                {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(header_length),
                    MIRROR_HEADER: job.source,
                },
            )
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            raise MirrorUnreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise MirrorFailed(f"the canary answered {response.status}: {answer[:200]!r}")
        length = response.getheader("Inference-Header-Content-Length")
        return decode_output(answer, int(length) if length else None, self._output)


# --- metrics and examples --------------------------------------------------------------------


class MirrorMetrics:
    """The mirroring metric families of one registry, registered once: a pod follows a new
    revision pair each time the plan changes, and a registry refuses a second family of one
    name. Each pair and source gets its children (:meth:`series`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        names = list(SERIES_LABELS)
        self.requests = Counter(
            "modelship_mirror_requests",
            "Requests mirrored to the canary, by source (live: sampled client requests, "
            "replay: the golden set) and outcome: compared (the canary answered and the "
            "outputs were compared), dropped (the mirror queue was full, or the pod was "
            "shutting down), failed (the canary did not answer in time, answered an error, or "
            "an answer that cannot be compared).",
            [*names, "outcome"],
            registry=registry,
        )
        self.cosine = Histogram(
            "modelship_mirror_cosine",
            "Cosine similarity of the canary's output to the stable's, per compared request.",
            names,
            buckets=COSINE_BUCKETS,
            registry=registry,
        )
        self.max_abs_error = Histogram(
            "modelship_mirror_max_abs_error",
            "Largest absolute difference between the canary's and the stable's output, per "
            "compared request.",
            names,
            buckets=ABS_ERROR_BUCKETS,
            registry=registry,
        )
        self.top1_agreements = Counter(
            "modelship_mirror_top1_agreements",
            "Compared rows whose arg-max (over the last axis) is the same for both revisions.",
            names,
            registry=registry,
        )
        self.top1_rows = Counter(
            "modelship_mirror_top1_rows",
            "Compared rows with a class axis: the denominator of the top-1 agreement.",
            names,
            registry=registry,
        )
        self.labelled_rows = Counter(
            "modelship_mirror_labelled_rows",
            "Compared replayed rows with a true class (the golden set's labels) and a class "
            "axis: the denominator of each revision's accuracy.",
            names,
            registry=registry,
        )
        self.correct_rows = Counter(
            "modelship_mirror_correct_rows",
            "Labelled replayed rows whose arg-max (over the last axis) is the true class, by "
            "side (stable or canary).",
            [*names, "side"],
            registry=registry,
        )
        self.output_drift = OutputDriftCollector()
        registry.register(self.output_drift)

    def series(self, config: MirrorConfig, source: str) -> MirrorSeries:
        labels = (config.model_name, config.revision, config.canary, source)
        return MirrorSeries(self, labels, config.output_window)


class MirrorSeries:
    """The children of one revision pair and source, and the window of its compared outputs
    (exported from creation until :meth:`close`)."""

    def __init__(self, metrics: MirrorMetrics, labels: tuple[str, ...], window: int) -> None:
        self.outcomes = {o: metrics.requests.labels(*labels, o) for o in OUTCOMES}
        self.cosine = metrics.cosine.labels(*labels)
        self.max_abs_error = metrics.max_abs_error.labels(*labels)
        self.top1_agreements = metrics.top1_agreements.labels(*labels)
        self.top1_rows = metrics.top1_rows.labels(*labels)
        self.outputs = OutputWindow(window)
        self._metrics = metrics
        self._labels = labels
        self._drift = metrics.output_drift
        self._drift.track(labels, self.outputs)
        self._labelled: LabelledRows | None = None

    def count_labels(self) -> None:
        """Count labelled rows from now on. Only then do the pair's labelled series exist: a
        golden set without labels gets none, where a zero would read as "all wrong"."""
        self._labelled = LabelledRows(self._metrics, self._labels)

    def record_label(self, label: int, stable: Array, canary: Array) -> None:
        """Whether each side got a labelled row's class; nothing unless labels are counted
        and the output has one row of classes."""
        hits = label_hits(label, stable, canary)
        if self._labelled is not None and hits is not None:
            self._labelled.add(*hits)

    def accuracy(self) -> dict[str, float] | None:
        """Each side's share of labelled rows right so far, and how many; None before any."""
        return None if self._labelled is None else self._labelled.accuracy()

    def record(self, agreement: Agreement) -> None:
        """The figures of one compared request (its outcome is counted by the caller)."""
        self.cosine.observe(agreement.cosine)
        self.max_abs_error.observe(agreement.max_abs_error)
        if agreement.top1_rows:
            self.top1_agreements.inc(agreement.top1_agree)
            self.top1_rows.inc(agreement.top1_rows)

    def close(self) -> None:
        """Stop exporting this pair's output drift (see :class:`OutputDriftCollector`)."""
        self._drift.forget(self._labels, self.outputs)


class LabelledRows:
    """The labelled rows of one pair and source: the counters' children, and this mirror's own
    tally for ``GET /v2/mirror`` (the children may carry a previous plan's counts of the same
    pair)."""

    def __init__(self, metrics: MirrorMetrics, labels: tuple[str, ...]) -> None:
        self.rows_counter = metrics.labelled_rows.labels(*labels)
        self.correct_counters = {side: metrics.correct_rows.labels(*labels, side) for side in SIDES}
        self._rows = 0
        self._correct = dict.fromkeys(SIDES, 0)
        self._lock = threading.Lock()

    def add(self, stable: bool, canary: bool) -> None:
        with self._lock:
            self._rows += 1
            for side, hit in zip(SIDES, (stable, canary), strict=True):
                self._correct[side] += hit
        self.rows_counter.inc()
        for side, hit in zip(SIDES, (stable, canary), strict=True):
            if hit:
                self.correct_counters[side].inc()

    def accuracy(self) -> dict[str, float] | None:
        with self._lock:
            if not self._rows:
                return None
            return {**{s: self._correct[s] / self._rows for s in SIDES}, "rows": self._rows}


# --- output drift ----------------------------------------------------------------------------


def output_psi(stable: Array, canary: Array, bins: int = OUTPUT_DRIFT_BINS) -> float:
    """Population stability index of the canary's values against the stable's (flat arrays).

    ``bins`` bins cut at the stable's quantiles (its deciles by default), the outermost open to
    ±inf, so that each holds about as many of the stable's values whatever the output's range.
    Equal cuts (a constant or few-valued stable output) merge, leaving fewer bins: one cut,
    two bins, for a constant. The cuts come from the stable's finite values only, and
    non-finite values are binned like the others (NaN with the largest), so a canary answering
    NaN shows as a shift instead of making the arithmetic NaN.
    """
    finite = stable[np.isfinite(stable)]
    cuts = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.unique(np.quantile(finite, cuts)) if finite.size else finite
    count = edges.size + 1
    expected = np.bincount(np.searchsorted(edges, stable, side="right"), minlength=count)
    observed = np.bincount(np.searchsorted(edges, canary, side="right"), minlength=count)
    return population_stability_index(expected, observed)


class OutputWindow:
    """The newest compared output values of both sides of one pair and source, ``size`` per
    side at most, in two preallocated float64 ring buffers.

    A worker's append is a cast-and-copy of the two outputs into that memory under a brief
    lock, cheap beside the comparison itself; sorting and binning wait for a scrape
    (:class:`OutputDriftCollector`). Copying, not keeping references, because the stable's
    output may be a slice of a whole batch's, which a reference would keep alive. Both sides
    always hold as many values: the compared outputs have one shape.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._stable = np.empty(size, np.float64)
        self._canary = np.empty(size, np.float64)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, stable: Array, canary: Array) -> None:
        a, b = stable.reshape(-1), canary.reshape(-1)
        if a.size > self.size:
            a, b = a[-self.size :], b[-self.size :]
        n = a.size
        with self._lock:
            start = self._next
            first = min(n, self.size - start)
            self._stable[start : start + first] = a[:first]
            self._canary[start : start + first] = b[:first]
            self._stable[: n - first] = a[first:]
            self._canary[: n - first] = b[first:]
            self._next = (start + n) % self.size
            self._filled = min(self._filled + n, self.size)

    def values(self) -> tuple[Array, Array]:
        """Copies of what each side holds now, the stable's and the canary's (in ring order,
        not arrival order: a distribution has none)."""
        with self._lock:
            return self._stable[: self._filled].copy(), self._canary[: self._filled].copy()


class OutputDriftCollector(Collector):
    """``modelship_mirror_output_psi`` and ``modelship_mirror_output_values`` of the windows
    tracked now, computed at scrape time (like the input drift, ``metrics.DriftCollector``).

    One per registry, owned by :class:`MirrorMetrics`. A mirror's windows are tracked from its
    creation and forgotten when it closes: a previous plan's pair drops out of the scrape
    rather than show a gauge that no longer moves and would read as current (its counters and
    histograms keep their children, being cumulative), and a new plan's pair, even the same
    pair again, starts from an empty window.
    """

    def __init__(self) -> None:
        self._windows: dict[tuple[str, ...], OutputWindow] = {}
        self._lock = threading.Lock()

    def track(self, labels: tuple[str, ...], window: OutputWindow) -> None:
        with self._lock:
            self._windows[labels] = window

    def forget(self, labels: tuple[str, ...], window: OutputWindow) -> None:
        """Stop exporting ``window``; a newer window under the same labels stays."""
        with self._lock:
            if self._windows.get(labels) is window:
                del self._windows[labels]

    def describe(self) -> Iterable[Metric]:
        """The families without samples: the registry learns their names, and refuses a
        second collector of them as it refuses a second counter of one name."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        psi, values = self._families()
        with self._lock:
            tracked = list(self._windows.items())
        for labels, window in tracked:
            stable, canary = window.values()
            if stable.size >= OUTPUT_DRIFT_MIN_VALUES:
                psi.add_metric(labels, output_psi(stable, canary))
                values.add_metric(labels, stable.size)
        return [psi, values]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "modelship_mirror_output_psi",
                "Population stability index of the canary's values of the compared output "
                "against the stable's, over the newest compared requests (10 bins cut at the "
                "stable's deciles): 0 same distribution, above 0.25 usually a major shift. "
                f"Absent below {OUTPUT_DRIFT_MIN_VALUES} values per side.",
                labels=SERIES_LABELS,
            ),
            GaugeMetricFamily(
                "modelship_mirror_output_values",
                "Values per side that modelship_mirror_output_psi rests on now.",
                labels=SERIES_LABELS,
            ),
        )


class Mismatches:
    """The newest mismatching examples, a bounded ring buffer read by ``GET /v2/mirror``."""

    def __init__(self, size: int) -> None:
        self._examples: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, example: dict[str, Any]) -> None:
        with self._lock:
            self._examples.append(example)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._examples)


def _json_inputs(feeds: Feeds) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
            "data": np.asarray(to_json_data(array)).tolist(),
        }
        for name, array in feeds.items()
    ]


# --- the mirror ------------------------------------------------------------------------------


class Mirror:
    """Bounded, never-blocking mirroring of served requests to one canary (see the module);
    :meth:`compare_with_canary` is also what the replay sends its golden rows through."""

    def __init__(
        self,
        config: MirrorConfig,
        metrics: MirrorMetrics,
        send: Sender | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.output = config.output
        # Replay series only where replay runs: a zero would read as "replayed, nothing seen".
        sources = SOURCES if config.replay_interval_s else (LIVE,)
        self.series = {source: metrics.series(config, source) for source in sources}
        self.mismatches = Mismatches(config.examples)
        self._send: Sender = send or HttpSender(config)
        self._random = (rng or random.Random()).random
        self._queue: queue.Queue[MirrorJob | None] = queue.Queue(config.queue)
        self._queued_bytes = 0
        self._counts = {source: dict.fromkeys(OUTCOMES, 0) for source in SOURCES}
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._last_failure_log = -_FAILURE_LOG_EVERY_S

    @property
    def closed(self) -> bool:
        return self._closed

    def sample(self) -> bool:
        """Whether to mirror the request about to be served (an independent draw each)."""
        return not self._closed and self._random() < self.config.share

    def served(self, request_id: str | None, feeds: Feeds, stable: Array) -> None:
        """Queue a served request for mirroring, or drop it (counted) when the queue or its
        byte budget is full: never waits."""
        if self._closed:
            return
        size = sum(array.nbytes for array in feeds.values())
        with self._lock:
            fits = self._queued_bytes + size <= self.config.max_queue_bytes
            if fits:
                self._queued_bytes += size
        job = MirrorJob(request_id or uuid.uuid4().hex, feeds, stable, size)
        if fits:
            try:
                self._queue.put_nowait(job)
                return
            except queue.Full:
                self._release(size)
        self._count(LIVE, "dropped")

    def start(self) -> None:
        for index in range(self.config.connections):
            thread = threading.Thread(target=self._work, name=f"mirror-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop at once: queued requests are dropped (counted); a request being sent is not
        waited for (daemon threads; its answer is ignored). The pair's output drift is no
        longer exported."""
        self._closed = True
        for series in self.series.values():
            series.close()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._release(job.size)
                self._count(job.source, "dropped")
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:  # a request offered meanwhile; workers stop at the flag anyway
                break

    def counts(self, source: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counts[source])

    def status(self) -> dict[str, Any]:
        """``GET /v2/mirror``: the revision pair, live counts and the newest mismatching
        examples (of either source)."""
        config = self.config
        return {
            "enabled": not self._closed,
            "model": config.model_name,
            "revision": config.revision,
            "canary": config.canary,
            "url": config.url,
            "share": config.share,
            "output": config.output,
            "example_cosine": config.example_cosine,
            "requests": self.counts(LIVE),
            "mismatches": self.mismatches.snapshot(),
        }

    def compare_with_canary(self, job: MirrorJob, retries: int = 0) -> None:
        """Send one job to the canary now, on the calling thread, compare and record; never
        raises. A request that got no answer at all is sent again up to ``retries`` times on a
        new connection (inference is idempotent; replay uses one, so a connection the canary's
        side dropped, or one slow moment, is not counted against it). Nothing is recorded once
        the mirror is closed (a newer plan's figures must not mix with this one's)."""
        try:
            for attempt in range(retries + 1):
                try:
                    canary = self._send(job)
                    break
                except MirrorUnreachable:
                    if attempt == retries or self._closed:
                        raise
            agreement = compare(job.stable, canary)
        except MirrorFailed as exc:
            self.failed(job.source, str(exc))
            return
        except Exception as exc:  # a bug here must not stop mirroring, nor the pod
            log.exception("mirroring a request failed")
            self.failed(job.source, f"{type(exc).__name__}: {exc}")
            return
        if self._closed:
            return
        series = self.series[job.source]
        # Before the count: whoever sees a request counted as compared finds its values kept.
        series.outputs.add(job.stable, canary)
        self._count(job.source, "compared")
        series.record(agreement)
        if job.label is not None:
            series.record_label(job.label, job.stable, canary)
        if agreement.cosine < self.config.example_cosine or (
            agreement.top1_agree < agreement.top1_rows
        ):
            self.mismatches.add(self._example(job, agreement))

    def failed(self, source: str, why: str) -> None:
        """Count a request of ``source`` that could not be compared, and log why (at most once
        a minute)."""
        if self._closed:
            return
        self._count(source, "failed")
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_EVERY_S:
            self._last_failure_log = now
            log.warning(
                "mirroring (%s) to %s failed (logged once a minute; counted in "
                'modelship_mirror_requests_total{outcome="failed"}): %s',
                source,
                self.config.url,
                why,
            )

    def _count(self, source: str, outcome: str) -> None:
        with self._lock:
            self._counts[source][outcome] += 1
        self.series[source].outcomes[outcome].inc()

    def _release(self, size: int) -> None:
        with self._lock:
            self._queued_bytes -= size

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._closed:
                return
            self._release(job.size)
            self.compare_with_canary(job)

    def _example(self, job: MirrorJob, agreement: Agreement) -> dict[str, Any]:
        example: dict[str, Any] = {
            "id": job.request_id,
            "source": job.source,
            "time": time.time(),
            "output": self.output,
            "cosine": agreement.cosine,
            "max_abs_error": agreement.max_abs_error,
            "top1_agreement": agreement.top1_agree / agreement.top1_rows
            if agreement.top1_rows
            else None,
            "input_sha256": input_sha256(job.feeds),
        }
        if self.config.keep_inputs:
            example["inputs"] = _json_inputs(job.feeds)
        return example
