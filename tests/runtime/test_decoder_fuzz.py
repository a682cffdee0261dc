"""Fuzzing the decoders a client reaches: REST bodies and headers, gRPC ``ModelInferRequest``
messages, and the HTTP/1.1 framing of the built-in server. Whatever comes in, what comes out is
a decoded request or a client error (4xx): a client must not be able to make the server answer
5xx (that would count against a canary) or raise out of the protocol.

gRPC messages are built with tritonclient's copy of the proto (same field names and numbers);
``grpc_decoding`` reads them by field name, as it reads ours.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

import modelfactory
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from modelship_runtime.serve.dataplane import DataPlane, ServedModel
from modelship_runtime.serve.errors import InferenceError
from modelship_runtime.serve.grpc_decoding import decode_request as decode_grpc
from modelship_runtime.serve.http_server import HttpLimits, HttpServer, _Connection
from modelship_runtime.serve.model import (
    DirectPredictor,
    LoopBudget,
    OnnxModel,
    SessionConfig,
    TensorInfo,
)
from modelship_runtime.serve.rest import RestApp, request_headers
from modelship_runtime.serve.rest import decode_request as decode_rest
from modelship_runtime.serve.tensors import InputBudget, InputLimits, from_bytes, from_json

LIMITS = InputLimits(max_elements=4096, max_bytes=32768, max_inputs=8)
SIGNATURE = [
    TensorInfo("input", "FP32", (-1, 64), ("batch", None)),
    TensorInfo("ids", "INT64", (-1, -1), ("batch", "sequence")),
    TensorInfo("text", "BYTES", (-1,), ("batch",)),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


class _NoPredictor:
    async def predict(self, feeds: Any, output_names: Any) -> Any:
        raise AssertionError("decoding only")

    async def close(self) -> None:
        return None


PLANE = DataPlane(ServedModel("model", "1", SIGNATURE, SIGNATURE[:1], _NoPredictor()), LIMITS)


def _client_error_only(decode: Any) -> None:
    """Run ``decode()`` and validate what it returns: any failure must be a 4xx."""
    try:
        request = decode()
        PLANE.validate_inputs(request.inputs)
    except InferenceError as exc:
        _assert_client_error(exc)


def _assert_client_error(error: InferenceError) -> None:
    assert 400 <= error.kind.value < 500, (error.kind, error.message)
    assert error.message


# --- REST ------------------------------------------------------------------------------------

NAMES = st.sampled_from(["input", "ids", "text", "", "x"]) | st.text(max_size=4)
DATATYPES = st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL", "UINT8", "fp32", "?"])
INTS = st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 2**63 - 1, 2**64 - 1, -1])
SCALARS = (
    st.floats(allow_nan=False, allow_infinity=False) | INTS | st.booleans()
    | st.text(max_size=3) | st.none()
)  # fmt: skip
DEPTHS = st.sampled_from([2, 32, 33, 900, 1000, 1023, 1024, 1500]) | st.integers(1, 1500)
NESTED = DEPTHS.map(lambda depth: "[" * depth + '"a"' + "]" * depth)


def _nested(depth: int) -> object:
    value: object = "a"
    for _ in range(depth):
        value = [value]
    return value


DATA = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=8), max_leaves=64)
DIMS = st.sampled_from([0, 2**64 - 1, 1, 2**63, 3, 64, 2**31, 2**62, 2**63 - 1])
SHAPES = (
    st.lists(DIMS, max_size=5)
    | st.lists(INTS, max_size=5)
    | st.sampled_from([[1, 64], [2, 3], [1]])
    | SCALARS
)
TENSORS = st.fixed_dictionaries(
    {"name": NAMES, "shape": SHAPES, "datatype": DATATYPES},
    optional={
        "data": DATA,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), SCALARS)
        | SCALARS,
    },
)
EDGE_TENSORS = st.fixed_dictionaries(  # well-formed but for the shape: where decoders slip
    {
        "name": st.sampled_from(["input", "ids", "text"]),
        "shape": st.lists(DIMS, min_size=1, max_size=4),
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BOOL"]),
        "data": st.just([]) | st.just([[]]) | st.lists(st.integers(0, 3), max_size=4),
    }
)
DOCUMENTS = st.fixed_dictionaries(
    {"inputs": st.lists(TENSORS | EDGE_TENSORS, max_size=4) | SCALARS},
    optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": NAMES}), max_size=3) | SCALARS,
        "parameters": st.dictionaries(st.just("binary_data_output"), SCALARS) | SCALARS,
        "id": SCALARS,
    },
)


def _json_body(document: dict[str, Any]) -> bytes:
    try:
        return json.dumps(document).encode()
    except ValueError:
        return b"{}"


BODIES = (
    DOCUMENTS.map(_json_body)
    | st.binary(max_size=300)
    | NESTED.map(lambda d: ('{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":'
                            + d + "}]}").encode())
)  # fmt: skip
HEADER_VALUES = st.binary(max_size=8) | INTS.map(lambda n: str(n).encode())
HEADERS = st.lists(
    st.tuples(
        st.sampled_from([b"content-length", b"inference-header-content-length",
                         b"content-encoding", b"x-other"]),
        HEADER_VALUES,
    ),
    max_size=3,
)  # fmt: skip


@FUZZ
@given(
    body=BODIES,
    binary=st.binary(max_size=64),
    header_length=st.none() | st.integers(-5, 400),
    headers=HEADERS,
)
@example(
    body=b'{"inputs":[{"name":"input","shape":[0,18446744073709551615],"datatype":"FP32",'
    b'"data":[]}]}',
    binary=b"",
    header_length=None,
    headers=[],
)
@example(
    body=b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":'
    + b"[" * 1000
    + b'"a"'
    + b"]" * 1000
    + b"}]}",
    binary=b"",
    header_length=None,
    headers=[],
)
def test_rest_decoding_raises_only_client_errors(
    body: bytes, binary: bytes, header_length: int | None, headers: list[tuple[bytes, bytes]]
) -> None:
    def decode() -> Any:
        request_headers(headers)
        length = header_length if header_length is None or header_length >= 0 else None
        return decode_rest(body + binary, length, "model", None, LIMITS)

    _client_error_only(decode)


@FUZZ
@given(
    datatype=DATATYPES,
    shape=SHAPES,
    data=DATA | st.just([]),
    nesting=st.none() | DEPTHS,
    raw=st.binary(max_size=64),
)
@example(datatype="FP32", shape=[0, 2**64 - 1], data=[], nesting=None, raw=b"")  # 0 hides a dim
@example(datatype="INT64", shape=[2**62, 0, 64], data=[[]], nesting=None, raw=b"")
@example(datatype="BYTES", shape=[1], data=[], nesting=1000, raw=b"")  # Python's recursion limit
def test_tensor_decoding_raises_only_client_errors(
    datatype: str, shape: object, data: object, nesting: int | None, raw: bytes
) -> None:
    """The tensor decoders both adapters share, on their own, where shapes meet data.
    ``nesting`` wraps a string in that many lists (built here: hypothesis cannot print it)."""
    if nesting is not None:
        data = _nested(nesting)
    for decode in (
        lambda: from_json("t", datatype, shape, data, InputBudget(LIMITS)),
        lambda: from_bytes("t", datatype, shape, raw, InputBudget(LIMITS)),
    ):
        try:
            decode()
        except InferenceError as exc:
            _assert_client_error(exc)


# --- gRPC ------------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
CONTENTS = {
    "bool_contents": st.lists(st.booleans(), max_size=80),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=80),
    "int64_contents": st.lists(INT64, max_size=80),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=80),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=80),
    "fp32_contents": st.lists(st.floats(width=32, allow_nan=True), max_size=80),
    "fp64_contents": st.lists(st.floats(allow_nan=True), max_size=80),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=80),
}
GRPC_DIMS = st.sampled_from([0, 2**63 - 1, 1, 3, 64, 2**31, 2**62])
GRPC_TENSORS = st.fixed_dictionaries(
    {
        "name": NAMES,
        "datatype": DATATYPES | st.sampled_from(["INT8", "UINT64", "FP64", "INT16"]),
        "shape": st.lists(GRPC_DIMS | INT64, max_size=5),
        "contents": st.fixed_dictionaries({}, optional=CONTENTS),
    }
)


def _message(tensors: list[dict[str, Any]], raw: list[bytes], outputs: list[str]) -> Any:
    message = service_pb2.ModelInferRequest(model_name="model")
    for spec in tensors:
        tensor = message.inputs.add(name=spec["name"], datatype=spec["datatype"])
        tensor.shape.extend(spec["shape"])
        for field, values in spec["contents"].items():
            getattr(tensor.contents, field).extend(values)
    message.raw_input_contents.extend(raw)
    for name in outputs:
        message.outputs.add(name=name)
    return message


@FUZZ
@given(
    tensors=st.lists(GRPC_TENSORS, max_size=4),
    raw=st.lists(st.binary(max_size=300), max_size=4),
    outputs=st.lists(NAMES, max_size=2),
)
def test_grpc_decoding_raises_only_client_errors(
    tensors: list[dict[str, Any]], raw: list[bytes], outputs: list[str]
) -> None:
    message = _message(tensors, raw, outputs)
    _client_error_only(lambda: decode_grpc(message, LIMITS))


@FUZZ
@given(wire=st.binary(max_size=400))
def test_grpc_decoding_of_arbitrary_wire_bytes(wire: bytes) -> None:
    message = service_pb2.ModelInferRequest()
    try:
        message.ParseFromString(wire)
    except Exception:  # grpc refuses such bytes before any handler runs
        return
    _client_error_only(lambda: decode_grpc(message, LIMITS))


# --- HTTP/1.1 framing ------------------------------------------------------------------------


class _Transport:
    """Just enough of an asyncio transport: records what the server writes."""

    def __init__(self, protocol: _Connection) -> None:
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False
        self.eof = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closing, "a write after close"
        assert not self.eof, "a write after write_eof"
        self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.fixture(scope="module")
def http_app(tmp_path_factory: pytest.TempPathFactory) -> RestApp:
    path = modelfactory.embedding(tmp_path_factory.mktemp("fuzz") / "m.onnx")
    model = OnnxModel(path, SessionConfig(1))
    plane = DataPlane(
        ServedModel(
            "m",
            "1",
            model.inputs,
            model.outputs,
            DirectPredictor(model, inline=LoopBudget(model, 1.0, 1.0)),
        ),
        LIMITS,
    )
    plane.serving = plane.ready = True
    return RestApp(plane, None, 2048)


def _request(method: bytes, path: bytes, headers: list[bytes], body: bytes, length: str) -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers)
    if length == "exact":
        head += f"content-length: {len(body)}\r\n".encode()
    elif length == "chunked":
        head += b"transfer-encoding: chunked\r\n"
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
    elif length != "none":
        head += b"content-length: " + length.encode() + b"\r\n"
    return head + b"\r\n" + body


GOOD_BODY = b'{"inputs":[{"name":"ids","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}'
REQUESTS = st.builds(
    _request,
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"G\x00T", b""]),
    st.sampled_from([b"/v2/health/ready", b"/v2/models/m/infer", b"/v2", b"/%ff%00",
                     b"/v2/models/m/versions/9/infer", b"*", b"/a b"]) | st.binary(max_size=20),
    st.lists(
        st.sampled_from([b"host: x", b"expect: 100-continue", b"expect: other",
                         b"connection: close", b"content-encoding: gzip", b"upgrade: h2c",
                         b"connection: upgrade", b"x-a: " + b"a" * 5000])
        | st.binary(max_size=16),
        max_size=4,
    ),
    st.sampled_from([GOOD_BODY, b"", b"{", b"x" * 3000]) | st.binary(max_size=64),
    st.sampled_from(["exact", "chunked", "none", "-1", "abc", "99999999999", "5"]),
)  # fmt: skip
STREAMS = st.lists(REQUESTS | st.binary(max_size=64), min_size=1, max_size=6).map(b"".join)


def _statuses(written: bytes) -> list[int]:
    """The status of every response the server wrote, in order (100 Continue included). An
    answer to HEAD has a Content-Length but no body: the next status line follows at once."""
    statuses = []
    rest = bytes(written)
    while rest:
        match = re.match(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n", rest)
        assert match, rest[:80]
        head, _, after = rest.partition(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length: (\d+)", head)
        size = int(length[1]) if length else 0
        statuses.append(int(match[1]))
        rest = after if after.startswith(b"HTTP/1.1 ") else after[size:]
    return statuses


async def _serve_stream(app: RestApp, stream: bytes, cuts: list[int]) -> tuple[bytes, int, int]:
    """Feed ``stream`` to one connection in reads cut at ``cuts``, as the event loop would
    (no read while it is paused), and let it answer; (written, budget held, unanswered)."""
    limits = HttpLimits(
        max_header_bytes=4096, max_url_bytes=1024, max_pipelined=2, max_inflight_bytes=4096
    )
    server = HttpServer(app, limits)
    connection = _Connection(server)
    transport = _Transport(connection)
    connection.connection_made(transport)  # type: ignore[arg-type]
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        if transport.closing:
            break
        while not transport.reading and connection.worker is not None:
            await connection.worker  # answers go out, reading resumes
        if transport.reading:
            connection.data_received(stream[start:end])
    for _ in range(100):  # bounded: each answer is a task step or two
        if connection.worker is None:
            break
        await asyncio.sleep(0)
    transport.close()
    await asyncio.sleep(0)
    if connection.worker is not None:
        await connection.worker
    for timer in (connection.timer, connection.close_timer, connection.send_timer):
        if timer is not None:
            timer.cancel()
    return bytes(transport.written), server.held, server.unanswered


@FUZZ
@given(stream=STREAMS, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_http_framing_answers_only_below_500(
    http_app: RestApp, stream: bytes, cuts: list[int]
) -> None:
    written, held, unanswered = asyncio.run(_serve_stream(http_app, stream, cuts))
    statuses = _statuses(written)
    assert all(status < 500 for status in statuses), statuses
    assert (held, unanswered) == (0, 0), "the byte budget or request count leaked"


VALID = st.sampled_from(
    [
        _request(b"GET", b"/v2/health/ready", [b"host: x"], b"", "none"),
        _request(b"HEAD", b"/v2/health/live", [], b"", "none"),
        _request(b"POST", b"/v2/models/m/infer", [b"host: x"], GOOD_BODY, "exact"),
        _request(b"POST", b"/v2/models/m/infer", [b"expect: 100-continue"], GOOD_BODY, "exact"),
        _request(b"POST", b"/v2/models/m/infer", [], GOOD_BODY, "chunked"),
        _request(b"POST", b"/v2/models/m/infer", [b"expect: 100-continue"], GOOD_BODY, "chunked"),
    ]
)


@FUZZ
@given(requests=st.lists(VALID, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 4000)))
def test_http_framing_answers_valid_pipelined_requests_however_they_are_read(
    http_app: RestApp, requests: list[bytes], cuts: list[int]
) -> None:
    """Valid requests, pipelined and cut into reads anywhere (slices, stalls for the pipeline
    and the byte budget in between), are each answered 200, in order."""
    written, held, unanswered = asyncio.run(_serve_stream(http_app, b"".join(requests), cuts))
    statuses = [status for status in _statuses(written) if status != 100]
    assert statuses == [200] * len(requests)
    assert (held, unanswered) == (0, 0)
