"""A real Gateway API implementation on the local node: Traefik, as a pod of an image built here.

Traefik v3.6.12 is built from its Go module (``hack/build-k8s.sh traefik``), packed into a
one-binary image like CoreDNS, and runs in ``kube-system`` with its Kubernetes Gateway provider:
it programs ``HTTPRoute`` and ``GRPCRoute`` objects (weighted ``backendRefs`` included) attached
to the ``Gateway`` created here. The standard Gateway API CRDs come from
``sigs.k8s.io/gateway-api`` v1.4.0 (``config/crd/standard/``), copied beside the binary.

``python -m localkube up --gateway`` (``make cluster-up GATEWAY=1``) adds it to the node,
``python -m localkube gateway`` to a running node. Clients reach the Gateway at the ClusterIP of
the ``traefik`` Service (port 80, HTTP and h2c), routed from this machine by kube-proxy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localkube import addons, binaries, node
from localkube.cluster import log

if TYPE_CHECKING:
    from localkube.cluster import Cluster

NS = addons.NS
GATEWAY_CLASS = "traefik"
GATEWAY = "modelship"
"""The Gateway routes attach to (namespace kube-system, listener ``http`` on port 80)."""
CONTROLLER = "traefik.io/gateway-controller"
ENTRYPOINT_PORT = 8000


BINARY_PATH = "/traefik"


def image(binary: Path) -> str:
    """Tagged by version and image layout, so a changed layout is a new image on the node."""
    layout = hashlib.sha256(f"{binary.name}:{BINARY_PATH}".encode()).hexdigest()[:8]
    return f"modelship.local/traefik:{binary.name.rsplit('-', 1)[-1]}-{layout}"


def crds(binary: Path) -> list[Path]:
    found = sorted(Path(f"{binary}-share").glob("crds/*.yaml"))
    if not found:
        raise RuntimeError(f"no Gateway API CRDs beside {binary}: run hack/build-k8s.sh traefik")
    return found


def _rules() -> list[dict[str, Any]]:
    gw = "gateway.networking.k8s.io"
    return [
        {
            "apiGroups": [""],
            "resources": ["services", "secrets", "namespaces", "configmaps"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [gw],
            "resources": [
                "gatewayclasses",
                "gateways",
                "httproutes",
                "grpcroutes",
                "referencegrants",
                "backendtlspolicies",
                "tcproutes",
                "tlsroutes",
            ],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [gw],
            "resources": [
                "gatewayclasses/status",
                "gateways/status",
                "httproutes/status",
                "grpcroutes/status",
                "backendtlspolicies/status",
                "tcproutes/status",
                "tlsroutes/status",
            ],
            "verbs": ["update", "patch"],
        },
    ]


def manifests(traefik_image: str) -> list[dict[str, Any]]:
    args = [
        "--providers.kubernetesgateway=true",
        "--providers.kubernetesgateway.statusaddress.service.name=traefik",
        f"--providers.kubernetesgateway.statusaddress.service.namespace={NS}",
        f"--entrypoints.web.address=:{ENTRYPOINT_PORT}",
        "--entrypoints.traefik.address=:8080",
        "--ping=true",
        "--api.dashboard=false",
        "--log.level=INFO",
        "--global.checknewversion=false",
        "--global.sendanonymoususage=false",
    ]
    probe = {"httpGet": {"path": "/ping", "port": 8080}, "periodSeconds": 2}
    deployment = addons._deployment("traefik", traefik_image, args, ENTRYPOINT_PORT, probe, [], [])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["ports"] = [
        {"name": "web", "containerPort": ENTRYPOINT_PORT},
        {"name": "admin", "containerPort": 8080},
    ]
    container["resources"] = {"requests": {"cpu": "50m", "memory": "64Mi"}}
    return [
        *addons._account("traefik", _rules()),
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "traefik", "namespace": NS},
            "spec": {
                "selector": {"k8s-app": "traefik"},
                "ports": [
                    {
                        "name": "web",
                        "port": 80,
                        "targetPort": "web",
                        "appProtocol": "kubernetes.io/h2c",
                    }
                ],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NS},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": ENTRYPOINT_PORT,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]


def start(cluster: Cluster, timeout_s: float = 180.0) -> None:
    """Install the Gateway API CRDs, Traefik and the Gateway; wait until the Gateway is
    Programmed."""
    if cluster.state is None or not cluster.state.node:
        raise RuntimeError("the Gateway needs the node tier: `make cluster-up GATEWAY=1`")
    binary = binaries.ensure(("traefik",))["traefik"]
    name = image(binary)
    images = node.Images(node.NodeFiles(cluster.directory).socket)
    images.ensure_binary_image(name, binary, BINARY_PATH)
    log("installing the Gateway API CRDs (v1.4.0, standard channel) and Traefik")
    for crd in crds(binary):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.wait_kubectl(
        ["wait", "--for=condition=Established", "--timeout=5s",
         "crd/gateways.gateway.networking.k8s.io", "crd/httproutes.gateway.networking.k8s.io",
         "crd/grpcroutes.gateway.networking.k8s.io"],
        "the Gateway API CRDs",
        timeout_s,
    )  # fmt: skip
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(name)}),
    )  # fmt: skip
    cluster.wait_kubectl(
        ["-n", NS, "wait", "--for=condition=Available", "deployment/traefik", "--timeout=5s"],
        "Traefik",
        timeout_s,
    )
    cluster.wait_kubectl(
        ["-n", NS, "wait", "--for=condition=Programmed", f"gateway/{GATEWAY}", "--timeout=5s"],
        f"Gateway {GATEWAY} to be Programmed",
        timeout_s,
    )
    log(f"Gateway {NS}/{GATEWAY} (class {GATEWAY_CLASS}) programmed by Traefik")


def address(cluster: Cluster) -> str:
    """host:port of the Gateway's HTTP listener, reachable from this machine."""
    svc = json.loads(cluster.kubectl("get", "svc", "traefik", "-n", NS, "-o", "json").stdout)
    return f"{svc['spec']['clusterIP']}:80"
