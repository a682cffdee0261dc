"""Bounded HTTP load from ``hey`` (a compiled load generator, Debian package ``hey``).

Used by the canary e2e tests and ``bench/canary.py`` to send Open Inference Protocol requests
through a Service the whole time a release runs, and to count every answer by status code.
Each run is bounded by a duration and a rate, and stops early on :meth:`HeyLoad.stop`.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

_CODE = re.compile(r"^\s*\[(\d{3})\]\s+(\d+)\s+responses", re.MULTILINE)
_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.+)$", re.MULTILINE)


@dataclass
class LoadResult:
    codes: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    """Requests that got no HTTP answer (connection refused, reset, timeout), by message."""

    @property
    def total(self) -> int:
        return sum(self.codes.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        """Everything but a 200."""
        return self.total - self.codes.get(200, 0)


def parse_summary(text: str) -> LoadResult:
    """The status-code and error distributions of hey's summary."""
    result = LoadResult()
    codes, _, errors = text.partition("Error distribution:")
    for code, count in _CODE.findall(codes):
        result.codes[int(code)] = int(count)
    for count, message in _ERROR.findall(errors):
        result.errors[message.strip()] = int(count)
    return result


def infer_body(x: list[float]) -> str:
    """An OIP v2 infer request with one FP32 row ``x`` for an input named ``x``."""
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(x)], "data": x}]}
    )


def wait_until_serving(url: str, body: str, timeout_s: float = 60) -> None:
    """POST ``body`` until one answer is a 200 (a new Service or pod may not route yet)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f}s: {last}")


class HeyLoad:
    """``hey`` POSTing one body at a bounded rate, for at most ``duration_s``."""

    def __init__(
        self,
        url: str,
        body: str,
        *,
        concurrency: int = 2,
        qps_per_worker: float = 20,
        duration_s: float = 300,
    ) -> None:
        binary = shutil.which("hey")
        if binary is None:
            raise RuntimeError("hey is not installed: run hack/install-host-deps.sh")
        self.args = [
            binary, "-z", f"{int(duration_s)}s", "-c", str(concurrency),
            "-q", str(qps_per_worker), "-t", "10", "-disable-keepalive",
            "-m", "POST", "-T", "application/json", "-d", body, url,
        ]  # fmt: skip
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> HeyLoad:
        self._process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return self

    def stop(self, timeout: float = 30) -> LoadResult:
        """Interrupt (hey then prints its summary) and count the answers."""
        process = self._process
        if process is None:
            return LoadResult()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=timeout)
        self._process = None
        return parse_summary(out)

    def __enter__(self) -> HeyLoad:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.communicate()  # reaps it and closes its pipe
