"""kubectl-modelship against a real kube-apiserver with the CRD installed.

There is no operator here: the test writes a ModelDeployment, gives it a status with a Paused
canary through the status subresource (as the operator would), and runs the installed plugin as
a subprocess (``python -m modelship.plugin``, the ``kubectl-modelship`` script, and through
``kubectl`` itself, which finds the script on PATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localkube import Cluster
from modelship.api.v1alpha1 import GROUP, PLURAL, VERSION, CanaryStatus, ModelDeploymentStatus
from modelship.domain import naming
from spec_cases import valid_object

pytestmark = [
    pytest.mark.integration,
    # kubernetes 34's ApiException reads headers through urllib3's deprecated getheaders().
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning"),
]

NAME = "minilm"
REVISION = "7c41d9e2b3"
BIN = Path(sys.executable).parent
SCRIPT = BIN / "kubectl-modelship"
T0 = "2026-12-01T09:00:00Z"
STEPS = [{"weight": 10, "pause": "60s"}, {"weight": 50}, {"weight": 100, "pause": "60s"}]
STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "phase": "Progressing",
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "observedGeneration": 1,
            "lastTransitionTime": T0,
            "reason": "Serving",
            "message": "serving on the stable revision 2f9a0c6e11",
        }
    ],
    "stable": {
        "revision": "2f9a0c6e11",
        "digest": "sha256:" + "3b" * 32,
        "replicas": 3,
        "readyReplicas": 3,
    },
    "canary": {
        "revision": REVISION,
        "digest": "sha256:" + "9e" * 32,
        "phase": "Paused",
        "reason": "WaitingForPromotion",
        "message": "step 2/3 at weight 50% waits for a promote",
        "step": 1,
        "desiredWeight": 50,
        "weight": 40,
        "replicas": 2,
        "readyReplicas": 2,
        "successfulIntervals": 4,
        "failedIntervals": 1,
        "inconclusiveIntervals": 0,
        "attempt": 2,
        "startedAt": T0,
        "stepStartedAt": T0,
        "lastAnalysis": {
            "time": T0,
            "verdict": "Pass",
            "intervalSeconds": 30,
            "requests": 124,
            "stableRequests": 1116,
            "checks": [
                {
                    "name": "p99LatencyMs",
                    "verdict": "Pass",
                    "value": 41.5,
                    "threshold": 500,
                    "samples": 124,
                    "message": "p99 41.5 ms <= 500 ms",
                }
            ],
            "message": "all checks passed",
        },
    },
}
ModelDeploymentStatus.model_validate(STATUS)


@pytest.fixture
def objects(kube_api: Any) -> Any:
    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def deployment(objects: Any, namespace: str) -> str:
    """A ModelDeployment whose canary waits for promotion at step 2/3 of attempt 2."""
    obj = valid_object(NAME)
    obj["spec"]["rollout"] = {"steps": STEPS}
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, NAME, {"status": STATUS}
    )
    return NAME


def _get(objects: Any, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME
    )
    return obj


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return env | extra


def plugin(
    cluster: Cluster, namespace: str, *args: str, program: tuple[str, ...] | None = None
) -> subprocess.CompletedProcess[str]:
    """The plugin (``python -m modelship.plugin`` unless told) at the cluster and namespace."""
    argv = [*(program or (sys.executable, "-m", "modelship.plugin")), *args]
    argv += ["--kubeconfig", str(cluster.kubeconfig), "-n", namespace]
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=60)


def test_status_prints_the_canary(cluster: Cluster, namespace: str, deployment: str) -> None:
    result = plugin(cluster, namespace, "status", deployment)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"ModelDeployment {namespace}/{NAME}"
    for line in [
        "Phase:           Progressing",
        "Ready:           True (Serving) serving on the stable revision 2f9a0c6e11",
        "Stable:          revision 2f9a0c6e11",
        "  Pods:          3/3 ready",
        f"Canary:          revision {REVISION}",
        f"  Digest:        sha256:{'9e' * 32}",
        "  Phase:         Paused (WaitingForPromotion)",
        "  Step:          2/3",
        "  Weight:        40% (desired 50%)",
        "  Pods:          2/2 ready",
        "  Intervals:     4 passed, 1 failed, 0 inconclusive",
        "  Attempt:       2",
        f"  Last analysis: Pass at {T0}, 124 requests (1116 stable) over 30s: all checks passed",
        "    p99LatencyMs: 41.5 vs 500 (Pass) p99 41.5 ms <= 500 ms",
    ]:
        assert line in lines, result.stdout


def test_status_json_through_the_script_and_through_kubectl(
    cluster: Cluster, namespace: str, deployment: str
) -> None:
    script = plugin(cluster, namespace, "status", deployment, "-o", "json", program=(str(SCRIPT),))
    assert script.returncode == 0, script.stderr
    document = json.loads(script.stdout)
    assert document["stable"]["revision"] == "2f9a0c6e11"
    # The same status, whichever optional fields the script prints at their defaults.
    assert CanaryStatus.model_validate(document["canary"] | {"handled": {}}) == (
        CanaryStatus.model_validate(STATUS["canary"] | {"handled": {}})
    )

    # kubectl runs kubectl-modelship from PATH as `kubectl modelship`.
    argv = [str(cluster.kubectl_binary), "modelship", "status", deployment, "-o", "json"]
    argv += ["--kubeconfig", str(cluster.kubeconfig), "-n", namespace]
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    via_kubectl = subprocess.run(
        argv, capture_output=True, text=True, env=_env(PATH=path), timeout=60
    )
    assert via_kubectl.returncode == 0, via_kubectl.stderr
    assert json.loads(via_kubectl.stdout) == document


def test_the_namespace_defaults_to_the_kubeconfig_context(
    cluster: Cluster, namespace: str, deployment: str, tmp_path: Path
) -> None:
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    for context in kubeconfig["contexts"]:
        context["context"]["namespace"] = namespace
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kubeconfig))
    argv = [sys.executable, "-m", "modelship.plugin", "status", deployment]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=_env(KUBECONFIG=str(path)), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ModelDeployment {namespace}/{NAME}\n")


def test_promote_sets_the_annotation_and_leaves_the_spec_alone(
    cluster: Cluster, namespace: str, deployment: str, objects: Any
) -> None:
    before = _get(objects, namespace)
    result = plugin(cluster, namespace, "promote", deployment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"ModelDeployment {namespace}/{NAME} annotated {naming.ANNOTATION_PROMOTE}={REVISION}@s1a2",
        f"promote requested for revision {REVISION} at step 2/3; the operator acts on its next "
        "reconcile",
    ]
    after = _get(objects, namespace)
    assert after["metadata"]["annotations"][naming.ANNOTATION_PROMOTE] == f"{REVISION}@s1a2"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    assert after["status"] == before["status"]

    again = plugin(cluster, namespace, "promote", deployment)
    assert again.returncode == 0, again.stderr
    assert "already has" in again.stdout
    assert (
        _get(objects, namespace)["metadata"]["resourceVersion"]
        == (after["metadata"]["resourceVersion"])
    )


def test_promote_full_and_abort_on_a_paused_canary(
    cluster: Cluster, namespace: str, deployment: str, objects: Any
) -> None:
    full = plugin(cluster, namespace, "promote", deployment, "--full")
    assert full.returncode == 0, full.stderr
    abort = plugin(cluster, namespace, "abort", deployment)
    assert abort.returncode == 0, abort.stderr
    assert f"abort requested for revision {REVISION} at step 2/3" in abort.stdout
    annotations = _get(objects, namespace)["metadata"]["annotations"]
    assert annotations[naming.ANNOTATION_PROMOTE_FULL] == f"{REVISION}@s1a2"
    assert annotations[naming.ANNOTATION_ABORT] == f"{REVISION}@s1a2"


def test_retry_of_a_canary_that_was_not_aborted_is_refused(
    cluster: Cluster, namespace: str, deployment: str, objects: Any
) -> None:
    result = plugin(cluster, namespace, "retry", deployment)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: retry: canary {REVISION} of {namespace}/{NAME} is Paused; retry applies only "
        "while it is Aborted\n"
    )
    annotations = _get(objects, namespace)["metadata"].get("annotations") or {}
    assert naming.ANNOTATION_RETRY not in annotations


@pytest.mark.parametrize("command", ["status", "promote", "abort", "retry"])
def test_a_missing_model_deployment_exits_1(cluster: Cluster, namespace: str, command: str) -> None:
    result = plugin(cluster, namespace, command, "absent")
    assert result.returncode == 1
    assert result.stderr == f"error: ModelDeployment {namespace}/absent not found\n"
