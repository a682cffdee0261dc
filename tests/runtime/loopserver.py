"""The built-in HTTP server on an event loop thread of the test process, and a raw HTTP client.

Tests act as hostile clients with plain blocking sockets on 127.0.0.1 and read the server's
state (connections, budget, queues) between steps, on the loop thread.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import modelfactory
import numpy as np

from modelship_runtime.serve.dataplane import DataPlane, ServedModel
from modelship_runtime.serve.http_server import HttpLimits, HttpServer
from modelship_runtime.serve.model import (
    DirectPredictor,
    Feeds,
    LoopBudget,
    OnnxModel,
    Outputs,
    SessionConfig,
)
from modelship_runtime.serve.rest import RestApp

T = TypeVar("T")

INFER_BODY = b'{"inputs":[{"name":"ids","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}'


def infer_request(body: bytes = INFER_BODY, extra: bytes = b"") -> bytes:
    return (
        b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + extra
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


HEALTH = b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"


class Gate:
    """A predictor that holds every call until opened (from any thread)."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.open = asyncio.Event()
        self.calls = 0

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs:
        self.calls += 1
        await self.open.wait()
        return self.model.predict(feeds, output_names)

    async def close(self) -> None:
        return None


class LoopServer:
    """``HttpServer`` over an embedding model (ids INT64 [batch, sequence]) on its own loop."""

    def __init__(
        self, tmp: Path, limits: HttpLimits, max_request_bytes: int = 1 << 20, gated: bool = False
    ) -> None:
        self.model = OnnxModel(modelfactory.embedding(tmp / "m.onnx"), SessionConfig(1))
        self.gate = Gate(self.model) if gated else None
        predictor = self.gate or DirectPredictor(
            self.model, inline=LoopBudget(self.model, 1.0, 1.0)
        )
        served = ServedModel("m", "1", self.model.inputs, self.model.outputs, predictor)
        self.plane = DataPlane(served)
        self.plane.serving = self.plane.ready = True
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = HttpServer(RestApp(self.plane, None, max_request_bytes), limits)
        self.call(self.server.start("127.0.0.1", 0))
        assert self.server._server is not None
        self.port: int = self.server._server.sockets[0].getsockname()[1]

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def inspect(self, read: Callable[[HttpServer], T]) -> T:
        """``read(server)`` evaluated on the loop thread, between two of its callbacks."""

        async def run() -> T:
            return read(self.server)

        return self.call(run())

    def open_gate(self) -> None:
        assert self.gate is not None
        self.loop.call_soon_threadsafe(self.gate.open.set)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def close(self) -> None:
        self.call(self.server.stop(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` s (a bounded loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.005)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Reader:
    """Reads HTTP/1.1 responses (Content-Length framed) off a socket, interim ones included."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(int(status_line.split()[1]), headers, body)

    def at_eof(self) -> bool:
        """Whether the server closed the connection once everything sent was read."""
        try:
            while True:
                self._fill()
        except EOFError:
            return True
        except ConnectionResetError:
            return True


def socket_readable(sock: socket.socket) -> bool:
    """Whether the server has sent something (or closed) that is not read yet."""
    return bool(select.select([sock], [], [], 0)[0])


def probe(port: int, timeout: float = 1.0) -> float:
    """GET /v2/health/ready on a new connection; its latency in s (fails beyond ``timeout``)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(HEALTH)
        response = Reader(sock).response()
    elapsed = time.monotonic() - started
    assert response.status == 200, response
    assert elapsed < timeout
    return elapsed


def slow_model_request(rows: int) -> bytes:
    """An infer request for ``modelfactory.slow`` (x FP32 [rows, 1024]) with binary tensors."""
    x = np.ones((rows, 1024), np.float32)
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [rows, 1024], "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )  # fmt: skip
    body = header.encode() + x.tobytes()
    return (
        b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\n"
        + f"inference-header-content-length: {len(header)}\r\n".encode()
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
