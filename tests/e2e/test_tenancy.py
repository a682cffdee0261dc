"""Two tenants on one cluster: a ModelDeployment gets nothing through the operator that its own
namespace does not give it.

Tenant A (the e2e namespace) builds and serves a model from its own claim, with an S3 Secret
of its own. Tenant B (a namespace of its own, with its own store claim, as a platform team sets
one up) names A's Secret, A's claim and A's artifact, and each time gets a clear error in the
status, never A's data: B's builds fetch their sources themselves, in B's namespace.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from canary_models import canary_model
from localkube import Cluster, stack

pytestmark = pytest.mark.e2e

TENANT_A = stack.E2E_NAMESPACE
TENANT_B = "modelship-e2e-tenant"
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
A_SECRET = "tenant-a-s3"


def _spec(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "optimization": {"precision": "fp32"},
        "serving": {"resources": SMALL},
        "rollout": {"strategy": "rolling"},
    }


def _ready_reason(reason: str) -> Any:
    """The build is stuck for ``reason`` (the Ready condition carries the state's reason)."""

    def done(obj: dict[str, Any]) -> bool:
        return stack.condition(obj, "Ready").get("reason") == reason

    return done


def _deployments(cluster: Cluster, namespace: str, name: str) -> list[str]:
    out = cluster.kubectl(
        "get", "deployments", "-n", namespace, "-l", f"modelship.io/deployment={name}", "-o",
        "name",
    ).stdout  # fmt: skip
    return out.split()


@pytest.fixture(scope="module")
def tenant_a(
    modelship: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A's model, built and serving in A's namespace, and a Secret of A's."""
    # New bytes every run: a model built by an earlier run would be found, not built.
    path = canary_model(tmp_path_factory.mktemp("tenancy") / "model.onnx", uuid.uuid4().int % 9999)
    uri = stack.seed_model(modelship, TENANT_A, path, f"tenancy-{uuid.uuid4().hex[:6]}/model.onnx")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": A_SECRET},
        "stringData": {"AWS_ACCESS_KEY_ID": "tenant-a", "AWS_SECRET_ACCESS_KEY": "a-secret"},
    }
    stack.apply(modelship, TENANT_A, secret)
    stack.apply_mdep(modelship, TENANT_A, "tenant-a", _spec({"uri": uri, "sha256": sha}))
    obj = stack.wait_for(modelship, TENANT_A, "tenant-a", stack.is_ready, "Ready", 900)
    yield {"uri": uri, "sha256": sha, "artifact": obj["status"]["artifact"]}
    modelship.kubectl("delete", "mdep", "tenant-a", "-n", TENANT_A, "--wait=true")
    modelship.kubectl("delete", "secret", A_SECRET, "-n", TENANT_A, check=False)


@pytest.fixture(scope="module")
def tenant_b(modelship: Cluster) -> Iterator[str]:
    """B's namespace with a store claim of its own, as the platform team would give it."""
    modelship.kubectl("create", "namespace", TENANT_B, check=False)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": stack.STORE_PVC},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    stack.apply(modelship, TENANT_B, claim)
    yield TENANT_B
    modelship.kubectl("delete", "namespace", TENANT_B, "--wait=true", timeout=300, check=False)


def test_artifacts_are_published_in_their_namespaces_part_of_the_store(
    tenant_a: dict[str, Any],
) -> None:
    artifact = tenant_a["artifact"]
    hex_ = artifact["digest"].removeprefix("sha256:")
    assert artifact["uri"] == f"file:///artifacts/{TENANT_A}/{hex_}"
    assert len(artifact.get("modelSha256", "")) == 64, "serving pods check the bytes against it"


def test_a_secret_of_another_namespace_cannot_be_named_or_used(
    modelship: Cluster, tenant_a: dict[str, Any], tenant_b: str
) -> None:
    # A namespace/name reference is refused by the API itself.
    spec = _spec({"uri": "s3://tenant-a/model.onnx",
                  "s3": {"secretName": f"{TENANT_A}/{A_SECRET}"}})  # fmt: skip
    obj = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "names-a-secret"}, "spec": spec}  # fmt: skip
    refused = modelship.kubectl(
        "apply", "-n", tenant_b, "-f", "-", input=json.dumps(obj), check=False
    )
    assert refused.returncode != 0
    assert "Secrets of other namespaces cannot be named" in refused.stderr, refused.stderr
    # The bare name is looked up in B's namespace, where there is no such Secret.
    spec["model"]["s3"] = {"secretName": A_SECRET, "endpoint": "https://s3.tenant-a.example"}
    stack.apply_mdep(modelship, tenant_b, "uses-a-secret", spec)
    obj = stack.wait_for(modelship, tenant_b, "uses-a-secret",
                         _ready_reason("BuildPodWaiting"),
                         "the build pod cannot start", 300)  # fmt: skip
    message = stack.condition(obj, "Ready")["message"]
    assert f'secret "{A_SECRET}" not found' in message, message
    assert f"must be in namespace {tenant_b}" in message, message
    modelship.kubectl("delete", "mdep", "uses-a-secret", "-n", tenant_b, "--wait=true")


