"""SIGTERM as the kubelet sends it: clients are told to go at once (REST ``Connection: close``
on every further response, gRPC GOAWAY), and the server has exited by its drain deadline."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import modelfactory
import pytest
from loopserver import HEALTH, Reader, slow_model_request, wait_until

from conftest import ServerProcess

pytestmark = pytest.mark.slow

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _GOAWAY = 0x4, 0x7


def _frame(kind: int, flags: int = 0, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + bytes(4) + payload


def _read_frame(sock: socket.socket) -> tuple[int, int]:
    """(type, flags) of the next HTTP/2 frame; its payload is read and dropped."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise EOFError("the gRPC server closed the connection")
            data += chunk
        return data

    header = exactly(9)
    exactly(int.from_bytes(header[:3], "big"))
    return header[3], header[4]


def _http2_connection(port: int) -> socket.socket:
    """A bare HTTP/2 connection to the gRPC port, past the SETTINGS exchange."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(_PREFACE + _frame(_SETTINGS))
    while True:
        kind, flags = _read_frame(sock)
        if kind == _SETTINGS and not flags & 0x1:
            sock.sendall(_frame(_SETTINGS, 0x1))  # ack the server's settings
            return sock


def test_sigterm_closes_keep_alive_connections_and_sends_goaway_at_once(
    mlp_artifact: Path, start_server: Any
) -> None:
    """During the drain delay the server still answers, but every response says
    ``Connection: close`` and gRPC clients get GOAWAY right away, not when the listeners
    finally close."""
    srv: ServerProcess = start_server(mlp_artifact, "--drain-delay-s", "4")
    grpc = _http2_connection(srv.grpc_port)
    keep = socket.create_connection(("127.0.0.1", srv.rest_port), timeout=5)
    reader = Reader(keep)
    keep.sendall(HEALTH)
    assert "connection" not in reader.response().headers  # keep-alive before SIGTERM
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    grpc.settimeout(2)
    while _read_frame(grpc)[0] != _GOAWAY:
        assert time.monotonic() - signalled < 2, "no GOAWAY within 2 s of SIGTERM"
    assert time.monotonic() - signalled < 2
    grpc.close()

    def ready_answer() -> tuple[int, str | None]:
        with socket.create_connection(("127.0.0.1", srv.rest_port), timeout=2) as sock:
            sock.sendall(HEALTH)
            response = Reader(sock).response()
        return response.status, response.headers.get("connection")

    wait_until(lambda: ready_answer()[0] == 503, 3, "readiness to turn false")
    assert ready_answer() == (503, "close")
    keep.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
    live = reader.response()
    assert (live.status, live.headers.get("connection")) == (200, "close")
    assert reader.at_eof()
    keep.close()
    assert time.monotonic() - signalled < 4, "the checks must fit in the drain delay"
    assert srv.proc.wait(timeout=30) == 0


def test_the_server_exits_by_its_drain_deadline_with_work_left(
    tmp_path: Path, start_server: Any
) -> None:
    """Far more queued work than the deadline allows: the server stops at the deadline (what
    the kubelet's SIGKILL would otherwise do, uncleanly) instead of finishing it all."""
    deadline_s = 2.0
    srv: ServerProcess = start_server(
        modelfactory.slow(tmp_path / "slow"), "--drain-deadline-s", str(deadline_s)
    )
    request = slow_model_request(512)  # ~0.25 s of model time each, one at a time
    clients = 24
    socks = [socket.create_connection(("127.0.0.1", srv.rest_port), timeout=30)
             for _ in range(clients)]  # fmt: skip
    senders = [threading.Thread(target=s.sendall, args=(request,)) for s in socks]
    try:
        for sender in senders:
            sender.start()
        wait_until(lambda: srv.metric("modelship_requests_in_flight") >= clients // 2, 30,
                   "requests to reach the model")  # fmt: skip
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert srv.proc.wait(timeout=30) == 0
        took = time.monotonic() - signalled
    finally:
        for sock in socks:
            sock.close()
        for sender in senders:
            sender.join(5)
    assert took < deadline_s + 1.5, f"exited {took:.1f} s after SIGTERM"
    log = srv.log.read_text()
    assert "stopped:" in log
    assert "stopped: 0 request(s)" not in log, "the test needs work left at the deadline"
