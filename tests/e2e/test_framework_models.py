"""A PyTorch model and a TF Lite model on the local node: each applied as a ModelDeployment,
built by a real build Job (its convert step in the framework's converter image), served by the
runtime image, and answering through the Service what the framework itself computes."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e_models import CREATED, SMALL, delete_what_the_test_created, pod_restarts  # noqa: F401
from framework_helpers import MODELS, make_models
from localkube import Cluster, stack
from localkube.load import wait_until_serving

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE
TOLERANCE = 1e-4
"""fp32 ONNX against the framework's float32 outputs (the builder measures 6e-8 to 2e-7)."""


@pytest.fixture(scope="module")
def converters(modelship: Cluster) -> Cluster:
    stack.build_and_load_converter_images(modelship)
    return modelship


def _body(name: str, x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip


def _infer(url: str, name: str, x: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(
        url, data=json.dumps(_body(name, x)).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        (out,) = json.loads(response.read())["outputs"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _build_images(cluster: Cluster, name: str) -> dict[str, str]:
    """Container -> image of the build Job of ModelDeployment ``name``."""
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", NS, "-o", "json").stdout)["items"]
    (job,) = [j for j in jobs if any(o["name"] == name for o in j["metadata"]["ownerReferences"])]
    pod = job["spec"]["template"]["spec"]
    return {c["name"]: c["image"] for c in [*pod["initContainers"], *pod["containers"]]}


@pytest.mark.parametrize("kind", ["cnn-pt2", "mlp-tflite"])
def test_a_framework_model_is_built_served_and_answers_like_its_framework(
    kind: str, converters: Cluster, tmp_path: Path
) -> None:
    cluster = converters
    file, fmt, input_name = MODELS[kind]
    models = make_models(tmp_path / "models", kind)
    name = f"fw-{kind}"
    model_uri = stack.seed_model(cluster, NS, models / file, f"frameworks/{file}")
    samples_uri = stack.seed_model(
        cluster, NS, models / f"{kind}-samples.npz", f"frameworks/{kind}-samples.npz"
    )
    spec: dict[str, Any] = {
        "model": {
            "uri": model_uri,
            "format": fmt.value,
            "sha256": hashlib.sha256((models / file).read_bytes()).hexdigest(),
        },
        "optimization": {"precision": "fp32", "calibration": {"uri": samples_uri}},
        "serving": {"resources": SMALL},
        "scaling": {"minReplicas": 1, "maxReplicas": 1},
        "rollout": {"strategy": "rolling"},
    }
    CREATED.append(name)
    stack.apply_mdep(cluster, NS, name, spec)
    obj = stack.wait_for(cluster, NS, name, stack.is_ready, "Ready", timeout_s=900)
    assert obj["status"]["artifact"]["variant"] == "fp32"
    family = "torch" if kind == "cnn-pt2" else "tensorflow"
    images = _build_images(cluster, name)
    assert images["convert"] == stack.CONVERTER_IMAGES[family]
    assert images["fetch"] == images["builder"] == stack.BUILT["runtime"]
    # The framework's outputs for 8 samples, against the Service's answer to one batch of 8.
    with np.load(models / f"{kind}.npz") as data:
        inputs, expected = data["inputs"], data["outputs"]
    url = f"{stack.service_url(cluster, NS, name)}/v2/models/{name}/infer"
    # Ready says the pod is; kube-proxy routes the Service to it a moment later (until then a
    # connection is refused).
    wait_until_serving(url, json.dumps(_body(input_name, inputs[:1])))
    served = _infer(url, input_name, inputs)
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() < TOLERANCE
    assert np.array_equal(served.argmax(1), expected.argmax(1))
    # One row at a time too: the batch dimension is dynamic end to end.
    one = _infer(url, input_name, inputs[3:4])
    assert np.abs(one - expected[3:4]).max() < TOLERANCE
    restarts = pod_restarts(cluster, NS, f"modelship.io/deployment={name}")
    assert all(n == 0 for counts in restarts.values() for n, _ in counts), restarts
