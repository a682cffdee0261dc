"""Pure unit tests of the runtime server's building blocks (no server process)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import modelfactory
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelship.api.artifact import TensorStats
from modelship_runtime.serve.batching import BatchingPredictor
from modelship_runtime.serve.cli import parse_settings
from modelship_runtime.serve.cpu import cgroup_cpu_limit, default_threads
from modelship_runtime.serve.dataplane import DataPlane, InferRequest, ServedModel
from modelship_runtime.serve.errors import ErrorKind, InferenceError
from modelship_runtime.serve.http_server import HttpServer
from modelship_runtime.serve.metrics import DriftMonitor, RequestMetrics
from modelship_runtime.serve.model import (
    DirectPredictor,
    LoopBudget,
    OnnxModel,
    SessionConfig,
    unspin_if_tiny,
)
from modelship_runtime.serve.rest import RestApp
from modelship_runtime.serve.tensors import Tensor, from_bytes, from_json, to_bytes

LABELS = {"model": "m", "revision": "7c41d9e2b3"}
"""The per-model labels of the metrics below: the model and the pod's revision."""


def test_json_decoding_is_strict() -> None:
    tensor = from_json("x", "INT64", [2, 2], [[1, 2], [3, 4]])
    assert tensor.data.dtype == np.int64
    assert tensor.data.tolist() == [[1, 2], [3, 4]]
    assert from_json("x", "FP32", [3], [1, 2.5, True]).data.dtype == np.float32
    extremes = [-(2**63), 2**63 - 1]
    assert from_json("x", "INT64", [2], extremes).data.tolist() == extremes
    cases = [
        ("UINT8", [2], [1, 300], "values must lie in [0, 255] for UINT8"),
        ("INT32", [2], [1, 2**31], "values must lie in [-2147483648, 2147483647] for INT32"),
        ("INT64", [2], [1, -(2**64)], "datatype INT64 needs integer values"),
        ("INT32", [1], [1.5], "datatype INT32 needs integer values, got floating-point numbers"),
        ("BOOL", [1], [1], "datatype BOOL needs true/false values, got integers"),
        ("FP32", [2], [1, "2"], "datatype FP32 needs numbers, got strings"),
        ("FP32", [2], [1, None], "needs numbers, got mixed or non-numeric values"),
        ("FP32", [2], {"a": 1}, "'data' must be a list of FP32 values"),
        ("FP32", "2", [1, 2], "shape must be a list"),
        ("FP32", [True, 2], [1, 2], "shape must be a list of non-negative integers"),
    ]
    for datatype, shape, data, message in cases:
        with pytest.raises(InferenceError) as info:
            from_json("x", datatype, shape, data)
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
        assert message in info.value.message, (datatype, data)
        assert "'x'" in info.value.message


def test_binary_decoding_and_bytes_roundtrip() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    decoded = from_bytes("x", "FP32", [2, 3], values.tobytes())
    np.testing.assert_array_equal(decoded.data, values)
    with pytest.raises(InferenceError, match="needs 24 bytes of binary data but 20 were sent"):
        from_bytes("x", "FP32", [2, 3], values.tobytes()[:20])
    strings = np.array([b"ab", b"", b"xyz"], dtype=object)
    assert from_bytes("s", "BYTES", [3], to_bytes(strings)).data.tolist() == [b"ab", b"", b"xyz"]
    with pytest.raises(InferenceError, match="declares 3 bytes but only 1 remain"):
        from_bytes("s", "BYTES", [1], b"\x03\x00\x00\x00a")


