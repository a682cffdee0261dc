"""End to end on the local node: real build Job pods, real runtime pods, real Services and HPA.

Each test applies ModelDeployments the way a user would and observes only what a user could:
the ModelDeployment's status, Kubernetes objects, and answers from the Service.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from e2e_models import SMALL
from localkube import Cluster, stack
from localkube.load import wait_until_serving

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE


def _mlp(path: Path, seed: int) -> Path:
    """A small MLP with a dynamic batch dimension: x[N,16] -> relu -> y[N,4]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=(32,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(32, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }


def _routed(url: str, model: str, x: np.ndarray) -> None:
    """Ready says the pods are; kube-proxy routes the Service to them a moment later (a
    connection is refused until then): the first request of a test waits for that."""
    wait_until_serving(f"{url}/v2/models/{model}/infer", json.dumps(_body(x)))


def _infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=json.dumps(_body(x)).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        out = json.loads(response.read())["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _jobs(cluster: Cluster, owner: str | None = None) -> list[str]:
    """Build Jobs in the namespace (other modules' too), or those ``owner`` owns."""
    items = json.loads(cluster.kubectl("get", "jobs", "-n", NS, "-o", "json").stdout)["items"]
    return sorted(
        j["metadata"]["name"]
        for j in items
        if owner is None
        or any(r.get("name") == owner for r in j["metadata"].get("ownerReferences") or [])
    )


@pytest.fixture(scope="module")
def mlp(modelship: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = _mlp(tmp_path_factory.mktemp("mlp") / "model.onnx", seed=7)
    uri = stack.seed_model(modelship, NS, path, f"mlp-{uuid.uuid4().hex[:6]}/model.onnx")
    return path, uri


def _mlp_spec(uri: str, path: Path, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": uri, "sha256": _sha256(path)},
        "optimization": {"precision": "fp32"},
        "serving": {"resources": SMALL, "grpc": True},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
        "rollout": {"strategy": "rolling"},
    }
    spec.update(extra)
    return spec


def test_build_serve_and_infer_equals_onnxruntime(
    modelship: Cluster, mlp: tuple[Path, str]
) -> None:
    path, uri = mlp
    stack.apply_mdep(modelship, NS, "mlp", _mlp_spec(uri, path))
    obj = stack.wait_for(modelship, NS, "mlp", stack.is_ready, "Ready", timeout_s=900)
    assert obj["status"]["artifact"]["variant"] == "fp32"
    assert len(_jobs(modelship, "mlp")) == 1, "exactly one build Job"
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    url = stack.service_url(modelship, NS, "mlp")
    _routed(url, "mlp", x)
    served = _infer(url, "mlp", x)
    local = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-5)


def test_second_deployment_of_the_same_model_reuses_the_artifact(
    modelship: Cluster, mlp: tuple[Path, str]
) -> None:
    path, uri = mlp
    first = stack.wait_for(modelship, NS, "mlp", stack.is_ready, "Ready", timeout_s=900)
    jobs_before = _jobs(modelship)
    stack.apply_mdep(modelship, NS, "mlp-twin", _mlp_spec(uri, path))
    twin = stack.wait_for(modelship, NS, "mlp-twin", stack.is_ready, "Ready", timeout_s=300)
    assert twin["status"]["artifact"]["digest"] == first["status"]["artifact"]["digest"]
    assert _jobs(modelship) == jobs_before, "the twin must not build"
    modelship.kubectl("delete", "mdep", "mlp-twin", "-n", NS, "--wait=true")


def test_deleting_a_pod_under_load_loses_no_request(
    modelship: Cluster, mlp: tuple[Path, str]
) -> None:
    path, uri = mlp
    stack.apply_mdep(
        modelship, NS, "mlp-ha", _mlp_spec(uri, path, scaling={"minReplicas": 2, "maxReplicas": 2})
    )
    obj = stack.wait_for(
        modelship,
        NS,
        "mlp-ha",
        lambda o: stack.is_ready(o) and o["status"].get("readyReplicas") == 2,
        "2 ready",
        600,
    )
    assert obj["status"]["readyReplicas"] == 2
    url = stack.service_url(modelship, NS, "mlp-ha")
    x = np.ones((1, 16), dtype=np.float32)
    _routed(url, "mlp-ha", x)
    expected = _infer(url, "mlp-ha", x)
    stop = threading.Event()
    outcomes: list[str] = []

    def client() -> None:
        # Bounded in time; any failure is recorded, never swallowed.
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                got = _infer(url, "mlp-ha", x)
                outcomes.append("ok" if np.allclose(got, expected) else "wrong answer")
            except Exception as error:
                outcomes.append(f"{type(error).__name__}: {error}")

    def wait_for_more(count: int, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while len(outcomes) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        try:
            wait_for_more(100, 60)
            pods = modelship.kubectl(
                "get", "pods", "-n", NS, "-l", "modelship.io/deployment=mlp-ha", "-o", "name"
            ).stdout.split()
            assert len(pods) == 2, pods
            modelship.kubectl("delete", "-n", NS, pods[0], "--wait=true", timeout=120)
            # Keep the load on while the replacement starts and becomes ready.
            stack.wait_for(
                modelship,
                NS,
                "mlp-ha",
                lambda o: o["status"].get("readyReplicas") == 2,
                "2 ready again",
                120,
            )
            wait_for_more(len(outcomes) + 200, 60)
        finally:
            stop.set()
            for f in futures:
                f.result()
    failures = [o for o in outcomes if o != "ok"]
    assert len(outcomes) > 300
    assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed: {failures[:3]}"
    modelship.kubectl("delete", "mdep", "mlp-ha", "-n", NS, "--wait=true")


def test_corrupt_model_ends_degraded_with_the_builders_reason(
    modelship: Cluster, tmp_path: Path
) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf" * 100)
    uri = stack.seed_model(modelship, NS, bad, f"corrupt-{uuid.uuid4().hex[:6]}/model.onnx")
    stack.apply_mdep(
        modelship,
        NS,
        "broken",
        {
            "model": {"uri": uri, "sha256": _sha256(bad)},
            "optimization": {"precision": "fp32"},
            "serving": {"resources": SMALL},
        },
    )
    obj = stack.wait_for(
        modelship,
        NS,
        "broken",
        lambda o: stack.condition(o, "Degraded").get("status") == "True",
        "Degraded",
        600,
    )
    degraded = stack.condition(obj, "Degraded")
    assert degraded["reason"] == "BuildFailed"
    assert "InvalidModel" in degraded["message"] or "ONNX" in degraded["message"], degraded
    for operator in _operator_pods(modelship):
        assert operator["status"]["phase"] == "Running"
        assert all(c["ready"] for c in operator["status"]["containerStatuses"])
        assert all(c["restartCount"] == 0 for c in operator["status"]["containerStatuses"])
    modelship.kubectl("delete", "mdep", "broken", "-n", NS, "--wait=true")


def _operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", stack.OPERATOR_NAMESPACE, "-o", "json").stdout
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _lease_holder(cluster: Cluster) -> str:
    """The operator pod that leads (the Lease's holder is ``<pod name>_<random suffix>``)."""
    leases = json.loads(
        cluster.kubectl("get", "leases", "-n", stack.OPERATOR_NAMESPACE, "-o", "json").stdout
    )["items"]
    (lease,) = leases
    return str(lease["spec"].get("holderIdentity") or "").rsplit("_", 1)[0]


def test_the_standby_operator_takes_over_when_the_leader_goes(
    modelship: Cluster, mlp: tuple[Path, str]
) -> None:
    path, uri = mlp
    stack.wait_for(modelship, NS, "mlp", stack.is_ready, "Ready", timeout_s=900)
    pods = {p["metadata"]["name"] for p in _operator_pods(modelship)}
    assert len(pods) == 2, pods
    leader = _lease_holder(modelship)
    assert leader in pods, (leader, pods)
    start = time.monotonic()
    modelship.kubectl("delete", "pod", leader, "-n", stack.OPERATOR_NAMESPACE, "--wait=false")
    deadline = start + 60
    while (holder := _lease_holder(modelship)) in ("", leader) and time.monotonic() < deadline:
        time.sleep(0.5)  # polling an external state: the Lease is written by another process
    # The standby, or the pod the Deployment started in place of the leader: whichever asks first.
    successors = {p["metadata"]["name"] for p in _operator_pods(modelship)} - {leader}
    assert holder in successors, f"no other operator pod took over (holder {holder!r})"
    took_over = time.monotonic() - start
    # The new leader reconciles: a new ModelDeployment of a built model becomes Ready.
    stack.apply_mdep(modelship, NS, "mlp-failover", _mlp_spec(uri, path))
    stack.wait_for(modelship, NS, "mlp-failover", stack.is_ready, "Ready", timeout_s=300)
    print(f"leader {leader} deleted; {holder} took over after {took_over:.1f}s")
    modelship.kubectl("delete", "mdep", "mlp-failover", "-n", NS, "--wait=true")


def _replicas(cluster: Cluster, name: str) -> tuple[int, int]:
    """(replicas the HPA asks for, ready serving pods of every revision)."""
    hpa = json.loads(cluster.kubectl("get", "hpa", name, "-n", NS, "-o", "json").stdout)
    desired = hpa.get("status", {}).get("desiredReplicas", 0)
    ready = stack.get_mdep(cluster, NS, name).get("status", {}).get("readyReplicas", 0)
    return int(desired), int(ready or 0)


def test_hpa_scales_out_under_load_and_back_in(modelship: Cluster, mlp: tuple[Path, str]) -> None:
    path, uri = mlp
    spec = _mlp_spec(
        uri, path, scaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 50}
    )
    spec["serving"]["resources"] = {
        "requests": {"cpu": "50m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    stack.apply_mdep(modelship, NS, "mlp-hpa", spec)
    stack.wait_for(modelship, NS, "mlp-hpa", stack.is_ready, "Ready", 600)
    url = stack.service_url(modelship, NS, "mlp-hpa")
    x = np.ones((1, 16), dtype=np.float32)
    _routed(url, "mlp-hpa", x)
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 300  # bounded in time and count
        for _ in range(200_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                _infer(url, "mlp-hpa", x)
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)  # a pod starting or stopping; keep the load bounded

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(load) for _ in range(3)]
        try:
            while _replicas(modelship, "mlp-hpa")[1] < 2:
                assert time.monotonic() - started < 300, "no scale-out within 300 s of load"
                time.sleep(2)
        finally:
            stop.set()
            for w in workers:
                w.result()
    scale_out = time.monotonic() - started
    idle = time.monotonic()
    while _replicas(modelship, "mlp-hpa") != (1, 1):
        assert time.monotonic() - idle < 420, (
            f"no scale-in within 420 s: {_replicas(modelship, 'mlp-hpa')}"
        )
        time.sleep(3)
    scale_in = time.monotonic() - idle
    print(
        f"HPA timings: scale-out to 2 ready pods {scale_out:.0f}s under load, "
        f"back to 1 {scale_in:.0f}s after the load stopped"
    )
    obj = stack.get_mdep(modelship, NS, "mlp-hpa")
    assert obj["spec"].get("replicas") == 1, "the HPA writes through the scale subresource"
    modelship.kubectl("delete", "mdep", "mlp-hpa", "-n", NS, "--wait=true")
