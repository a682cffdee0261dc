"""The operator works with exactly the permissions of deploy/rbac.yaml (a ServiceAccount token)."""

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

from polling import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "deploy" / "rbac.yaml"


def token_kubeconfig(cluster: Any, tmp_path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount and nothing else."""
    cluster.kubectl("create", "namespace", "modelship-system", check=False)
    cluster.kubectl("apply", "-f", str(RBAC))
    token = cluster.kubectl(
        "create", "token", "modelship-operator", "-n", "modelship-system", "--duration=1h"
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
    try:
        kube.apply_mdep("least", model_spec(scaling={"minReplicas": 2, "maxReplicas": 3}))
        job = only_job(kube)
        kube.finish_build(job.metadata.name, ok=True, message=result_json())
        wait_for(
            lambda: kube.get(kube.policy.read_namespaced_pod_disruption_budget, "least"), "PDB"
        )
        wait_for(lambda: kube.phase("least") == "Deploying", "phase Deploying")
        wait_for(lambda: "BuildSucceeded" in kube.events("least"), "events")
        kube.core.read_namespaced_config_map("modelship-artifacts", namespace)
    finally:
        op.stop()
    log = op.log()
    assert "leading as" in log, log
    assert "released the lease" in log, log
    assert "Forbidden" not in log, log
    assert " 403" not in log, log