def test_cgroup_v2_and_v1_limits(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    assert default_threads(v2) == min(2, len(__import__("os").sched_getaffinity(0)))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path / "v1") == 0.5
    assert default_threads(tmp_path / "v1") == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(tmp_path / "v1") is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_drift_score_grows_with_shift() -> None:
    edges = [float(e) for e in np.linspace(-4, 4, 17)]
    rng = np.random.default_rng(0)
    counts = np.histogram(rng.normal(size=100_000), bins=edges)[0]
    stats = TensorStats(mean=0, std=1, min=-4, max=4, count=100_000, histogram_edges=edges,
                        histogram_counts=counts.tolist())  # fmt: skip
    plain = TensorStats(mean=0, std=1, min=-4, max=4, count=100_000)

    def score(shift: float) -> dict[str, float]:
        monitor = DriftMonitor({"x": stats, "y": plain})
        for _ in range(20):
            sample = rng.normal(shift, 1, size=(8, 64)).astype(np.float32)
            monitor.observe({"x": sample, "y": sample})
        return monitor.scores()

    same, shifted = score(0.0), score(1.0)
    assert same["x"] < 0.05
    assert shifted["x"] > 0.25
    assert same["y"] < 0.1
    assert 0.9 < shifted["y"] < 1.1


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_REST_PORT", "7000")
    monkeypatch.setenv("MODELSHIP_MAX_BATCH_SIZE", "16")
    settings = parse_settings(["--rest-port", "7001", "--no-grpc-enabled"])
    assert settings.rest_port == 7001
    assert settings.max_batch_size == 16
    assert settings.grpc_enabled is False
    assert settings.grpc_port == 8081
    assert settings.metrics_port == 9090


def test_batcher_merges_and_isolates_a_bad_request(tmp_path: Path) -> None:
    """Eight concurrent requests make one model call; the bad one fails alone."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "m", "7c41d9e2b3")

    async def run() -> list[object]:
        batcher = BatchingPredictor(model, max_batch_size=16, max_delay_ms=1000, metrics=metrics)
        batcher.start()
        feeds = [{"ids": np.array([[i, i + 1, i + 2]], dtype=np.int64)} for i in range(8)]
        feeds[3] = {"ids": np.array([[1, 5000, 2]], dtype=np.int64)}  # out of the table
        feeds[5] = {"ids": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)}  # two rows
        try:
            return await asyncio.gather(
                *(batcher.predict(f, None) for f in feeds), return_exceptions=True
            )
        finally:
            await batcher.close()

    results = asyncio.run(run())
    batches = registry.get_sample_value("modelship_batch_size_count", LABELS)
    rows = registry.get_sample_value("modelship_batch_size_sum", LABELS)
    assert (batches, rows) == (1, 9)
    assert isinstance(results[3], Exception)
    for i, result in enumerate(results):
        if i == 3:
            continue
        assert isinstance(result, list)
        ids = [[i, i + 1, i + 2]] if i != 5 else [[1, 2, 3], [4, 5, 6]]
        alone = model.predict({"ids": np.array(ids, dtype=np.int64)})
        np.testing.assert_array_equal(result[0], alone[0])


def test_batcher_does_not_make_a_lone_request_wait(tmp_path: Path) -> None:
    """At concurrency 1 nobody can join the batch, so max_delay (here 1 s) must not be spent."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))

    async def run() -> float:
        batcher = BatchingPredictor(model, max_batch_size=16, max_delay_ms=1000)
        batcher.start()
        try:
            start = time.perf_counter()
            for _ in range(3):
                await batcher.predict({"ids": np.ones((1, 3), dtype=np.int64)}, None)
            return time.perf_counter() - start
        finally:
            await batcher.close()

    assert asyncio.run(run()) < 1.0


