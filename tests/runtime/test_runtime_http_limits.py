"""The built-in HTTP server's limits, one at a time, with raw sockets on 127.0.0.1.

Each test crafts what a hostile or broken client sends and checks both the answer and the
server's state; none of them passes on the server before the limits existed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modelfactory
import numpy as np
import orjson
import pytest
from loopserver import (
    HEALTH,
    INFER_BODY,
    LoopServer,
    Reader,
    infer_request,
    probe,
    socket_readable,
    wait_until,
)

from modelship_runtime.serve.dataplane import DataPlane, InferRequest, ServedModel
from modelship_runtime.serve.errors import ErrorKind, InferenceError
from modelship_runtime.serve.http_server import HttpLimits
from modelship_runtime.serve.model import DirectPredictor, LoopBudget, OnnxModel, SessionConfig
from modelship_runtime.serve.rest import RestApp
from modelship_runtime.serve.tensors import InputBudget, InputLimits, Tensor

LIMITS = HttpLimits(
    max_url_bytes=1024,
    max_header_bytes=4096,
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    keep_alive_s=30,
    max_connections=8,
    max_pipelined=4,
    max_inflight_bytes=3000,
)


@pytest.fixture
def loop_server(tmp_path: Path) -> Iterator[LoopServer]:
    server = LoopServer(tmp_path, LIMITS, max_request_bytes=2048)
    yield server
    server.close()


@pytest.fixture
def gated_server(tmp_path: Path) -> Iterator[LoopServer]:
    server = LoopServer(tmp_path, LIMITS, max_request_bytes=2048, gated=True)
    yield server
    server.close()


def _paused(server: LoopServer) -> bool:
    return server.inspect(
        lambda s: any("stalled" in getattr(c, "paused", ()) for c in s.connections)
    )


def test_pipelined_requests_beyond_the_limit_stay_unread(gated_server: LoopServer) -> None:
    """A client pipelining 300 requests without reading has at most ``max_pipelined`` (plus one
    4 KiB parser slice) of them parsed and held; the rest wait in the kernel's buffers."""
    request = infer_request()
    count = 300
    with gated_server.connect() as sock:
        sock.sendall(request * count)
        wait_until(
            lambda: _paused(gated_server) or gated_server.inspect(lambda s: s.unanswered) == count,
            what="the server to stop reading or to have parsed everything",
        )
        held = gated_server.inspect(lambda s: s.unanswered)
        assert held <= LIMITS.max_pipelined + 1 + 4096 // len(request) + 1, held
        probe(gated_server.port)
        gated_server.open_gate()
        reader = Reader(sock)
        statuses = [reader.response().status for _ in range(count)]
    assert statuses == [200] * count


def test_a_parse_error_answers_the_requests_pipelined_before_it(loop_server: LoopServer) -> None:
    with loop_server.connect() as sock:
        sock.sendall(infer_request() + HEALTH + b"NOT HTTP AT ALL\r\n\r\n")
        reader = Reader(sock)
        first, second, error = reader.response(), reader.response(), reader.response()
        assert reader.at_eof()
    assert (first.status, second.status, error.status) == (200, 200, 400)
    assert b"embedding" in first.body
    assert second.body == b'{"ready":true}'
    assert error.headers["connection"] == "close"
    assert b"malformed HTTP request" in error.body


def test_oversized_url_and_headers_get_414_and_431(loop_server: LoopServer) -> None:
    long_url = b"GET /v2/" + b"a" * 2000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
    big_header = b"GET /v2/health/ready HTTP/1.1\r\nx-big: " + b"b" * 8000 + b"\r\n\r\n"
    many = b"GET /v2/health/ready HTTP/1.1\r\n" + b"x-a: 1\r\n" * 1000 + b"\r\n"
    for payload, status in ((long_url, 414), (big_header, 431), (many, 431)):
        with loop_server.connect() as sock:
            sock.sendall(HEALTH + payload)
            reader = Reader(sock)
            assert reader.response().status == 200  # the request before it is answered first
            error = reader.response()
            assert error.status == status, error
            assert reader.at_eof()
    probe(loop_server.port)


