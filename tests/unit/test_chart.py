"""The Helm chart: RBAC generated from modelship.rbac, strict lint, renders with default, S3 and
demo values, and bad values rejected by values.schema.json with a message naming the value."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from chart_helpers import CHART, NAMESPACE, POD_NAME, helm, one, operator_env, template
from chart_rbac import TEMPLATE, render
from modelship import rbac
from modelship.domain.settings import Settings

# Tests that run helm are slow: helm is built from Go modules on first use (minutes).
slow = pytest.mark.slow

S3_VALUES = {
    "store": {
        "s3": {
            "bucket": "models",
            "prefix": "team-a/artifacts",
            "endpoint": "http://minio.minio:9000",
            "region": "eu-west-1",
            "secretName": "modelship-s3",
        }
    }
}
DEMO_VALUES = {
    "image": {"repository": "modelship-operator", "tag": "dev", "pullPolicy": "Never"},
    "runtimeImage": {"repository": "modelship-runtime", "tag": "dev", "pullPolicy": "Never"},
    "store": {"pvc": {"namespaces": ["default", "ml"], "storageClassName": "local-path"}},
}


def test_rbac_template_is_generated_from_rbac_py() -> None:
    assert TEMPLATE.read_text() == render(), (
        "charts/modelship/templates/rbac.yaml is stale: run `make rbac`"
    )


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What the operator would read from the Deployment's env."""
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"MODELSHIP_{name.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@slow
def test_lint_strict() -> None:
    for values in ({}, S3_VALUES, DEMO_VALUES):
        result = helm("lint", "--strict", str(CHART), values=values)
        assert result.returncode == 0, result.stdout + result.stderr


@slow
def test_default_render(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = template()
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    name = "modelship-operator"
    deployment = one(objects, "Deployment")
    assert deployment["metadata"] == {
        "name": name,
        "namespace": NAMESPACE,
        "labels": deployment["metadata"]["labels"],
    }
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    # A new pod only stands by until the old leader hands the Lease over: no need to Recreate.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == name
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "modelship-operator:0.1.0"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["ports"] == [
        {"name": "metrics", "containerPort": 9095, "protocol": "TCP"},
        {"name": "health", "containerPort": 8086, "protocol": "TCP"},
    ]
    # /healthz (the controller's verdict: stalled loop, hung reconcile, watch missing changes).
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "health"},
        "periodSeconds": 20,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    assert "readinessProbe" not in container  # the operator serves no traffic
    assert container["resources"]["limits"] == {"memory": "512Mi"}

    env = operator_env(objects)
    election = {
        "MODELSHIP_LEADER_ELECTION": "true",
        "MODELSHIP_LEADER_ELECTION_LEASE": name,  # the name the Role's resourceNames allow
        "MODELSHIP_LEADER_ELECTION_LEASE_SECONDS": "15",
        "MODELSHIP_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "10",
        "MODELSHIP_LEADER_ELECTION_RETRY_SECONDS": "2",
    }
    assert {k: env.pop(k) for k in election} == election
    # Downward API: the Lease lives in the operator's namespace; the identity names the pod.
    assert env.pop("MODELSHIP_LEADER_ELECTION_NAMESPACE") == NAMESPACE
    assert env.pop("MODELSHIP_POD_NAME") == POD_NAME
    settings = settings_from(env, monkeypatch)
    assert settings == Settings.model_validate({}), "chart defaults differ from the operator's"
    assert settings.leader_election_lease == name

    service = one(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9095, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels(deployment).items()

    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == settings.store_pvc
    assert pvc["metadata"]["namespace"] == "default"
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "10Gi"}},
    }


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


@slow
def test_rbac_is_rbac_py_with_release_names() -> None:
    objects = template()
    role = one(objects, "ClusterRole")
    assert role["rules"] == rbac.RULES
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelship-operator", "namespace": NAMESPACE}
    ]
    assert one(objects, "ServiceAccount")["metadata"]["namespace"] == NAMESPACE
    lease_role = one(objects, "Role")
    assert lease_role["rules"] == rbac.LEASE_RULES
    assert lease_role["metadata"] == {
        "name": "modelship-operator-leader-election",
        "namespace": NAMESPACE,
        "labels": lease_role["metadata"]["labels"],
    }
    assert one(objects, "RoleBinding")["roleRef"]["name"] == lease_role["metadata"]["name"]
    other = template(namespace="ops", values={"fullnameOverride": "ms2"})
    # The Lease the operator is told to use is the one the Role lets it update.
    assert one(other, "Role")["rules"][1]["resourceNames"] == ["ms2-operator"]
    assert operator_env(other)["MODELSHIP_LEADER_ELECTION_LEASE"] == "ms2-operator"
    assert one(other, "ClusterRole")["metadata"]["name"] == "ms2-operator"
    assert one(other, "ClusterRoleBinding")["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "ms2-operator",
        "namespace": "ops",
    }


