"""The operator's least-privilege RBAC, declared next to the code that needs it.

``python -m modelship.rbac > deploy/rbac.yaml`` regenerates the manifest (``make rbac``); a unit
test fails when the file drifts, and an integration test runs the operator with exactly these
permissions (cluster-wide, and scoped to given namespaces). Each rule says which module needs it.

Scope: :data:`RULES` are all namespaced. Watching every namespace, they are one ClusterRole;
watching given namespaces (``MODELSHIP_NAMESPACES``, the chart's ``watchNamespaces``), they are
one Role in each, and the operator holds no cluster-wide permission at all (kopf's scanning of
CRDs and Namespaces is off, see handlers.py). ``python -m modelship.rbac --namespaces a,b``
prints that variant. What a stolen token can do is in docs/operator.md ("RBAC").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from modelship.api import v1alpha1 as api
from modelship.domain import naming

NAME = "modelship-operator"
NAMESPACE = "modelship-system"
LEASE_ROLE_SUFFIX = "-leader-election"

RULES: list[dict[str, Any]] = [
    # handlers.py watches ModelDeployments (controller.py lists them to audit the watch);
    # reconciler.py writes only their status.
    {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]},
    # router: gatewayAPI: a finalizer gives the user's routes back before the ModelDeployment
    # goes (JSON patch of metadata.finalizers only).
    {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["patch"]},
    # router: gatewayAPI: the user's routes; only the backendRefs of the rule that points at
    # the ModelDeployment are patched (a JSON patch guarded by a test of their value).
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes", "grpcroutes"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    # Build Jobs: created once per digest; "patch" adds an owner when ModelDeployments share one.
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    # The NetworkPolicy of a ModelDeployment's build pods: server-side applied before the Job
    # ("get": one of that name that is not ours is reported, never taken over).
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "create", "patch"],
    },
    # Serving children: server-side apply (create + patch); PDBs are deleted below 2 replicas;
    # a revision's Deployment is deleted a scaleDownDelay after a release retired it. Only
    # objects whose controller is the ModelDeployment are ever patched or deleted.
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["services"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    # Health (serving pods) and build results (builder pods' termination messages): read only.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    # The artifact index and the mirror plans (one ConfigMap each per namespace). "create"
    # cannot be limited to a name (Kubernetes authorizes a create before the object exists),
    # so it allows ConfigMaps of any name; reading and patching are limited to those two.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [naming.INDEX_CONFIGMAP, naming.MIRROR_CONFIGMAP],
        "verbs": ["get", "patch"],
    },
    # Events on ModelDeployments (ours and kopf's warnings), always created, never changed.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def lease_rules(name: str = NAME) -> list[dict[str, Any]]:
    """leader.py: one Lease in the operator's own namespace, named after the operator.
    "create" cannot be limited to a name (the name is not known before the object exists)."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [name],
            "verbs": ["get", "update"],
        },
    ]


LEASE_RULES = lease_rules()

_RBAC = "rbac.authorization.k8s.io/v1"
LABELS = {"app.kubernetes.io/name": "modelship", "app.kubernetes.io/component": "operator"}


def service_account(name: str = NAME, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": LABELS},
    }


def _binding(
    kind: str, role_kind: str, name: str, sa: str, sa_namespace: str, namespace: str | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": _RBAC,
        "kind": kind,
        "metadata": meta | {"labels": LABELS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}],
    }


def cluster_wide(name: str = NAME, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The RULES in every namespace: when the operator watches the whole cluster."""
    return [
        {
            "apiVersion": _RBAC,
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": LABELS},
            "rules": RULES,
        },
        _binding("ClusterRoleBinding", "ClusterRole", name, name, namespace, None),
    ]


def watching(watched: str, name: str = NAME, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The RULES in one watched namespace only."""
    return [
        {
            "apiVersion": _RBAC,
            "kind": "Role",
            "metadata": {"name": name, "namespace": watched, "labels": LABELS},
            "rules": RULES,
        },
        _binding("RoleBinding", "Role", name, name, namespace, watched),
    ]


def leader_election(name: str = NAME, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The Lease, in the operator's own namespace (which may be a watched one too)."""
    role = name + LEASE_ROLE_SUFFIX
    binding = _binding("RoleBinding", "Role", role, name, namespace, namespace)
    return [
        {
            "apiVersion": _RBAC,
            "kind": "Role",
            "metadata": {"name": role, "namespace": namespace, "labels": LABELS},
            "rules": lease_rules(name),
        },
        binding,
    ]


def manifests(
    namespaces: Sequence[str] = (), *, name: str = NAME, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Everything the operator's ServiceAccount needs: cluster-wide when ``namespaces`` is
    empty (it watches the whole cluster), else a Role in each of them."""
    scoped = [m for ns in namespaces for m in watching(ns, name, namespace)]
    return [
        service_account(name, namespace),
        *(scoped or cluster_wide(name, namespace)),
        *leader_election(name, namespace),
    ]


def render(namespaces: Sequence[str] = (), namespace: str = NAMESPACE) -> str:
    header = (
        "# Generated by `python -m modelship.rbac` from operator/modelship/rbac.py. Do not edit.\n"
    )
    return header + yaml.safe_dump_all(manifests(namespaces, namespace=namespace), sort_keys=False)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelship.rbac", description=__doc__)
    parser.add_argument(
        "--namespaces",
        default="",
        help="comma-separated watched namespaces (MODELSHIP_NAMESPACES); empty: cluster-wide",
    )
    parser.add_argument(
        "--operator-namespace", default=NAMESPACE, help="where the operator runs (its Lease)"
    )
    args = parser.parse_args(argv)
    namespaces = [n.strip() for n in args.namespaces.split(",") if n.strip()]
    sys.stdout.write(render(namespaces, args.operator_namespace))


if __name__ == "__main__":
    main()
