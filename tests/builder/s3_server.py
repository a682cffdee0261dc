"""A real S3-compatible server (MinIO, built from Go modules by hack/build-minio.sh) on loopback."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localkube.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str


def minio_binary() -> Path:
    """Build (first time: minutes, with progress on stderr) or find the cached MinIO binary."""
    out = subprocess.run(
        [str(ROOT / "hack" / "build-minio.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"minio exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)  # readiness poll of a separate process, bounded by the deadline
    raise RuntimeError(f"minio not ready after {READY_TIMEOUT_S}s: {log.read_text()[-2000:]}")


@contextmanager
def minio(workdir: Path) -> Iterator[S3Server]:
    binary = minio_binary()
    port, console = free_port(), free_port()
    server = S3Server(f"http://127.0.0.1:{port}", "modelship", "modelship-secret")
    log = workdir / "minio.log"
    env = {
        **os.environ,
        "MINIO_ROOT_USER": server.access_key,
        "MINIO_ROOT_PASSWORD": server.secret_key,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
        "HOME": str(workdir),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "server", str(workdir / "data"), "--quiet",
             "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        _wait_ready(f"{server.endpoint}/minio/health/live", proc, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
