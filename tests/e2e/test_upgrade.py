"""Upgrading the operator from the release before revisions, under load.

The previous operator (built from its git commit, as its users run it) creates one Deployment
named like the ModelDeployment. Upgrading the chart must adopt it as the stable revision without
replacing a pod or failing a request, and the next release must replace it like any revision.
Runs last in the tier: it installs the previous chart over the current one, then upgrades back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from canary_models import GOOD_X, calibration_rows, canary_model
from localkube import Cluster, stack
from localkube.load import HeyLoad, infer_body, wait_until_serving

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "2ae69d5"
"""The last commit before revisions: its operator created one Deployment per ModelDeployment."""
PREVIOUS_IMAGE = "modelship-operator:previous"
NS = stack.E2E_NAMESPACE
NAME = "upgraded"


@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tree = tmp_path_factory.mktemp("previous") / "tree"
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], check=False).returncode:
        # A shallow clone: fetch the one commit from where this clone came from.
        subprocess.run([*git, "fetch", "--quiet", "origin", PREVIOUS], check=False)
    if subprocess.run([*git, "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], check=False).returncode:
        pytest.skip(f"commit {PREVIOUS} (the operator to upgrade from) is not in this clone and "
                    "could not be fetched: clone with history to run the upgrade test")  # fmt: skip
    subprocess.run([*git, "worktree", "add", "--detach", str(tree), PREVIOUS],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)  # fmt: skip


def _legacy_pods(cluster: Cluster) -> dict[str, tuple[str, int]]:
    """uid -> (pod-template-hash, restarts) of the serving pods without a revision label."""
    pods = json.loads(cluster.kubectl(
        "get", "pods", "-n", NS, "-l", f"modelship.io/deployment={NAME},!modelship.io/revision",
        "-o", "json",
    ).stdout)["items"]  # fmt: skip
    out = {}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        restarts = sum(c.get("restartCount", 0)
                       for c in pod.get("status", {}).get("containerStatuses") or [])  # fmt: skip
        out[pod["metadata"]["uid"]] = (pod["metadata"]["labels"]["pod-template-hash"], restarts)
    return out


def _only_operators_of(cluster: Cluster, image: str) -> None:
    """Wait until every operator pod runs ``image`` and the ones before are gone (helm --wait
    returns while the replaced pods still terminate, and one of them may still lead)."""
    deadline = time.monotonic() + 300
    while True:
        pods = json.loads(cluster.kubectl(
            "get", "pods", "-n", stack.OPERATOR_NAMESPACE, "-l",
            "app.kubernetes.io/component=operator", "-o", "json",
        ).stdout)["items"]  # fmt: skip
        images = {c["image"] for p in pods for c in p["spec"]["containers"]}
        ready = all(
            any(c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions") or [])
            for p in pods
        )  # fmt: skip
        if pods and images == {image} and ready:
            return
        assert time.monotonic() < deadline, f"operator pods still run {images}"
        time.sleep(1)


def _spec(uri: str, calibration: str) -> dict[str, Any]:
    # Unpinned on purpose: the previous operator then takes the digest the builder reports.
    return {
        "model": {"uri": uri},
        "optimization": {"precision": "fp32", "calibration": {"uri": calibration, "samples": 32}},
        "serving": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                  "limits": {"cpu": "1", "memory": "1Gi"}}},
        "scaling": {"minReplicas": 2, "maxReplicas": 2},
        "rollout": {"steps": [{"weight": 50, "pause": "10s"}],
                    "analysis": {"interval": "5s", "minRequests": 10}},
    }  # fmt: skip


def test_upgrading_adopts_the_previous_deployment_without_replacing_a_pod_or_failing_a_request(
    modelship: Cluster, previous_tree: Path, tmp_path: Path
) -> None:
    cluster = modelship
    subprocess.run(
        ["bash", str(previous_tree / "hack" / "build-image.sh"), "operator", PREVIOUS_IMAGE],
        check=True, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    cluster.load_docker_image(PREVIOUS_IMAGE)
    stack.helm_install(cluster, namespaces=["default", NS], chart=previous_tree / "charts" /
                       "modelship", operator_image=PREVIOUS_IMAGE)  # fmt: skip
    _only_operators_of(cluster, PREVIOUS_IMAGE)
    prefix = f"upgrade-{uuid.uuid4().hex[:6]}"
    v1 = stack.seed_model(cluster, NS, canary_model(tmp_path / "v1.onnx", 11), f"{prefix}/v1.onnx")
    v2 = stack.seed_model(cluster, NS, canary_model(tmp_path / "v2.onnx", 12), f"{prefix}/v2.onnx")
    np.savez(tmp_path / "calibration.npz", x=calibration_rows())
    calibration = stack.seed_model(cluster, NS, tmp_path / "calibration.npz",
                                   f"{prefix}/calibration.npz")  # fmt: skip
    obj = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": NAME, "namespace": NS}, "spec": _spec(v1, calibration)}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    stack.wait_for(cluster, NS, NAME, lambda o: stack.is_ready(o) and
                   o["status"].get("readyReplicas") == 2, "Ready under the previous operator",
                   900)  # fmt: skip
    legacy = json.loads(cluster.kubectl("get", "deployment", NAME, "-n", NS, "-o", "json").stdout)
    before = _legacy_pods(cluster)
    assert len(before) == 2, before

    url = f"{stack.service_url(cluster, NS, NAME)}/v2/models/{NAME}/infer"
    wait_until_serving(url, infer_body(GOOD_X))
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=1200) as load:  # fmt: skip
        stack.helm_install(cluster, namespaces=["default", NS])
        adopted = stack.wait_for(cluster, NS, NAME, lambda o: bool(o["status"].get("stable")) and
                                 stack.is_ready(o), "adopted as the stable revision",
                                 600)  # fmt: skip
        assert _legacy_pods(cluster) == before, "adoption must not replace or restart a pod"
        now = json.loads(cluster.kubectl("get", "deployment", NAME, "-n", NS, "-o", "json").stdout)
        assert now["spec"]["template"] == legacy["spec"]["template"], "its template is untouched"
        assert "canary" not in adopted["status"], "the same artifact: nothing to release"
        # The next release replaces it like any revision.
        cluster.kubectl("patch", "mdep", NAME, "-n", NS, "--type=merge", "-p",
                        json.dumps({"spec": {"model": {"uri": v2}}}))  # fmt: skip
        stack.wait_for(cluster, NS, NAME, lambda o: (o["status"].get("canary") or {}).get(
            "phase") == "Succeeded" and stack.is_ready(o), "the next release promoted",
            900)  # fmt: skip
        for uid in _legacy_pods(cluster):
            assert uid in before, "no new pod of the previous Deployment was ever created"
        result = load.stop()
    print(f"upgrade under load: {result.total} requests, codes {result.codes}, {result.errors}")
    assert result.total > 300
    assert result.failed == 0, result
    deadline = time.monotonic() + 120
    while cluster.kubectl("get", "deployment", NAME, "-n", NS, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the adopted Deployment is deleted after the release"
        time.sleep(1)
    cluster.kubectl("delete", "mdep", NAME, "-n", NS, "--wait=true")