def test_batcher_dispatches_a_steady_group_once_all_are_in(tmp_path: Path) -> None:
    """Eight closed-loop clients: each batch leaves when the eight are in, not after max_delay."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "m", "7c41d9e2b3")

    async def client(batcher: BatchingPredictor, i: int) -> None:
        for _ in range(4):
            await batcher.predict({"ids": np.full((1, 3), i, dtype=np.int64)}, None)

    async def run() -> float:
        batcher = BatchingPredictor(model, max_batch_size=32, max_delay_ms=2000, metrics=metrics)
        batcher.start()
        try:
            start = time.perf_counter()
            await asyncio.gather(*(client(batcher, i) for i in range(8)))
            return time.perf_counter() - start
        finally:
            await batcher.close()

    elapsed = asyncio.run(run())
    batches = registry.get_sample_value("modelship_batch_size_count", LABELS)
    rows = registry.get_sample_value("modelship_batch_size_sum", LABELS)
    assert (batches, rows) == (4, 32), "every round of the eight clients is one batch"
    assert elapsed < 2.0, f"a batch waited out max_delay ({elapsed:.1f}s for 4 rounds)"


def test_batcher_regroups_clients_that_fell_into_two_half_batches(tmp_path: Path) -> None:
    """32 closed-loop clients that start as two groups of 16 end up in batches of 32.

    The second group piles up while the first group's batch runs, longer than max_delay. If the
    window counted from enqueue time, that pile would leave at once as a batch of 16, the first
    group would pile up behind it, and the server would run half batches for good.
    """
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    original = model.predict
    sizes: list[int] = []
    started = threading.Event()

    def slow(feeds: Any, output_names: Any = None) -> Any:
        sizes.append(len(feeds["ids"]))
        started.set()
        time.sleep(0.1)  # the model's compute time, several times max_delay
        return original(feeds, output_names)

    model.predict = slow  # type: ignore[method-assign]

    async def client(batcher: BatchingPredictor, i: int) -> None:
        for _ in range(6):
            outputs = await batcher.predict({"ids": np.full((1, 3), i, dtype=np.int64)}, None)
            assert outputs[0].shape[0] == 1

    async def run() -> None:
        batcher = BatchingPredictor(model, max_batch_size=32, max_delay_ms=20)
        batcher.start()
        try:
            first = [asyncio.ensure_future(client(batcher, i)) for i in range(16)]
            await asyncio.get_running_loop().run_in_executor(None, started.wait)
            await asyncio.gather(*first, *(client(batcher, i) for i in range(16, 32)))
        finally:
            await batcher.close()

    asyncio.run(run())
    assert sizes == [16, 32, 32, 32, 32, 32, 16], sizes


class _Counted:
    """A transport that reports whatever count the test sets."""

    def __init__(self, count: int | None) -> None:
        self.count = count

    def pending(self) -> int | None:
        return self.count


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batching"])
def test_a_request_alone_in_the_server_runs_on_the_loop_thread(
    tmp_path: Path, batching: bool
) -> None:
    """Wired to ``DataPlane.alone``, a request the transports count as the only one skips the
    worker thread (and the batch queue); with another one pending it takes the hop."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    threads: list[int] = []
    original = model.predict

    def recording(feeds: Any, output_names: Any = None) -> Any:
        threads.append(threading.get_ident())
        return original(feeds, output_names)

    model.predict = recording  # type: ignore[method-assign]
    ids = np.ones((1, 3), dtype=np.int64)
    transport = _Counted(1)

    async def run() -> None:
        predictor: DirectPredictor | BatchingPredictor
        if batching:
            predictor = BatchingPredictor(model, 8, 1000)
            predictor.start()
        else:
            predictor = DirectPredictor(model)
        plane = DataPlane(ServedModel("m", "1", model.inputs, model.outputs, predictor))
        plane.serving = True
        plane.attach(transport)
        predictor.alone = plane.alone
        predictor.alone_budget = LoopBudget(model, 1.0, 1.0)  # the warm-up's size
        try:
            for transport.count in (1, 2, 1):
                response = await plane.infer(InferRequest("m", None, [Tensor("ids", "INT64", ids)]))
                np.testing.assert_array_equal(response.outputs[0].data, original({"ids": ids})[0])
        finally:
            await predictor.close()

    asyncio.run(run())
    main = threading.get_ident()
    assert [t == main for t in threads] == [True, False, True]