def test_an_endless_header_is_cut_off_before_it_is_buffered(loop_server: LoopServer) -> None:
    """A header that never ends (sent 1 KiB at a time) gets 431 once it passes the limit: the
    server does not wait for the line to end, as the parser alone would (for ever)."""
    with loop_server.connect() as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nx-endless: ")
        answered = False
        for _ in range(16 * 1024):  # up to 16 MiB, far more than any socket buffers
            try:
                sock.sendall(b"c" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            if socket_readable(sock):
                answered = True
                break
        assert answered, "the server never answered the endless header"
        response = Reader(sock).response()
    assert response.status == 431
    assert b"exceed 4096 bytes" in response.body


def test_a_slow_head_and_a_slow_body_are_cut_off(loop_server: LoopServer) -> None:
    with loop_server.connect() as slow_head, loop_server.connect() as slow_body:
        slow_head.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost:")
        slow_body.sendall(infer_request()[: -len(INFER_BODY) + 10])
        probe(loop_server.port)
        for sock, what in ((slow_head, b"request line and headers"), (slow_body, b"body")):
            sock.settimeout(5)
            reader = Reader(sock)
            response = reader.response()
            assert response.status == 408
            assert what in response.body
            assert reader.at_eof()
    with loop_server.connect() as silent:
        silent.settimeout(5)
        assert Reader(silent).at_eof()  # connected, sent nothing: closed without an answer


def test_at_the_connection_cap_the_slowest_head_makes_room(loop_server: LoopServer) -> None:
    slow = [loop_server.connect() for _ in range(LIMITS.max_connections)]
    try:
        for sock in slow:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\n")
        wait_until(lambda: loop_server.inspect(lambda s: len(s.connections)) == len(slow))
        for _ in range(3):
            probe(loop_server.port)  # each one evicts the oldest slow head
        evicted = Reader(slow[0]).response()
        assert evicted.status == 408
        assert b"connection limit" in evicted.body
        assert loop_server.inspect(lambda s: len(s.connections)) <= LIMITS.max_connections
    finally:
        for sock in slow:
            sock.close()


def test_expect_continue_over_the_limit_is_refused_up_front(loop_server: LoopServer) -> None:
    head = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n"
        b"expect: 100-continue\r\n\r\n"
    )
    with loop_server.connect() as sock:
        sock.sendall(head)
        reader = Reader(sock)
        response = reader.response()
        assert reader.at_eof()
    assert response.status == 413
    assert b"exceeds the limit of 2048 bytes" in response.body
    with loop_server.connect() as sock:
        sock.sendall(head.replace(b"100-continue", b"coffee"))
        assert Reader(sock).response().status == 417


def test_the_in_flight_byte_budget_holds_back_bodies_but_not_probes(
    loop_server: LoopServer,
) -> None:
    """With a 3000-byte budget, two 1500-byte bodies are read at once and a third waits for
    its 100 Continue until one is answered; requests without a body are never held."""
    body = orjson.dumps(
        {"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}],
         "id": "x" * (1500 - len(INFER_BODY) - 8)}
    )  # fmt: skip
    assert len(body) == 1500
    head = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
    )
    socks = [loop_server.connect() for _ in range(3)]
    readers = [Reader(s) for s in socks]
    try:
        for sock in socks[:2]:
            sock.sendall(head)
        assert [r.response().status for r in readers[:2]] == [100, 100]
        socks[2].sendall(head)
        wait_until(lambda: loop_server.inspect(lambda s: len(s.waiters)) == 1)
        assert loop_server.inspect(lambda s: s.held) == 3000
        assert not socket_readable(socks[2])  # no 100 Continue: its body would not fit
        probe(loop_server.port)
        socks[0].sendall(body)
        assert readers[0].response().status == 200
        assert readers[2].response().status == 100  # room again
        for sock, reader in zip(socks[1:], readers[1:], strict=True):
            sock.sendall(body)
            assert reader.response().status == 200
        assert loop_server.inspect(lambda s: (s.held, len(s.waiters))) == (0, 0)
    finally:
        for sock in socks:
            sock.close()


# --- the data plane and the REST app --------------------------------------------------------


def _embedding_plane(
    tmp_path: Path, latency_ms: float = 1.0, budget_ms: float = 1.0
) -> tuple[OnnxModel, DataPlane, LoopBudget]:
    model = OnnxModel(modelfactory.embedding(tmp_path / "m.onnx"), SessionConfig(1))
    budget = LoopBudget(model, latency_ms, budget_ms)
    predictor = DirectPredictor(model, inline=budget)
    plane = DataPlane(
        ServedModel("m", "1", model.inputs, model.outputs, predictor),
        InputLimits(max_elements=1000, max_bytes=4000),
    )
    plane.serving = plane.ready = True
    return model, plane, budget


def _on_loop(model: OnnxModel, plane: DataPlane, shapes: list[tuple[int, int]]) -> list[bool]:
    """For each request shape, whether its call ran on the event loop thread."""
    threads: list[bool] = []
    original = model.predict

    def recording(feeds: Any, output_names: Any = None) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return original(feeds, output_names)

    model.predict = recording  # type: ignore[method-assign]

    async def run() -> None:
        for rows, sequence in shapes:
            ids = np.ones((rows, sequence), dtype=np.int64)
            await plane.infer(InferRequest("m", None, [Tensor("ids", "INT64", ids)]))
        await plane.model.predictor.close()

    asyncio.run(run())
    return threads


def test_only_calls_the_warm_up_says_are_short_run_on_the_loop(tmp_path: Path) -> None:
    """The warm-up latency says how long a call of the warm-up's size blocks the event loop; a
    request 50 times larger would block it (and every probe) 50 times as long. With a 10 ms
    warm-up and a 100 ms budget, calls up to 10x the warm-up's 8 elements run on the loop."""
    model, plane, budget = _embedding_plane(tmp_path, latency_ms=10.0, budget_ms=100.0)
    assert model.warm_up_elements == 8  # [1, 8]: batch 1, other dynamic dims 8
    assert budget.max_elements == 80
    shapes = [(1, 8), (50, 8), (10, 8), (11, 8), (1, 3), (5, 16), (4, 21)]
    assert _on_loop(model, plane, shapes) == [True, False, True, False, True, True, False]


