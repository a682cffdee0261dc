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


def build_pod(s: ModelDeploymentSpec, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    target = build_target(s, settings.artifact_store().for_namespace(OWNER.namespace))
    pod: dict[str, Any] = desired.build_job(s, target, OWNER, settings)["spec"]["template"]
    return pod


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def secrets(container: dict[str, Any]) -> set[str]:
    """The Secrets a container's environment comes from."""
    return {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def s3_store(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", "arts")
    monkeypatch.setenv("MODELSHIP_STORE_S3_SECRET", "store-creds")
    return Settings()


def test_build_job_runs_the_builder_with_the_plan_safely() -> None:
    s = spec()
    target = build_target(s, Settings().artifact_store().for_namespace(OWNER.namespace))
    job = desired.build_job(s, target, OWNER, Settings())
    assert job["metadata"]["name"] == target.job_name
    assert job["metadata"]["ownerReferences"] == [OWNER.reference(controller=False)]
    pod = job["spec"]["template"]
    plan = json.loads(pod["metadata"]["annotations"][naming.ANNOTATION_PLAN])
    assert plan["source"]["uri"] == "pvc://models/m.onnx"
    assert plan["store"]["uri"] == "file:///artifacts/ml"
    assert list(containers(pod)) == ["fetch", "convert", "builder"]
    builder = pod["spec"]["containers"][0]
    assert builder["args"][:4] == ["build", "--plan", "/etc/modelship/plan.json", "--step"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for container in containers(pod).values():
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["limits"]["memory"] == "4Gi"
    assert mounts(containers(pod)["fetch"])["source-0"] == {
        "name": "source-0", "mountPath": "/mnt/pvc/models", "readOnly": True
    }  # fmt: skip
    assert mounts(builder)["store"]["mountPath"] == "/artifacts"
    assert job["spec"]["backoffLimit"] == 2


def test_unpickling_runs_where_there_are_no_credentials_and_no_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The convert step may run the model file's code: it gets no Secret, no store, no claim,
    and nothing it could change but its own scratch volume."""
    pickled = spec(model={"uri": "s3://team/m.joblib", "format": "sklearn",
                          "allowPickle": True, "s3": {"secretName": "team-creds"}})  # fmt: skip
    for settings in (Settings(), s3_store(monkeypatch)):
        convert = containers(build_pod(pickled, settings))["convert"]
        assert secrets(convert) == set()
        assert "valueFrom" not in json.dumps(convert["env"])
        seen = mounts(convert)
        assert set(seen) == {"plan", "sources", "convert"}
        assert all(m.get("readOnly") for m in seen.values() if m["name"] != "convert")
        assert {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"} in convert["env"]


def test_source_credentials_are_never_the_stores_nor_the_other_way_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = s3_store(monkeypatch)
    with_secret = spec(model={"uri": "s3://team/m.onnx", "s3": {"secretName": "team-creds"}})
    steps = containers(build_pod(with_secret, settings))
    assert secrets(steps["fetch"]) == {"team-creds"}
    assert secrets(steps["builder"]) == {"store-creds"}
    # Without a Secret of its own the source is fetched without credentials, never the store's.
    anonymous = containers(build_pod(spec(model={"uri": "s3://team/m.onnx"}), settings))
    assert secrets(anonymous["fetch"]) == set()
    assert "store" not in mounts(anonymous["fetch"])


def test_only_the_fetch_step_mounts_the_source_claims_and_only_the_publish_step_the_store() -> (
    None
):
    s = spec(optimization={"calibration": {"uri": "pvc://calib/c.npz"}})
    steps = containers(build_pod(s))
    assert {n for n in mounts(steps["fetch"]) if n.startswith("source-")} == {
        "source-0",
        "source-1",
    }
    for name in ("convert", "builder"):
        assert not [n for n in mounts(steps[name]) if n.startswith("source-")]
    assert [n for n, c in steps.items() if "store" in mounts(c)] == ["builder"]
    assert mounts(steps["builder"])["convert"]["readOnly"] is True


def test_build_scratch_and_downloads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_BUILD_DOWNLOAD_LIMIT", "1Gi")
    monkeypatch.setenv("MODELSHIP_BUILD_SCRATCH_LIMIT", "3Gi")
    pod = build_pod(spec(), Settings())
    empty_dirs = {v["name"]: v["emptyDir"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    assert empty_dirs == {
        "sources": {"sizeLimit": "1Gi"},
        "convert": {"sizeLimit": "3Gi"},
        "tmp": {"sizeLimit": "3Gi"},
    }
    whole = (1 + 2 * 3) * 1024 + 256  # Mi: every volume, and the logs
    for container in containers(pod).values():
        resources = container["resources"]
        assert resources["requests"]["ephemeral-storage"] == f"{whole}Mi"
        assert resources["limits"]["ephemeral-storage"] == f"{whole}Mi"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert int(env["MODELSHIP_MAX_DOWNLOAD_BYTES"]) < 1024**3
        assert int(env["MODELSHIP_MAX_EXTRACT_BYTES"]) < 3 * 1024**3
    defaults = Settings.model_fields
    assert (defaults["build_download_limit"].default, defaults["build_scratch_limit"].default) == (
        "2Gi",
        "4Gi",
    )


def test_build_pods_get_a_network_policy_that_lets_out_only_what_they_need() -> None:
    s = spec(model={"uri": "https://models.example.com:8443/m.onnx"})
    target = build_target(s, Settings().artifact_store().for_namespace(OWNER.namespace))
    policy = desired.build_network_policy(s, target, OWNER, Settings())
    assert policy["metadata"]["name"] == "sentiment-build"
    assert policy["metadata"]["ownerReferences"] == [OWNER.reference()]
    pod_labels = desired.build_job(s, target, OWNER, Settings())["spec"]["template"]["metadata"][
        "labels"
    ]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"], "nothing may connect to a build pod"
    dns, out = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert out["ports"] == [{"protocol": "TCP", "port": 8443}]
    v4, v6 = (peer["ipBlock"] for peer in out["to"])
    assert v4["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12"} <= set(v4["except"])
    assert {"fe80::/10", "fc00::/7"} <= set(v6["except"])


def test_a_build_from_a_claim_into_a_claim_may_not_connect_anywhere() -> None:
    s = spec()
    target = build_target(s, Settings().artifact_store().for_namespace(OWNER.namespace))
    assert desired.build_network_policy(s, target, OWNER, Settings())["spec"]["egress"] == []


def test_the_operator_may_let_builds_reach_inside_the_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSHIP_BUILD_INTERNAL_SOURCES", "true")
    monkeypatch.setenv("MODELSHIP_CLUSTER_CIDRS", "10.96.0.0/12,10.244.0.0/16")
    extra = [{"to": [{"namespaceSelector": {"matchLabels": {"name": "minio"}}}]}]
    monkeypatch.setenv("MODELSHIP_BUILD_EXTRA_EGRESS", json.dumps(extra))
    s = spec(model={"uri": "s3://b/m.onnx", "s3": {"endpoint": "http://minio.minio:9000"}})
    target = build_target(s, Settings().artifact_store().for_namespace(OWNER.namespace))
    _dns, out, added = desired.build_network_policy(s, target, OWNER, Settings())["spec"]["egress"]
    assert out["ports"] == [{"protocol": "TCP", "port": 9000}]
    assert {"namespaceSelector": {}} in out["to"]
    assert all("except" not in peer.get("ipBlock", {}) for peer in out["to"])
    assert added == extra[0]


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


def test_serving_pods_read_their_own_namespaces_part_of_the_store_only() -> None:
    def model_mount(uri: str) -> dict[str, Any]:
        pod = deployment(spec(), Artifact(ART.digest, uri))["spec"]["template"]["spec"]
        return next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")

    assert model_mount(f"file:///artifacts/ml/{HEX}")["subPath"] == f"ml/{HEX}"
    assert model_mount(f"file:///artifacts/{HEX}")["subPath"] == HEX, "built before the parts"
    for foreign in (f"file:///artifacts/other/{HEX}", f"file:///artifacts/ml/../other/{HEX}",
                    f"file:///artifacts/ml/{'4' * 64}"):  # fmt: skip
        with pytest.raises(desired.ArtifactLocationError, match="another namespace"):
            model_mount(foreign)


def test_s3_serving_pods_download_from_their_namespaces_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", "arts")

    def download_uri(uri: str) -> str:
        pod = deployment(spec(), Artifact(ART.digest, uri))["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
        return str(env["MODELSHIP_ARTIFACT_URI"])

    assert download_uri(f"s3://arts/artifacts/ml/{HEX}") == "s3://arts/artifacts/ml"
    assert download_uri(f"s3://arts/artifacts/{HEX}") == "s3://arts/artifacts"
    with pytest.raises(desired.ArtifactLocationError):
        download_uri(f"s3://arts/artifacts/other/{HEX}")


def test_serving_pods_are_told_the_models_sha256() -> None:
    art = Artifact(ART.digest, f"file:///artifacts/ml/{HEX}", model_sha256="5" * 64)
    server = deployment(spec(), art)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["MODELSHIP_MODEL_SHA256"] == "5" * 64


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


@pytest.mark.parametrize(
    ("fmt", "image"),
    [
        ("pytorch", "modelship-convert-torch:7"),
        ("tensorflow", "modelship-convert-tensorflow:7"),
        ("keras", "modelship-convert-tensorflow:7"),
        ("tflite", "modelship-convert-tensorflow:7"),
        ("onnx", "modelship-runtime:7"),
    ],
)
def test_the_convert_step_of_a_framework_model_runs_in_its_converter_image(
    fmt: str, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the convert step needs the framework: fetch and publish stay on the runtime image,
    and the serving image never carries one."""
    monkeypatch.setenv("MODELSHIP_RUNTIME_IMAGE", "modelship-runtime:7")
    monkeypatch.setenv("MODELSHIP_TORCH_CONVERTER_IMAGE", "modelship-convert-torch:7")
    monkeypatch.setenv("MODELSHIP_TENSORFLOW_CONVERTER_IMAGE", "modelship-convert-tensorflow:7")
    s = spec(model={"uri": "s3://team/model.bin", "format": fmt})
    steps = containers(build_pod(s, Settings()))
    assert steps["convert"]["image"] == image
    assert steps["fetch"]["image"] == steps["builder"]["image"] == "modelship-runtime:7"
    # The framework's home (Keras writes ~/.keras) is the step's own scratch, not the image.
    assert {"name": "HOME", "value": "/tmp"} in steps["convert"]["env"]
    assert mounts(steps["convert"])["convert"]["mountPath"] == "/tmp"
    assert deployment(s)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "modelship-runtime:7"
    )