def test_a_claim_of_another_namespace_is_not_mounted(
    modelship: Cluster, tenant_a: dict[str, Any], tenant_b: str
) -> None:
    stack.apply_mdep(modelship, tenant_b, "uses-a-claim", _spec({"uri": tenant_a["uri"]}))
    obj = stack.wait_for(modelship, tenant_b, "uses-a-claim",
                         _ready_reason("BuildUnschedulable"),
                         "the build pod cannot be scheduled", 300)  # fmt: skip
    message = stack.condition(obj, "Ready")["message"]
    assert f'persistentvolumeclaim "{stack.MODELS_PVC}" not found' in message, message
    assert f"not in namespace {tenant_b}" in message, message
    modelship.kubectl("delete", "mdep", "uses-a-claim", "-n", tenant_b, "--wait=true")


def test_another_namespaces_artifact_is_never_served_without_fetching_the_source(
    modelship: Cluster, tenant_a: dict[str, Any], tenant_b: str
) -> None:
    """B knows A's pin and writes A's artifact into its own index (B's users may edit it): the
    operator builds B's own artifact instead, which needs A's source, which B cannot read."""
    artifact = tenant_a["artifact"]
    hex_ = artifact["digest"].removeprefix("sha256:")
    index = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "modelship-artifacts",
                     "labels": {"app.kubernetes.io/managed-by": "modelship"}},
        "data": {f"sha256-{hex_}": json.dumps(artifact)},
    }  # fmt: skip
    stack.apply(modelship, tenant_b, index)
    pinned = {"uri": tenant_a["uri"], "sha256": tenant_a["sha256"]}
    stack.apply_mdep(modelship, tenant_b, "borrows-a", _spec(pinned))
    obj = stack.wait_for(modelship, tenant_b, "borrows-a",
                         _ready_reason("BuildUnschedulable"),
                         "its own build, which cannot read A's claim", 300)  # fmt: skip
    assert "artifact" not in obj["status"], "A's artifact is not B's"
    assert _deployments(modelship, tenant_b, "borrows-a") == [], "nothing serves A's model in B"
    assert "not found" in stack.condition(obj, "Ready")["message"]
    modelship.kubectl("delete", "mdep", "borrows-a", "-n", tenant_b, "--wait=true")
    modelship.kubectl("delete", "configmap", "modelship-artifacts", "-n", tenant_b, check=False)


def test_build_pods_get_a_network_policy(modelship: Cluster, tenant_a: dict[str, Any]) -> None:
    policy = json.loads(modelship.kubectl(
        "get", "networkpolicy", "tenant-a-build", "-n", TENANT_A, "-o", "json"
    ).stdout)  # fmt: skip
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The API server drops an empty list: no egress rules with Egress in policyTypes is none.
    assert policy["spec"].get("egress", []) == [], "a claim-to-claim build needs no network"
