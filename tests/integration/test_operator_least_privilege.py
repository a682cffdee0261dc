"""The operator works with exactly the permissions it is given (a ServiceAccount's token):
cluster-wide those of deploy/rbac.yaml, and watching one namespace those the chart renders for
``watchNamespaces``, which hold nothing cluster-wide."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_operator_reconcile import (
    Kube,
    Operator,
    model_spec,
    only_job,
    result_json,
)

from chart_helpers import template_text
from polling import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "deploy" / "rbac.yaml"


def token_kubeconfig(
    cluster: Any, tmp_path: Path, manifest: str | None = None, where: str = "modelship-system"
) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (in ``where``, with the
    RBAC of ``manifest``, default deploy/rbac.yaml) and nothing else."""
    cluster.kubectl("create", "namespace", where, check=False)
    if manifest is None:
        cluster.kubectl("apply", "-f", str(RBAC))
    else:
        cluster.kubectl("apply", "-f", "-", input=manifest)
    token = cluster.kubectl(
        "create", "token", "modelship-operator", "-n", where, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cluster_entry = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": cluster_entry["name"], "user": "operator"}}
        ],
        "current-context": "operator",
    }
    path = tmp_path / "operator.kubeconfig"
    path.write_text(json.dumps(config))
    return path


def test_operator_runs_under_its_cluster_role_only(
    cluster: Any, namespace: str, tmp_path: Path, kube_api: Any
) -> None:
    kubeconfig = token_kubeconfig(cluster, tmp_path)
    cluster.kubectl(
        "auth",
        "can-i",
        "create",
        "deployments",
        "-n",
        namespace,
        "--as=system:serviceaccount:modelship-system:modelship-operator",
    )
    denied = cluster.kubectl(
        "auth",
        "can-i",
        "delete",
        "services",
        "-n",
        namespace,
        "--as=system:serviceaccount:modelship-system:modelship-operator",
        check=False,
    )
    assert denied.stdout.strip() == "no", "the role must stay least-privilege"
    kube = Kube(kube_api, namespace)
    # With leader election as the chart runs it: the Lease is covered by the Role too.
    election = {
        "MODELSHIP_LEADER_ELECTION": "true",
        "MODELSHIP_LEADER_ELECTION_NAMESPACE": "modelship-system",
    }
    op = Operator(kubeconfig, namespace, tmp_path / "operator.log", **election).start()
    run_the_whole_path(kube, op)


def run_the_whole_path(kube: Kube, op: Operator) -> None:
    """Build, record, serve (with a PDB), post Events, answer /healthz: every permission used."""
    try:
        kube.apply_mdep("least", model_spec(scaling={"minReplicas": 2, "maxReplicas": 3}))
        job = only_job(kube)
        kube.finish_build(job.metadata.name, ok=True, message=result_json())
        wait_for(
            lambda: kube.get(kube.policy.read_namespaced_pod_disruption_budget, "least"), "PDB"
        )
        wait_for(lambda: kube.phase("least") == "Deploying", "phase Deploying")
        wait_for(lambda: "BuildSucceeded" in kube.events("least"), "events")
        kube.core.read_namespaced_config_map("modelship-artifacts", kube.ns)
        assert wait_for(lambda: op.healthz()[0], "/healthz") == 200
        assert op.healthz() == (200, "ok\n")
    except AssertionError as e:
        op.stop()
        raise AssertionError(f"{e}\n--- operator log ---\n{op.log()}") from None
    finally:
        op.stop()
    log = op.log()
    assert "leading as" in log, log
    assert "released the lease" in log, log
    assert "Forbidden" not in log, log
    assert " 403" not in log, log
    assert "Not enough permissions" not in log, log  # kopf's fallbacks when it cannot scan


def test_operator_watching_one_namespace_runs_under_namespaced_roles_only(
    cluster: Any, namespace: str, tmp_path: Path, kube_api: Any
) -> None:
    # The chart as installed with watchNamespaces: its own namespace for the operator (and the
    # Lease), so no ServiceAccount of another test's cluster-wide binding is involved.
    home = f"{namespace}-op"
    values = {"watchNamespaces": [namespace], "store": {"pvc": {"create": False}}}
    rbac_only = [
        obj
        for obj in yaml.safe_load_all(template_text(values, namespace=home))
        if obj and obj["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                   "ClusterRoleBinding")
    ]  # fmt: skip
    assert not [o for o in rbac_only if o["kind"].startswith("Cluster")], "nothing cluster-wide"
    kubeconfig = token_kubeconfig(cluster, tmp_path, yaml.safe_dump_all(rbac_only), home)
    try:
        account = f"--as=system:serviceaccount:{home}:modelship-operator"

        def can(*args: str) -> bool:
            result = cluster.kubectl("auth", "can-i", *args, account, check=False)
            return str(result.stdout).strip() == "yes"

        assert can("create", "deployments", "-n", namespace)
        assert not can("create", "deployments", "-n", "default"), "only the watched namespace"
        assert not can("list", "modeldeployments.modelship.io", "--all-namespaces")
        assert not can("list", "namespaces")
        assert not can("list", "customresourcedefinitions.apiextensions.k8s.io")
        assert can("patch", "configmaps/modelship-artifacts", "-n", namespace)
        assert can("patch", "configmaps/modelship-mirror", "-n", namespace)
        assert not can("patch", "configmaps/kube-root-ca.crt", "-n", namespace)
        assert can("create", "configmaps", "-n", namespace)  # cannot be limited to a name
        assert not can("get", "secrets", "-n", namespace)
        election = {
            "MODELSHIP_LEADER_ELECTION": "true",
            "MODELSHIP_LEADER_ELECTION_NAMESPACE": home,
        }
        op = Operator(kubeconfig, namespace, tmp_path / "operator.log", **election).start()
        run_the_whole_path(Kube(kube_api, namespace), op)
    finally:
        cluster.kubectl("delete", "namespace", home, "--wait=false", check=False)
