"""deploy/rbac.yaml is generated from modelship.rbac and must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelship import rbac

ROOT = Path(__file__).resolve().parents[2]


def test_rbac_manifest_is_up_to_date() -> None:
    assert (ROOT / "deploy" / "rbac.yaml").read_text() == rbac.render(), (
        "deploy/rbac.yaml is stale: run `.venv/bin/python -m modelship.rbac > deploy/rbac.yaml`"
    )


def test_role_never_grants_wildcards_or_secrets() -> None:
    for rule in rbac.RULES:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]


def test_watched_namespaces_get_roles_and_nothing_cluster_wide() -> None:
    objects = rbac.manifests(["ml", "ml-staging"])
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects
             if o["kind"] == "Role"}  # fmt: skip
    assert roles[("ml", rbac.NAME)]["rules"] == rbac.RULES
    assert roles[("ml-staging", rbac.NAME)]["rules"] == rbac.RULES
    assert roles[(rbac.NAMESPACE, rbac.NAME + "-leader-election")]["rules"] == rbac.LEASE_RULES
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "ml-staging",
                                                                   rbac.NAMESPACE]  # fmt: skip
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": rbac.NAME, "namespace": rbac.NAMESPACE}
        ]


def test_the_whole_cluster_gets_one_cluster_role() -> None:
    kinds = [o["kind"] for o in rbac.manifests()]
    assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]


def test_nothing_cluster_scoped_is_granted() -> None:
    # kopf's scanning of CRDs and Namespaces is off (handlers.py), so the operator reads none.
    resources = {r for rule in rbac.RULES for r in rule["resources"]}
    assert not resources & {"customresourcedefinitions", "namespaces", "nodes", "clusterroles"}


def test_configmap_writes_are_limited_to_the_index_and_mirror_plans_where_kubernetes_allows() -> (
    None
):
    rules = [r for r in rbac.RULES if "configmaps" in r["resources"]]
    by_name = [r for r in rules if r.get("resourceNames")]
    assert by_name == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["modelship-artifacts", "modelship-mirror"],
            "verbs": ["get", "patch"],
        }
    ]
    # A create is authorized before the object (and its name) exists: it cannot be limited.
    assert [r["verbs"] for r in rules if not r.get("resourceNames")] == [["create"]]
    assert not [r for r in rbac.RULES if {"update", "deletecollection"} & set(r["verbs"])]


def test_only_children_we_retire_may_be_deleted() -> None:
    deletable = {r for rule in rbac.RULES if "delete" in rule["verbs"] for r in rule["resources"]}
    assert deletable == {"deployments", "poddisruptionbudgets"}


def test_the_command_line_prints_the_namespaced_variant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rbac.main(["--namespaces", "ml, dev", "--operator-namespace", "ops"])
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(d["kind"], d["metadata"].get("namespace")) for d in docs] == [
        ("ServiceAccount", "ops"),
        ("Role", "ml"),
        ("RoleBinding", "ml"),
        ("Role", "dev"),
        ("RoleBinding", "dev"),
        ("Role", "ops"),
        ("RoleBinding", "ops"),
    ]
