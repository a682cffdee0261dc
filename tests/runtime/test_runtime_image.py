"""The runtime image starts, serves one model and answers a real inference (Docker)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import modelfactory
import numpy as np
import pytest
import tritonclient.http as thttp

from conftest import REPO
from localkube.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _docker_ready() -> str | None:
    """None when Docker works (starting dockerd like the build script), else why not."""
    if shutil.which("docker") is None and shutil.which("apt-get") is None:
        return "neither docker nor apt-get is available"
    check = subprocess.run(
        ["bash", "-c", f"source {REPO}/hack/docker-env.sh && ensure_packages && ensure_dockerd"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        return f"docker cannot be started here: {check.stderr.strip()[-300:]}"
    return None


def test_image_serves_a_model(tmp_path: Path) -> None:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(
        [str(REPO / "hack/build-image.sh"), "runtime", "modelship-runtime:e2e"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    models = tmp_path / "models"
    modelfactory.artifact(models)
    for path in (tmp_path, models, *models.iterdir()):
        path.chmod(0o755)  # the image runs as uid 65532
    port = free_port()
    name = f"modelship-e2e-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--cpus", "1",
         "-p", f"127.0.0.1:{port}:8080", "-v", f"{models}:/models:ro",
         "-e", "MODELSHIP_MODEL_NAME=digits", "modelship-runtime:e2e"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, _logs(name)
            time.sleep(0.2)  # bounded polling of the real readiness endpoint
        client = thttp.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.random.default_rng(3).normal(size=(2, 64)).astype(np.float32)
        tensor = thttp.InferInput("input", [2, 64], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("digits", [tensor])
        np.testing.assert_array_equal(result.as_numpy("label"), modelfactory.reference(x)["label"])
        client.close()
        user = subprocess.run(
            ["docker", "exec", name, "id", "-u"], capture_output=True, text=True, check=True
        )
        assert user.stdout.strip() == "65532"
        assert "1 intra-op threads" in _logs(name), "the CPU limit (--cpus 1) was not honoured"
        subprocess.run(["docker", "stop", "-t", "20", name], check=True, capture_output=True)
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.ExitCode}}", name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert state.stdout.strip() == "0", _logs(name)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _logs(name: str) -> str:
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return logs.stdout + logs.stderr
