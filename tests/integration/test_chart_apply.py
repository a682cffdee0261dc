"""The chart against a real API server: every rendered object passes a server-side dry run
(admission, schemas, the CRD itself), and the installed RBAC grants the operator exactly what
modelship.rbac declares.

(Named test_chart_apply, not test_chart: tests/unit/test_chart.py has that basename, and test
directories are not packages.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from chart_helpers import CHART, helm, template_text
from modelship import rbac

pytestmark = pytest.mark.integration


def values_for(namespace: str, **extra: Any) -> dict[str, Any]:
    return {"store": {"pvc": {"namespaces": [namespace]}}, **extra}


def dry_run(cluster: Any, manifest: str) -> str:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def test_default_chart_passes_a_server_side_dry_run(cluster: Any, namespace: str) -> None:
    out = dry_run(cluster, template_text(values_for(namespace), namespace=namespace, crds=True))
    for created in (
        "customresourcedefinition.apiextensions.k8s.io/modeldeployments.modelship.io",
        "serviceaccount/modelship-operator",
        "clusterrole.rbac.authorization.k8s.io/modelship-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/modelship-operator",
        "deployment.apps/modelship-operator",
        "service/modelship-operator-metrics",
        "persistentvolumeclaim/modelship-artifacts",
    ):
        assert created in out, out


def test_s3_chart_passes_a_server_side_dry_run(cluster: Any, namespace: str) -> None:
    values = {"store": {"s3": {"bucket": "models", "endpoint": "http://minio:9000"}}}
    out = dry_run(cluster, template_text(values, namespace=namespace))
    assert "deployment.apps/modelship-operator" in out
    assert "persistentvolumeclaim" not in out


def test_installed_rbac_grants_what_rbac_py_declares(cluster: Any, namespace: str) -> None:
    release = f"ms-{uuid.uuid4().hex[:8]}"  # cluster-scoped names stay unique per test
    manifest = template_text(values_for(namespace, fullnameOverride=release), namespace=namespace)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        account = f"system:serviceaccount:{namespace}:{release}-operator"

        can = _can(cluster, account, namespace)
        _assert_grants(can, account, namespace)
        _assert_grants(can, account, "elsewhere")  # cluster-wide
        assert not can("delete", "services")
        assert not can("update", "modeldeployments.modelship.io")
        assert not can("get", "secrets")
        assert not can("get", "configmaps/kube-root-ca.crt"), "only the index ConfigMap"
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=false", input=manifest, check=False)


def test_watched_namespaces_are_granted_there_and_nowhere_else(
    cluster: Any, namespace: str
) -> None:
    release = f"ms-{uuid.uuid4().hex[:8]}"
    values = values_for(namespace, fullnameOverride=release, watchNamespaces=[namespace])
    manifest = template_text(values, namespace=namespace)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        account = f"system:serviceaccount:{namespace}:{release}-operator"
        can = _can(cluster, account, namespace)
        _assert_grants(can, account, namespace)
        for rule in rbac.RULES:
            for verb in rule["verbs"]:
                resource = _resources(rule)[0]
                assert not can(verb, resource, "default"), f"{verb} {resource} outside"
        assert not can("list", "namespaces")
        assert not can("list", "customresourcedefinitions.apiextensions.k8s.io")
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=false", input=manifest, check=False)


Can = Callable[..., bool]


def _can(cluster: Any, account: str, namespace: str) -> Can:
    """Whether ``account`` may: a SubjectAccessReview with the group spelled out, so kinds
    whose CRDs this control plane lacks (Gateway API routes) are asked about exactly as RBAC
    sees them (``kubectl auth can-i`` resolves names through discovery and cannot)."""

    def can(verb: str, resource: str, where: str = namespace) -> bool:
        target, _, subresource = resource.partition("/")
        name = ""
        if target == "configmaps":  # configmaps/NAME names one, it is not a subresource
            name, subresource = subresource, ""
        plural, _, group = target.partition(".")
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": account,
                "resourceAttributes": {
                    "namespace": where, "verb": verb, "group": group, "resource": plural,
                    "subresource": subresource, "name": name,
                },
            },
        }  # fmt: skip
        out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
        return bool(json.loads(out.stdout)["status"].get("allowed"))

    return can


def _resources(rule: dict[str, Any]) -> list[str]:
    """``can``'s spelling of a rule's resources (``kind.group[/sub]``, ``configmaps/name``)."""
    out = []
    for group in rule["apiGroups"]:
        for resource in rule["resources"]:
            plural, slash, subresource = resource.partition("/")
            kind = f"{plural}.{group}{slash}{subresource}" if group else resource
            for name in rule.get("resourceNames") or [""]:
                out.append(f"{kind}/{name}" if name else kind)
    return out


def _assert_grants(can: Can, account: str, where: str) -> None:
    for rule in rbac.RULES:
        for resource in _resources(rule):
            for verb in rule["verbs"]:
                assert can(verb, resource, where), f"{account} cannot {verb} {resource} in {where}"


def test_notes_tell_what_to_do_next(cluster: Any, namespace: str) -> None:
    result = helm(
        "install",
        "modelship",
        str(CHART),
        "--namespace",
        namespace,
        "--dry-run=client",
        f"--kubeconfig={cluster.kubeconfig}",
        values=values_for(namespace, watchNamespaces=["ml"]),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "watches ModelDeployments in ml." in notes
    assert f"kubectl -n {namespace} rollout status deployment/modelship-operator" in notes
    assert f"created (and kept on uninstall) in: {namespace}." in notes
    assert "kubectl apply -f examples/minilm.yaml" in notes
    assert "kubectl get mdep" in notes
    assert "service/modelship-operator-metrics, port 9095" in notes