def test_a_budget_never_goes_below_the_warm_up_size(tmp_path: Path) -> None:
    """A model slower than the budget still runs calls of the warm-up's size on the loop (the
    rule placed it there by that measurement), nothing larger."""
    model, plane, budget = _embedding_plane(tmp_path, latency_ms=40.0, budget_ms=0.5)
    assert budget.max_elements == model.warm_up_elements
    assert _on_loop(model, plane, [(1, 8), (1, 9), (2, 4)]) == [True, False, True]


def test_a_call_over_the_budget_sends_its_size_to_the_worker_from_then_on(
    tmp_path: Path,
) -> None:
    """The estimate scales the warm-up linearly; where a model grows faster than that, the call
    that took longer than the budget lowers the bound below its own size, once."""
    # 1 ns of budget: every real call takes longer; the estimate admits anything at first.
    model, plane, budget = _embedding_plane(tmp_path, latency_ms=1e-9, budget_ms=1e-6)
    assert budget.max_elements > 1000
    shapes = [(10, 8), (10, 8), (9, 8), (1, 8), (1, 8)]
    assert _on_loop(model, plane, shapes) == [True, False, True, True, True]
    assert budget.max_elements == 71  # below the 72 elements of the last call over it


def test_bytes_inputs_never_run_on_the_loop(tmp_path: Path) -> None:
    _, _, budget = _embedding_plane(tmp_path, latency_ms=0.001, budget_ms=50.0)
    text = {"ids": np.array([["a"]], dtype=object)}
    assert not budget.admits(text)
    assert budget.admits({"ids": np.ones((1, 8), dtype=np.int64)})


def _post(app: RestApp, body: bytes) -> tuple[int, dict[str, Any]]:
    async def read(limit: int) -> bytes:
        return body

    reply = asyncio.run(app.handle("POST", "/v2/models/m/infer", [], read))
    return reply.status, orjson.loads(reply.body)


def _tensor_body(shape: list[int], data: object, datatype: str = "INT64") -> bytes:
    return orjson.dumps({"inputs": [{"name": "ids", "shape": shape, "datatype": datatype,
                                     "data": data}]})  # fmt: skip


def test_oversized_shapes_and_deep_nesting_are_4xx(tmp_path: Path) -> None:
    _, plane, _ = _embedding_plane(tmp_path)
    app = RestApp(plane, None, 1 << 20)
    cases = [
        (_tensor_body([0, 2**64 - 1], []), 413, "over the limit of 1000"),
        (_tensor_body([2**40, 0], []), 413, "over the limit of 1000"),
        (_tensor_body([10, 101], []), 413, "MODELSHIP_MAX_INPUT_ELEMENTS"),
        (_tensor_body([2, 300], [], "FP64"), 413, "MODELSHIP_MAX_INPUT_BYTES"),
        (b'{"inputs":[{"name":"ids","shape":[1],"datatype":"BYTES","data":'
         + b"[" * 1000 + b'"a"' + b"]" * 1000 + b"}]}", 400, "nested deeper than its shape"),
        (orjson.dumps({"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64",
                                    "data": [1]}] * 2000}), 400, "2000 input tensors"),
    ]  # fmt: skip
    for body, status, message in cases:
        code, document = _post(app, body)
        assert (code, message in document["error"]) == (status, True), (document, body[:60])


def test_a_5xx_never_echoes_the_exception(tmp_path: Path) -> None:
    _, plane, _ = _embedding_plane(tmp_path)
    app = RestApp(plane, None, 1 << 20)
    code, document = _post(app, _tensor_body([1, 3], [[1, 999, 3]]))
    assert code == 500
    assert document["error"].startswith("the model failed on these inputs")
    for leak in ("999", "Gather", "ONNXRuntime", "idx", "/"):
        assert leak not in document["error"]

    async def broken(request: InferRequest) -> Any:
        raise RuntimeError("secret at /srv/models/key.pem")

    plane.infer = broken  # type: ignore[method-assign]
    code, document = _post(app, _tensor_body([1, 3], [[1, 2, 3]]))
    assert code == 500
    assert "secret" not in document["error"]
    assert "RuntimeError" not in document["error"]
    assert "[ref " in document["error"]


def test_input_limits_are_kind_too_large() -> None:
    budget = InputBudget(InputLimits(max_elements=10, max_bytes=100, max_inputs=2))
    budget.take("a", (2, 4), np.dtype(np.float32))
    with pytest.raises(InferenceError) as info:
        budget.take("b", (3,), np.dtype(np.float32))
    assert info.value.kind is ErrorKind.TOO_LARGE
    with pytest.raises(InferenceError) as info:
        budget.check_count(3)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
