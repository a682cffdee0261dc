"""Mirroring to a canary: send a sampled share of served requests to it, compare its answers.

The data plane offers the mirror each request it sampled, already decoded, with the stable's
own output, once the answer is on its way to the client (:meth:`Mirror.served`, scheduled
with ``call_soon``). That call only puts the request on a bounded queue (or drops it, counted,
when the queue or its byte budget is full): it never waits. Worker threads send the queued
requests to the canary over REST (OIP v2 with the binary tensor extension, one keep-alive
connection each), compare the chosen output with :mod:`modelship_runtime.agreement` (the
builder's accuracy-gate arithmetic) and record per revision pair; the canary's answers never
reach a client, and its errors and timeouts are only counted. Mismatching examples (cosine
below ``mirror_example_cosine`` or top-1 differing) go to a small ring buffer, served
read-only at ``GET /v2/mirror``.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from modelship_runtime.agreement import cosine, max_abs_error, top1_matches
from modelship_runtime.serve.model import Feeds, TensorInfo
from modelship_runtime.serve.settings import ServeSettings
from modelship_runtime.serve.tensors import NUMPY_DTYPES, datatype_of, to_bytes, to_json_data

log = logging.getLogger("modelship_runtime.serve.mirror")

Array = np.ndarray[Any, Any]
OUTCOMES = ("compared", "dropped", "failed")
COSINE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
"""Fine near 1, where a faithful canary lives; the +Inf bucket catches rounding above 1."""
ABS_ERROR_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0, 10.0)
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
_FAILURE_LOG_EVERY_S = 60.0


class MirrorFailed(Exception):
    """The canary did not give a comparable answer (unreachable, timeout, error, bad reply)."""


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """What a mirroring pod was told, with the runtime's defaults filled in."""

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

    @classmethod
    def from_settings(
        cls, settings: ServeSettings, outputs: Sequence[TensorInfo]
    ) -> MirrorConfig | None:
        """None when mirroring is off, or when the output to compare does not exist: a wrong
        setting must not stop the pod serving its clients, so it is logged instead."""
        if not settings.mirror_url or not settings.mirror_share:
            return None
        output = chosen_output(outputs, settings.mirror_output)
        if output is None:
            log.error(
                "mirroring off: %s; the model's float outputs are %s",
                f"output '{settings.mirror_output}' is not a float output of the model"
                if settings.mirror_output
                else "the model has no float output to compare",
                [o.name for o in outputs if o.datatype in FLOAT_DATATYPES] or "none",
            )
            return None
        return cls(
            url=settings.mirror_url.rstrip("/"),
            model_name=settings.model_name,
            revision=settings.revision or "",
            canary=settings.mirror_revision or "",
            output=output,
            share=settings.mirror_share,
            queue=settings.mirror_queue or 64,
            keep_inputs=bool(settings.mirror_keep_inputs),
            timeout_s=settings.mirror_timeout_s,
            connections=settings.mirror_connections,
            max_queue_bytes=settings.mirror_max_queue_bytes,
            example_cosine=settings.mirror_example_cosine,
            examples=settings.mirror_examples,
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
    """Input bytes, what the job holds of the queue's byte budget."""


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
    """POSTs to the canary's REST endpoint, one keep-alive connection per worker thread."""

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
                },
            )
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            raise MirrorFailed(f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise MirrorFailed(f"the canary answered {response.status}: {answer[:200]!r}")
        length = response.getheader("Inference-Header-Content-Length")
        return decode_output(answer, int(length) if length else None, self._output)


# --- metrics and examples --------------------------------------------------------------------


class MirrorMetrics:
    """The mirroring series of one revision pair (labels model, revision, canary)."""

    def __init__(self, registry: CollectorRegistry, config: MirrorConfig) -> None:
        labels = (config.model_name, config.revision, config.canary)
        names = ["model", "revision", "canary"]
        requests = Counter(
            "modelship_mirror_requests",
            "Requests sampled for mirroring, by outcome: compared (the canary answered and "
            "the outputs were compared), dropped (the mirror queue was full, or the pod was "
            "shutting down), failed (the canary did not answer in time, answered an error, or "
            "an answer that cannot be compared).",
            [*names, "outcome"],
            registry=registry,
        )
        self.outcomes = {outcome: requests.labels(*labels, outcome) for outcome in OUTCOMES}
        self.cosine = Histogram(
            "modelship_mirror_cosine",
            "Cosine similarity of the canary's output to the stable's, per compared request.",
            names,
            buckets=COSINE_BUCKETS,
            registry=registry,
        ).labels(*labels)
        self.max_abs_error = Histogram(
            "modelship_mirror_max_abs_error",
            "Largest absolute difference between the canary's and the stable's output, per "
            "compared request.",
            names,
            buckets=ABS_ERROR_BUCKETS,
            registry=registry,
        ).labels(*labels)
        self.top1_agreements = Counter(
            "modelship_mirror_top1_agreements",
            "Compared rows whose arg-max (over the last axis) is the same for both revisions.",
            names,
            registry=registry,
        ).labels(*labels)
        self.top1_rows = Counter(
            "modelship_mirror_top1_rows",
            "Compared rows with a class axis: the denominator of the top-1 agreement.",
            names,
            registry=registry,
        ).labels(*labels)

    def record(self, agreement: Agreement) -> None:
        """The figures of one compared request (its outcome is counted by the caller)."""
        self.cosine.observe(agreement.cosine)
        self.max_abs_error.observe(agreement.max_abs_error)
        if agreement.top1_rows:
            self.top1_agreements.inc(agreement.top1_agree)
            self.top1_rows.inc(agreement.top1_rows)


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
    """Bounded, never-blocking mirroring of served requests to one canary (see the module)."""

    def __init__(
        self,
        config: MirrorConfig,
        registry: CollectorRegistry,
        send: Sender | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.output = config.output
        self.metrics = MirrorMetrics(registry, config)
        self.mismatches = Mismatches(config.examples)
        self._send: Sender = send or HttpSender(config)
        self._random = (rng or random.Random()).random
        self._queue: queue.Queue[MirrorJob | None] = queue.Queue(config.queue)
        self._queued_bytes = 0
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._last_failure_log = -_FAILURE_LOG_EVERY_S

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
        self._count("dropped")

    def start(self) -> None:
        for index in range(self.config.connections):
            thread = threading.Thread(target=self._work, name=f"mirror-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop at once: queued requests are dropped (counted); a request being sent is not
        waited for (daemon threads; its answer is ignored)."""
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._release(job.size)
                self._count("dropped")
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:  # a request offered meanwhile; workers stop at the flag anyway
                break

    def status(self) -> dict[str, Any]:
        """``GET /v2/mirror``: the revision pair, counts and the newest mismatching examples."""
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
            "requests": dict(self._counts),
            "mismatches": self.mismatches.snapshot(),
        }

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1
        self.metrics.outcomes[outcome].inc()

    def _release(self, size: int) -> None:
        with self._lock:
            self._queued_bytes -= size

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._closed:
                return
            self._release(job.size)
            try:
                agreement = compare(job.stable, self._send(job))
            except MirrorFailed as exc:
                self._failed(str(exc))
                continue
            except Exception as exc:  # a bug here must not stop mirroring, nor the pod
                log.exception("mirroring a request failed")
                self._failed(f"{type(exc).__name__}: {exc}")
                continue
            if self._closed:
                return
            self._count("compared")
            self.metrics.record(agreement)
            if agreement.cosine < self.config.example_cosine or (
                agreement.top1_agree < agreement.top1_rows
            ):
                self.mismatches.add(self._example(job, agreement))

    def _failed(self, why: str) -> None:
        self._count("failed")
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_EVERY_S:
            self._last_failure_log = now
            log.warning(
                "mirroring to %s failed (logged once a minute; counted in "
                'modelship_mirror_requests_total{outcome="failed"}): %s',
                self.config.url,
                why,
            )

    def _example(self, job: MirrorJob, agreement: Agreement) -> dict[str, Any]:
        example: dict[str, Any] = {
            "id": job.request_id,
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