def test_the_data_plane_is_alone_only_when_all_transports_count_one_request(
    tmp_path: Path,
) -> None:
    """Counts add up over transports, and one that cannot count turns "alone" off."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    plane = DataPlane(ServedModel("m", "1", model.inputs, model.outputs, _Gate(model)))
    plane.in_flight = 1
    http, grpc = _Counted(1), _Counted(0)
    plane.attach(http)
    plane.attach(grpc)
    assert plane.alone()
    grpc.count = 1
    assert not plane.alone()  # one request on each transport
    http.count, grpc.count = 0, None
    assert not plane.alone()  # a transport that cannot count is never alone
    grpc.count = 0
    plane.in_flight = 2
    assert not plane.alone()  # two requests already in the data plane


class _Gate:
    """A predictor that holds every call until opened, and says when one has arrived."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.open = asyncio.Event()
        self.entered = asyncio.Event()

    async def predict(self, feeds: Any, output_names: Any) -> Any:
        self.entered.set()
        await self.open.wait()
        return self.model.predict(feeds, output_names)

    async def close(self) -> None:
        return None


_BODY = b'{"inputs":[{"name":"ids","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}'
_REQUEST = (
    b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


async def _gated_server(model: OnnxModel) -> tuple[_Gate, HttpServer, int]:
    """A started HTTP server on a free port whose model calls wait at a gate."""
    gate = _Gate(model)
    plane = DataPlane(ServedModel("m", "1", model.inputs, model.outputs, gate))
    plane.serving = plane.ready = True
    server = HttpServer(RestApp(plane, None, 1 << 20))
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    return gate, server, server._server.sockets[0].getsockname()[1]


async def _read_reply(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


def test_http_server_counts_unanswered_requests(tmp_path: Path) -> None:
    """Pipelined requests count until answered; a client that leaves takes its count along."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    request = _REQUEST

    async def run() -> None:
        gate, server, port = await _gated_server(model)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request * 3)  # pipelined: answered in order, one at a time
        await gate.entered.wait()
        assert server.unanswered == 3
        gate.open.set()
        for _ in range(3):
            await _read_reply(reader)
        assert server.unanswered == 0

        gate.open.clear()
        gate.entered.clear()
        writer.write(request * 2)
        await gate.entered.wait()
        (connection,) = server.connections
        worker = connection.worker
        assert worker is not None
        assert server.unanswered == 2
        writer.close()  # leave with both requests unanswered
        await writer.wait_closed()
        gate.open.set()
        await worker
        assert server.unanswered == 0
        await server.stop(1)

    asyncio.run(run())


def test_another_open_http_connection_means_a_request_is_not_alone(tmp_path: Path) -> None:
    """One request on the only connection is alone; another open connection means it is not.

    Requests unread in another connection's socket buffer are invisible to the count of
    unanswered requests, so the HTTP server counts each open connection as a request.
    """
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))

    async def run() -> None:
        gate, server, port = await _gated_server(model)
        plane = server.app.plane
        plane.attach(server)
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        first.write(_REQUEST)
        await gate.entered.wait()
        assert (server.unanswered, server.pending(), plane.alone()) == (1, 1, True)
        gate.open.set()
        await _read_reply(first_reader)

        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        second.write(_REQUEST)  # answered, so the second connection is known and idle
        await _read_reply(second_reader)
        gate.open.clear()
        gate.entered.clear()
        first.write(_REQUEST)
        await gate.entered.wait()
        assert (server.unanswered, server.pending(), plane.alone()) == (1, 2, False)
        gate.open.set()
        await _read_reply(first_reader)
        for writer in (first, second):
            writer.close()
            await writer.wait_closed()
        await server.stop(1)

    asyncio.run(run())


@pytest.mark.parametrize(("threshold_ms", "spinning"), [(50.0, False), (0.0, True)])
def test_a_tiny_model_is_opened_again_without_spinning(
    tmp_path: Path, threshold_ms: float, spinning: bool
) -> None:
    """A model faster than the inline threshold is opened again without spinning (its calls end
    before spinning pays off, and the spinning thread takes the event loop's core); a slower
    one keeps the configured spinning."""
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1, True))
    latency_ms = model.warm_up(2)
    assert latency_ms < 50.0  # this embedding model takes microseconds
    assert unspin_if_tiny(model, latency_ms, threshold_ms) is not spinning
    assert model.config.allow_spinning is spinning
    ids = np.ones((2, 5), dtype=np.int64)
    assert model.predict({"ids": ids})[0].shape[0] == 2  # the new session serves