@slow
def test_watched_namespaces_get_roles_and_nothing_cluster_wide() -> None:
    # The release's own namespace may be watched too: its Role does not clash with the Lease's.
    objects = template({"watchNamespaces": ["ml", NAMESPACE]})
    kinds = sorted(o["kind"] for o in objects if "Role" in o["kind"])
    assert kinds == ["Role", "Role", "Role", "RoleBinding", "RoleBinding", "RoleBinding"]
    roles = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o["rules"]
        for o in objects
        if o["kind"] == "Role"
    }
    assert roles == {
        ("ml", "modelship-operator"): rbac.RULES,
        (NAMESPACE, "modelship-operator"): rbac.RULES,
        (NAMESPACE, "modelship-operator-leader-election"): rbac.LEASE_RULES,
    }
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "modelship-operator", "namespace": NAMESPACE}
        ]
    # The same objects as the plain manifests for these namespaces (labels aside).
    plain = rbac.manifests(["ml", NAMESPACE])
    drop = lambda o: {k: v for k, v in o["metadata"].items() if k != "labels"}  # noqa: E731
    assert sorted((o["kind"], str(drop(o))) for o in objects if o["kind"] != "Deployment"
                  and ("Role" in o["kind"] or o["kind"] == "ServiceAccount")) == sorted(
        (o["kind"], str(drop(o))) for o in plain
    )  # fmt: skip


@slow
def test_liveness_off() -> None:
    objects = template({"liveness": {"port": 0}})
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "livenessProbe" not in container
    assert [p["name"] for p in container["ports"]] == ["metrics"]
    assert operator_env(objects)["MODELSHIP_HEALTH_PORT"] == "0"


@slow
def test_every_operator_setting_is_set_by_the_chart() -> None:
    env = operator_env(template()) | operator_env(template(S3_VALUES))
    missing = {f"MODELSHIP_{n.upper()}" for n in Settings.model_fields} - env.keys()
    assert not missing, f"the chart does not set {sorted(missing)}"


@slow
def test_s3_store(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = template(S3_VALUES)
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    env = operator_env(objects)
    assert "MODELSHIP_STORE_PVC" not in env
    settings = settings_from(env, monkeypatch)
    store = settings.artifact_store()
    assert store.uri == "s3://models/team-a/artifacts"
    assert store.s3 is not None
    assert (store.s3.endpoint, store.s3.region, store.s3.secret_name) == (
        "http://minio.minio:9000",
        "eu-west-1",
        "modelship-s3",
    )


@slow
def test_demo_values(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = template(DEMO_VALUES)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("modelship-operator:dev", "Never")
    settings = settings_from(operator_env(objects), monkeypatch)
    assert (settings.runtime_image, settings.image_pull_policy) == (
        "modelship-runtime:dev",
        "Never",
    )
    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert [(c["metadata"]["namespace"], c["spec"]["storageClassName"]) for c in claims] == [
        ("default", "local-path"),
        ("ml", "local-path"),
    ]


@slow
def test_tuning_and_watched_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "watchNamespaces": ["ml", "ml-staging"],
        "logLevel": "DEBUG",
        "reconcile": {"concurrency": 32, "resyncSeconds": 600, "pollSeconds": 2.5},
        "build": {"backoffLimit": 0, "deadlineSeconds": 1000000, "cpu": 4, "memory": "8Gi"},
    }
    env = operator_env(template(values))
    assert env["MODELSHIP_LOG_LEVEL"] == "DEBUG"
    settings = settings_from(env, monkeypatch)
    assert settings.namespaces == ["ml", "ml-staging"]
    assert (settings.concurrency, settings.resync_seconds, settings.poll_seconds) == (32, 600, 2.5)
    assert (settings.build_backoff_limit, settings.build_deadline_seconds) == (0, 1000000)
    assert (settings.build_cpu, settings.build_memory) == ("4", "8Gi")


@slow
def test_metrics_off() -> None:
    objects = template({"metrics": {"port": 0}})
    assert not [o for o in objects if o["kind"] == "Service"]
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert operator_env(objects)["MODELSHIP_METRICS_PORT"] == "0"


@slow
@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"replicaCount": -1}, "replicaCount", id="negative-replicas"),
        pytest.param({"leaderElection": {"leaseSeconds": 0}}, "leaseSeconds", id="zero-lease"),
        pytest.param({"replicas": 1}, "replicas", id="unknown-key"),
        pytest.param({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy", id="pull-policy"),
        pytest.param({"store": {"pvc": {"accessModes": ["RWO"]}}}, "accessModes", id="access"),
        pytest.param({"store": {"s3": {"bucket": "Bad_Bucket"}}}, "bucket", id="s3-bucket"),
        pytest.param({"metrics": {"port": 70000}}, "port", id="metrics-port"),
        pytest.param({"reconcile": {"concurrency": 0}}, "concurrency", id="concurrency"),
        pytest.param({"build": {"deadlineSeconds": 10}}, "deadlineSeconds", id="deadline"),
        pytest.param({"watchNamespaces": "ml"}, "watchNamespaces", id="namespaces-not-a-list"),
        pytest.param({"liveness": {"periodSeconds": 0}}, "periodSeconds", id="probe-period"),
    ],
)
def test_bad_values_are_rejected(values: dict[str, Any], message: str) -> None:
    result = helm("template", "modelship", str(CHART), values=values)
    assert result.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_values_file_is_valid_yaml_with_documented_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicaCount"] == 1
    assert values["store"]["pvc"]["name"] == Settings.model_fields["store_pvc"].default


@slow
def test_election_timings_out_of_order_are_rejected() -> None:
    values = {"leaderElection": {"leaseSeconds": 10, "renewDeadlineSeconds": 10, "retrySeconds": 2}}
    result = helm("template", "modelship", str(CHART), values=values)
    assert result.returncode != 0, "accepted a renew deadline as long as the lease"
    assert "retrySeconds < renewDeadlineSeconds < leaseSeconds, got 2 < 10 < 10" in result.stderr
