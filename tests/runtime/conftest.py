"""Runtime server fixtures: real server processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import modelfactory
import pytest

from localkube.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


class ServerProcess:
    """``python -m modelship_runtime serve`` in a subprocess, stopped with SIGTERM."""

    def __init__(self, model_dir: Path, *args: str, log: Path) -> None:
        self.rest_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.rest = f"http://127.0.0.1:{self.rest_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log = log
        command = [
            PYTHON, "-m", "modelship_runtime", "serve",
            "--model-dir", str(model_dir), "--host", "127.0.0.1",
            "--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--intra-op-threads", "1", *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=env, cwd=REPO)  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.rest}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # bounded polling of the real readiness endpoint
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()}")

    def metric(self, name: str) -> float:
        """Sum of all samples of ``name`` (with any labels) on the metrics endpoint."""
        total = 0.0
        for line in httpx.get(self.metrics_url, timeout=5).text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modelfactory.artifact(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="session")
def embedding_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("embedding")
    modelfactory.embedding(directory / "model.onnx")
    return directory


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    servers: list[ServerProcess] = []

    def start(model_dir: Path, *args: str) -> ServerProcess:
        server = ServerProcess(model_dir, *args, log=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(mlp_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared conformance server: MLP, unbatched, 1 MiB request limit."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = ServerProcess(mlp_artifact, "--max-request-bytes", str(1024 * 1024), log=log)
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, log.read_text()
