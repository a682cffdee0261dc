"""What the e2e tests that release canaries share: their models, copied into the namespace's
models PVC once each, and how they read a ModelDeployment's canary status and Events."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from canary_models import GOOD_X, calibration_rows, canary_model
from localkube import Cluster, stack
from localkube.load import infer_body, wait_until_serving

NS = stack.E2E_NAMESPACE
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
"""Serving resources of the e2e tier's ModelDeployments (the node has 2 CPUs)."""
CREATED: list[str] = []
"""ModelDeployments the running test created (in modules that use the fixture below)."""


@pytest.fixture(autouse=True)
def delete_what_the_test_created(modelship: Cluster) -> Iterator[None]:
    """A failed test must not leave its ModelDeployments (and Jobs, pods) to the next ones; a
    module that imports this fixture gets it for every test."""
    yield
    while CREATED:
        modelship.kubectl("delete", "mdep", CREATED.pop(), "-n", NS, "--ignore-not-found",
                          "--wait=true", timeout=180)  # fmt: skip


class Models:
    """Canary-family ONNX models (canary_models.canary_model) under ``prefix`` in the PVC."""

    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        prefix: str,
        seeds: tuple[int, int] = (11, 12),
        labels: np.ndarray | None = None,
    ) -> None:
        self.cluster, self.workdir, self.prefix, self.seeds = cluster, workdir, prefix, seeds
        self.labels = labels
        """A class per calibration row (the calibration file's 'labels' array), or none."""
        self.uris: dict[str, tuple[str, str]] = {}

    def get(self, name: str, seed: int | None = None, **kind: Any) -> tuple[str, str]:
        """(pvc:// URI, sha256) of model ``name``: seed ``seeds[0]`` for v1, else ``seeds[1]``
        unless given; ``kind`` as canary_model takes it (fails_on_positive, slow)."""
        if name not in self.uris:
            if seed is None:
                seed = self.seeds[0] if name == "v1" else self.seeds[1]
            path = canary_model(self.workdir / f"{name}.onnx", seed=seed, **kind)
            uri = stack.seed_model(self.cluster, NS, path, f"{self.prefix}/{name}.onnx")
            self.uris[name] = (uri, hashlib.sha256(path.read_bytes()).hexdigest())
        return self.uris[name]

    def calibration(self) -> str:
        """Samples every version runs on (the failing one needs x[:,0] <= 0 to be built)."""
        if "calibration" not in self.uris:
            path = self.workdir / "calibration.npz"
            if self.labels is None:
                np.savez(path, x=calibration_rows())
            else:
                np.savez(path, x=calibration_rows(), labels=self.labels)
            uri = stack.seed_model(self.cluster, NS, path, f"{self.prefix}/calibration.npz")
            self.uris["calibration"] = (uri, "")
        return self.uris["calibration"][0]


def canary_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status", {}).get("canary") or {})


def events(cluster: Cluster, name: str, namespace: str = NS) -> dict[str, str]:
    """The latest message of each Event reason on ModelDeployment ``name``."""
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
        "-o", "json",
    ).stdout  # fmt: skip
    return {e["reason"]: e["message"] for e in json.loads(out)["items"]}


def first_revision(cluster: Cluster, name: str, spec: dict[str, Any], pods: int = 2) -> Any:
    """Apply a ModelDeployment and wait until ``pods`` pods serve it; its object."""
    stack.apply_mdep(cluster, NS, name, spec)
    return stack.wait_for(
        cluster, NS, name,
        lambda o: stack.is_ready(o) and o["status"].get("readyReplicas") == pods,
        f"Ready with {pods} pods", 900,
    )  # fmt: skip


def infer_url(cluster: Cluster, name: str) -> str:
    """The client Service's infer URL, once the Service answers (kube-proxy programs a new
    Service's rules a moment after it exists; until then its ClusterIP has no route)."""
    url = f"{stack.service_url(cluster, NS, name)}/v2/models/{name}/infer"
    wait_until_serving(url, infer_body(GOOD_X))
    return url


def pod_restarts(
    cluster: Cluster, namespace: str, selector: str
) -> dict[str, list[tuple[int, str | None]]]:
    """Each pod's containers, as (restarts, why the last one ended), of the pods ``selector``
    picks in ``namespace``."""
    pods = json.loads(cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", selector, "-o", "json"
    ).stdout)["items"]  # fmt: skip
    return {
        p["metadata"]["name"]: [
            (
                c.get("restartCount", 0),
                ((c.get("lastState") or {}).get("terminated") or {}).get("reason"),
            )
            for c in p["status"].get("containerStatuses", [])
        ]
        for p in pods
    }


def pod_metrics(cluster: Cluster, name: str) -> list[tuple[str, str]]:
    """(revision, /metrics text) of every running serving pod of ModelDeployment ``name``."""
    pods = json.loads(cluster.kubectl(
        "get", "pods", "-n", NS, "-l", f"modelship.io/deployment={name}", "-o", "json",
    ).stdout)["items"]  # fmt: skip
    out = []
    for pod in pods:
        ip = pod["status"].get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=5) as response:
            text = response.read().decode()
        out.append((pod["metadata"]["labels"].get("modelship.io/revision", ""), text))
    return out


def series_sum(text: str, metric: str, **labels: str) -> float:
    """The sum of ``metric``'s samples in a /metrics text whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total
