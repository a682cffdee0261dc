"""Cluster add-ons of the local node: CoreDNS, metrics-server and the local-path StorageClass."""

from __future__ import annotations

from typing import Any

from localkube.node import CLUSTER_DNS, CLUSTER_DOMAIN
from localkube.provisioner import storage_class

NS = "kube-system"

COREFILE = f""".:1053 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loop
    reload
}}
"""

_RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _account(name: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"localkube:{name}"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"localkube:{name}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"localkube:{name}",
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}],
        },
    ]


def _deployment(
    name: str,
    image: str,
    args: list[str],
    port: int,
    probe: dict[str, Any],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    labels = {"k8s-app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "priorityClassName": "system-cluster-critical",
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": args,
                            "ports": [{"containerPort": port}],
                            "readinessProbe": probe,
                            "resources": {"requests": {"cpu": "20m", "memory": "40Mi"}},
                            "securityContext": _RESTRICTED,
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def coredns(image: str) -> list[dict[str, Any]]:
    rules = [
        {
            "apiGroups": [""],
            "resources": ["services", "pods", "namespaces", "endpoints"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ]
    deployment = _deployment(
        "coredns",
        image,
        [],
        1053,
        {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        [{"name": "config", "configMap": {"name": "coredns"}}],
        [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
    )
    # The image's entrypoint carries -conf; args stay empty.
    return [
        *_account("coredns", rules),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": NS},
            "data": {"Corefile": COREFILE},
        },
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": NS, "labels": {"k8s-app": "coredns"}},
            "spec": {
                "clusterIP": CLUSTER_DNS,
                "selector": {"k8s-app": "coredns"},
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]


def _auth_delegation(account: str) -> list[dict[str, Any]]:
    """Bindings an aggregated API server needs to check its callers with the kube-apiserver."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"localkube:{account}:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"localkube:{account}:auth-reader", "namespace": NS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}],
        },
    ]


def _metrics_api(service: str) -> list[dict[str, Any]]:
    """The Service in front of metrics-server and its registration as metrics.k8s.io."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": NS},
            "spec": {
                "selector": {"k8s-app": service},
                "ports": [{"name": "https", "port": 443, "targetPort": 10250}],
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "service": {"name": service, "namespace": NS},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "insecureSkipTLSVerify": True,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def metrics_server(image: str) -> list[dict[str, Any]]:
    rules = [
        {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
    ]
    name = "metrics-server"
    return [
        *_account(name, rules),
        *_auth_delegation(name),
        _deployment(
            name,
            image,
            [
                "--cert-dir=/tmp",
                "--secure-port=10250",
                "--kubelet-preferred-address-types=InternalIP",
                # The kubelet listens on a port picked free at start, published in node status.
                "--kubelet-use-node-status-port",
                # The kubelet's serving certificate comes from the cluster CA, but metrics-server
                # would need that CA mounted; on a single local node skipping it costs nothing.
                "--kubelet-insecure-tls",
                "--metric-resolution=15s",
            ],
            10250,
            {"httpGet": {"path": "/readyz", "port": 10250, "scheme": "HTTPS"}, "periodSeconds": 2},
            [{"name": "tmp", "emptyDir": {}}],
            [{"name": "tmp", "mountPath": "/tmp"}],
        ),
        *_metrics_api(name),
    ]


def manifests(coredns_image: str, metrics_server_image: str) -> list[dict[str, Any]]:
    return [storage_class(), *coredns(coredns_image), *metrics_server(metrics_server_image)]
