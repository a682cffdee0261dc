"""Desired children: pure spec -> dict builders, checked by equality on the fields that matter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import desired, naming
from modelship.domain.naming import Owner
from modelship.domain.observation import Artifact
from modelship.domain.plan import build_target
from modelship.domain.release import RevisionPlan, ServingPlan
from modelship.domain.settings import Settings

OWNER = Owner("sentiment", "ml", "uid-1")
HEX = "3" * 64
ART = Artifact(f"sha256:{HEX}", f"file:///artifacts/{HEX}", "int8-dynamic")
REV = "0123456789"


def deployment(s: ModelDeploymentSpec, art: Artifact = ART, replicas: int = 1) -> dict[str, Any]:
    plan = RevisionPlan(REV, art, replicas, "req", render=True)
    return desired.revision_deployment(s, OWNER, plan, Settings())


def spec(**extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"uri": "pvc://models/m.onnx", "sha256": "a" * 64}} | extra
    )


def test_build_job_runs_the_builder_with_the_plan_safely() -> None:
    s = spec()
    target = build_target(s, Settings().artifact_store())
    job = desired.build_job(s, target, OWNER, Settings())
    assert job["metadata"]["name"] == target.job_name
    assert job["metadata"]["ownerReferences"] == [OWNER.reference(controller=False)]
    pod = job["spec"]["template"]
    plan = json.loads(pod["metadata"]["annotations"][naming.ANNOTATION_PLAN])
    assert plan["source"]["uri"] == "pvc://models/m.onnx"
    assert plan["store"]["uri"] == "file:///artifacts"
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["build", "--plan", "/etc/modelship/plan.json"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] == "4Gi"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/artifacts" in mounts
    assert mounts["/mnt/pvc/models"]["readOnly"] is True
    assert job["spec"]["backoffLimit"] == 2


def test_deployment_serves_the_artifact_read_only_from_the_pvc() -> None:
    dep = deployment(spec())
    pod = dep["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["args"] == ["serve"]
    model = next(m for m in server["volumeMounts"] if m["name"] == "model")
    assert model == {"name": "model", "mountPath": "/models", "subPath": HEX, "readOnly": True}
    assert next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"] == {
        "claimName": "modelship-artifacts",
        "readOnly": True,
    }
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert server["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}}
    assert [p["containerPort"] for p in server["ports"]] == [8080, 8081, 9090]
    assert dep["spec"]["selector"]["matchLabels"] == naming.revision_selector("sentiment", REV)
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["ownerReferences"] == [OWNER.reference()]


def test_s3_store_fetches_into_an_empty_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", "arts")
    art = Artifact(ART.digest, f"s3://arts/artifacts/{HEX}")
    pod = deployment(spec(), art)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-artifact"]
    assert next(v for v in pod["volumes"] if v["name"] == "model") == {
        "name": "model",
        "emptyDir": {},
    }


def test_artifact_outside_the_store_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(desired.ArtifactLocationError, match="delete the build Job"):
        deployment(spec(), Artifact(ART.digest, "s3://x/y"))


def test_replicas_follow_spec_replicas_within_bounds() -> None:
    assert desired.desired_replicas(spec(scaling={"minReplicas": 2, "maxReplicas": 5})) == 2
    assert desired.desired_replicas(spec(replicas=4, scaling={"maxReplicas": 5})) == 4
    assert desired.desired_replicas(spec(replicas=9, scaling={"maxReplicas": 5})) == 5


def test_hpa_targets_the_model_deployment_scale_subresource() -> None:
    hpa = desired.autoscaler(spec(scaling={"minReplicas": 2, "maxReplicas": 7}), OWNER)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "sentiment",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 7)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_pdb_only_from_two_replicas() -> None:
    assert desired.disruption_budget(spec(), OWNER) is None
    pdb = desired.disruption_budget(spec(scaling={"minReplicas": 2, "maxReplicas": 3}), OWNER)
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1


def test_services_select_all_pods_the_stable_and_the_canary_revision() -> None:
    stable = RevisionPlan("aaaaaaaaaa", ART, 3, "req")
    canary = RevisionPlan("bbbbbbbbbb", ART, 1, "req", render=True)
    client, stable_svc, canary_svc = desired.services(spec(), OWNER, ServingPlan(stable, canary))
    assert client["metadata"]["name"] == "sentiment"
    assert client["spec"]["selector"] == naming.selector_labels("sentiment")
    assert stable_svc["metadata"]["name"] == "sentiment-stable"
    assert stable_svc["spec"]["selector"][naming.LABEL_REVISION] == "aaaaaaaaaa"
    assert canary_svc["metadata"]["name"] == "sentiment-canary"
    assert canary_svc["spec"]["selector"][naming.LABEL_REVISION] == "bbbbbbbbbb"
    # No release: the canary Service follows the stable revision.
    _, stable_only, canary_only = desired.services(spec(), OWNER, ServingPlan(stable))
    assert canary_only["spec"]["selector"] == stable_only["spec"]["selector"]


def test_the_adopted_deployment_is_selected_by_its_pod_template_hash() -> None:
    legacy = RevisionPlan("aaaaaaaaaa", ART, 2, None, legacy_name="sentiment", template_hash="5f9")
    _, stable_svc, _ = desired.services(spec(), OWNER, ServingPlan(legacy))
    assert stable_svc["spec"]["selector"] == naming.selector_labels("sentiment") | {
        "pod-template-hash": "5f9"
    }
    objects = desired.serving_objects(spec(), OWNER, ServingPlan(legacy), Settings(), "T")
    assert not [o for o in objects.apply if o["kind"] == "Deployment"], "never re-rendered"
    assert objects.scale == [desired.Scale("sentiment", 2, {naming.ANNOTATION_RETIRED_AT: None})]


def test_revision_deployment_selects_and_labels_its_revision() -> None:
    dep = deployment(spec(), replicas=4)
    assert dep["metadata"]["name"] == f"sentiment-{REV}"
    assert dep["spec"]["replicas"] == 4
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == naming.revision_selector("sentiment", REV)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELSHIP_REVISION"] == REV


def test_service_without_grpc_has_no_grpc_port() -> None:
    svc = desired.service(spec(serving={"grpc": False}), OWNER, "s", {})
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "metrics"]


def test_hash_changes_only_for_the_object_whose_content_changed() -> None:
    plan = ServingPlan(RevisionPlan(REV, ART, 1, "req", render=True))

    def hashes(s: ModelDeploymentSpec) -> dict[str, str | None]:
        objects = desired.serving_objects(s, OWNER, plan, Settings(), "T").apply
        return {f"{o['kind']}/{o['metadata']['name']}": desired.applied_hash(o) for o in objects}

    a, b = hashes(spec()), hashes(spec(scaling={"maxReplicas": 9}))
    assert {k for k in a if a[k] != b[k]} == {"HorizontalPodAutoscaler/sentiment"}
