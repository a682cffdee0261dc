"""The server under hostile clients, as a real process: it keeps answering its readiness probe
(on a new connection, within the kubelet's timeout of 1 s here) while being attacked, and no
attack gets a 5xx (which would count against a canary's success rate)."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import modelfactory
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from loopserver import Reader, probe, slow_model_request, wait_until
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess

pytestmark = pytest.mark.slow

PROBE_TIMEOUT = 1.0


def _mlp_request(rows: int = 1) -> bytes:
    body = json.dumps({"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32",
                                   "data": [0.5] * (rows * 64)}]}).encode()  # fmt: skip
    return (
        b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_slow_clients_are_cut_off_and_probes_still_answer(
    mlp_artifact: Path, start_server: Any
) -> None:
    """Twice as many connections as the cap send their heads a byte at a time: each is cut off
    (its head deadline, or evicted at the cap for a newcomer) and every probe gets through."""
    timeout_s, cap = 2.0, 32
    srv: ServerProcess = start_server(
        mlp_artifact, "--max-connections", str(cap), "--header-timeout-s", str(timeout_s)
    )
    opened: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}
    for _ in range(2 * cap):
        sock = socket.create_connection(("127.0.0.1", srv.rest_port), timeout=5)
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\n")
        opened[sock] = time.monotonic()
    header = iter(b"x-slow: " + b"z" * 100_000)
    latencies = []
    deadline = time.monotonic() + timeout_s + 10
    try:
        while len(closed) < len(opened):
            assert time.monotonic() < deadline, f"{len(opened) - len(closed)} never cut off"
            byte = bytes([next(header)])
            for sock in opened.keys() - closed.keys():
                try:
                    sock.sendall(byte)
                except OSError:
                    closed[sock] = time.monotonic()
            latencies.append(probe(srv.rest_port, PROBE_TIMEOUT))
            # Pace the attack by waiting (up to 0.1 s) for the server to answer someone.
            readable, _, _ = select.select(list(opened.keys() - closed.keys()), [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    closed[sock] = time.monotonic()
    finally:
        for sock in opened:
            sock.close()
    assert max(closed[s] - opened[s] for s in opened) < timeout_s + 1.5
    assert max(latencies) < PROBE_TIMEOUT


def test_huge_heads_get_431_and_414_while_probes_answer(server: ServerProcess) -> None:
    attacks = [
        (b"GET /v2/health/ready HTTP/1.1\r\nx-big: " + b"b" * 65536 + b"\r\n\r\n", 431),
        (b"GET /v2/health/ready HTTP/1.1\r\n" + b"x-many: 1\r\n" * 4000 + b"\r\n", 431),
        (b"GET /v2/" + b"u" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
    ]
    for payload, status in attacks * 3:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=5) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)  # may be answered and closed before all of it is sent
            response = Reader(sock).response()
        assert response.status == status, response
        probe(server.rest_port, PROBE_TIMEOUT)


def test_a_pipelined_flood_is_answered_in_order_while_probes_answer(server: ServerProcess) -> None:
    """One connection pipelines thousands of requests: the server reads them only as fast as it
    answers them and lets other connections in between answers."""
    count = 4000
    request = _mlp_request()
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
    statuses: list[int] = []

    def read_all() -> None:
        reader = Reader(sock)
        statuses.extend(reader.response().status for _ in range(count))

    reader = threading.Thread(target=read_all)
    sender = threading.Thread(target=sock.sendall, args=(request * count,))
    sender.start()
    reader.start()
    latencies = []
    try:
        while reader.is_alive() and len(latencies) < 10_000:
            latencies.append(probe(server.rest_port, PROBE_TIMEOUT))
    finally:
        sender.join(30)
        reader.join(30)
        sock.close()
    assert statuses == [200] * count
    assert max(latencies) < PROBE_TIMEOUT


def test_oversized_shapes_are_4xx_on_both_protocols(server: ServerProcess) -> None:
    for shape in ([0, 2**64 - 1], [2**62, 0, 64], [10**6, 100]):
        body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]}
        response = httpx.post(f"{server.rest}/v2/models/model/infer", json=body)
        assert response.status_code == 413, response.text
        assert "MODELSHIP_MAX_INPUT_ELEMENTS" in response.json()["error"]
    deep = "[" * 1000 + '"a"' + "]" * 1000
    nested = '{"inputs":[{"name":"input","shape":[1],"datatype":"BYTES","data":' + deep + "}]}"
    response = httpx.post(f"{server.rest}/v2/models/model/infer", content=nested)
    assert response.status_code == 400, response.text
    client = tgrpc.InferenceServerClient(server.grpc)
    tensor = tgrpc.InferInput("input", [0, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((0, 1), np.float32))
    tensor.set_shape([0, 2**62])
    with pytest.raises(InferenceServerException) as info:
        client.infer("model", [tensor])
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    client.close()
    text = httpx.get(server.metrics_url).text
    codes = {line.split('code="')[1][:3] for line in text.splitlines()
             if line.startswith("modelship_requests_total{")}  # fmt: skip
    assert not {c for c in codes if c.startswith("5")}, codes
    probe(server.rest_port, PROBE_TIMEOUT)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The slow model (a few ms per row, so warm-up lets a lone request run on the loop), with
    a cap of 2 concurrent gRPC calls."""
    directory = modelfactory.slow(tmp_path_factory.mktemp("slow"))
    log = tmp_path_factory.mktemp("logs") / "slow.log"
    process = ServerProcess(directory, "--grpc-max-concurrent-rpcs", "2", log=log)
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, log.read_text()


def test_a_lone_request_larger_than_the_warm_up_does_not_block_probes(
    slow_server: ServerProcess,
) -> None:
    """Alone in the server, a request of the warm-up's size runs on the event loop thread; one
    of 4096 rows (2 s here) would hold the loop, and every probe, for its whole run."""
    rows = 4096
    with socket.create_connection(("127.0.0.1", slow_server.rest_port), timeout=60) as sock:
        sock.sendall(slow_model_request(rows))
        wait_until(lambda: slow_server.metric("modelship_requests_in_flight") >= 1, 30,
                   "the big request to start")  # fmt: skip
        started = time.monotonic()
        probe(slow_server.rest_port, PROBE_TIMEOUT)
        response = Reader(sock).response()
        took = time.monotonic() - started
    assert response.status == 200
    assert took > PROBE_TIMEOUT, "the request was too fast to show anything; raise rows"


def test_grpc_calls_beyond_the_cap_are_refused_not_queued(slow_server: ServerProcess) -> None:
    x = np.ones((1024, 1024), np.float32)  # 0.5 s a call: the six overlap
    clients = [tgrpc.InferenceServerClient(slow_server.grpc) for _ in range(6)]
    for client in clients:
        assert client.is_server_live()  # connected, one at a time, before the race
    barrier = threading.Barrier(len(clients), timeout=30)

    def call(client: tgrpc.InferenceServerClient) -> str:
        tensor = tgrpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        barrier.wait()
        try:
            client.infer("model", [tensor], client_timeout=60)
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(call, c) for c in clients]
            probe(slow_server.rest_port, PROBE_TIMEOUT)
            results = [f.result(timeout=90) for f in futures]
    finally:
        for client in clients:
            client.close()
    assert set(results) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, results
    assert results.count("StatusCode.RESOURCE_EXHAUSTED") >= 1, results
    assert results.count("OK") >= 2, results
