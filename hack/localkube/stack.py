"""Install Modelship onto the local node the way a user would: images, Helm chart, a model PVC.

Shared by ``make demo`` and the e2e fixtures, so the demo and the tests exercise one path.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localkube import binaries
from localkube.cluster import Cluster, log

RUNTIME_IMAGE = "modelship-runtime:dev"
OPERATOR_IMAGE = "modelship-operator:dev"
CONVERTER_IMAGES = {
    "torch": "modelship-convert-torch:dev",
    "tensorflow": "modelship-convert-tensorflow:dev",
}
"""The build Jobs' convert step images for framework formats. They keep their ``:dev`` tags in
the chart: only new build pods run them, and a rebuilt image is loaded under the same name."""
RELEASE = "modelship"
OPERATOR_NAMESPACE = "modelship-system"
MODELS_PVC = "modelship-models"
STORE_PVC = "modelship-artifacts"
E2E_NAMESPACE = "modelship-e2e"
"""Where the e2e tier applies its ModelDeployments (the chart creates a store PVC there)."""
BUILD_IMAGE_SCRIPT = binaries.REPO_ROOT / "hack" / "build-image.sh"
CHART = binaries.REPO_ROOT / "charts" / "modelship"


BUILT: dict[str, str] = {}
"""The content-addressed tag of each image built in this process (``runtime``, ``operator``):
the chart is installed with these, so a rebuilt image rolls the pods that run it (a reused tag
such as ``:dev`` would leave the old image running)."""


def build_and_load_images(cluster: Cluster) -> None:
    """Build both images from their Dockerfiles (cached by input hash) and load them."""
    for what, tag in (("runtime", RUNTIME_IMAGE), ("operator", OPERATOR_IMAGE)):
        started = time.monotonic()
        subprocess.run(["bash", str(BUILD_IMAGE_SCRIPT), what, tag], check=True)
        image_id = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        content_tag = f"{tag.split(':')[0]}:{image_id.removeprefix('sha256:')[:12]}"
        subprocess.run(["docker", "tag", tag, content_tag], check=True)
        BUILT[what] = content_tag
        log(f"image {tag} ({content_tag}) ready in {time.monotonic() - started:.0f}s")
        cluster.load_docker_image(tag)
        cluster.load_docker_image(content_tag)
        cluster.prune_content_tags(content_tag)


def build_and_load_converter_images(cluster: Cluster) -> None:
    """Build the converter images (GBs: PyTorch, TensorFlow; cached by input hash) and load
    them into the node, for the build Jobs of framework formats."""
    for family, tag in CONVERTER_IMAGES.items():
        started = time.monotonic()
        subprocess.run(["bash", str(BUILD_IMAGE_SCRIPT), f"convert-{family}", tag], check=True)
        log(f"image {tag} ready in {time.monotonic() - started:.0f}s")
        cluster.load_docker_image(tag)


def helm_install(
    cluster: Cluster,
    namespaces: list[str],
    extra: list[str] | None = None,
    chart: Path = CHART,
    operator_image: str | None = None,
    prometheus_url: str | None = None,
) -> None:
    """``helm upgrade --install`` the chart with the local images and a store PVC per namespace
    (``chart`` and ``operator_image`` name another version, for the upgrade test;
    ``prometheus_url`` is the chart's analysis.prometheus.url, e.g. ``http://`` +
    :func:`localkube.prometheus.address`)."""
    helm = binaries.ensure(("helm",))["helm"]
    # Helm installs a chart's CRDs once and never upgrades them; apply them like an upgrade would.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart / "crds"))
    operator_image = operator_image or BUILT.get("operator", OPERATOR_IMAGE)
    runtime_image = BUILT.get("runtime", RUNTIME_IMAGE)
    sets = {
        "image.repository": operator_image.split(":")[0],
        "image.tag": operator_image.split(":")[1],
        "image.pullPolicy": "Never",
        "runtimeImage.repository": runtime_image.split(":")[0],
        "runtimeImage.tag": runtime_image.split(":")[1],
        "runtimeImage.pullPolicy": "Never",
        # Two operator pods: one leads, one stands by (leader election on a Lease).
        "replicaCount": "2",
        "store.pvc.name": STORE_PVC,
        "store.pvc.size": "2Gi",
        # One node with two cores, shared with the serving pods: builders ask for half a core.
        "build.cpu": "500m",
        "build.memory": "3Gi",
        "reconcile.pollSeconds": "3",
        "reconcile.readyGraceSeconds": "30",
    }
    if prometheus_url:
        sets["analysis.prometheus.url"] = prometheus_url
    if "converterImages:" in (chart / "values.yaml").read_text():  # older charts (the upgrade
        for family, tag in CONVERTER_IMAGES.items():  # test's) have none, and refuse the key
            repository, version = tag.split(":")
            sets[f"converterImages.{family}.repository"] = repository
            sets[f"converterImages.{family}.tag"] = version
    args = [
        str(helm),
        f"--kubeconfig={cluster.kubeconfig}",
        "upgrade",
        "--install",
        RELEASE,
        str(chart),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ]
    for key, value in sets.items():
        args += [
            "--set-string" if key.endswith(("tag", "cpu", "memory", "url")) else "--set",
            f"{key}={value}",
        ]
    args += ["--set", "store.pvc.namespaces={" + ",".join(namespaces) + "}"]
    subprocess.run([*args, *(extra or [])], check=True)
    log(f"helm release {RELEASE} installed in {OPERATOR_NAMESPACE}")


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def apply_mdep(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Create or update a ModelDeployment as a user would (kubectl apply)."""
    obj = {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    apply(cluster, namespace, obj)


def seed_model(cluster: Cluster, namespace: str, source: Path, dest: str) -> str:
    """Copy a local model file into the ``modelship-models`` PVC of ``namespace`` with
    ``kubectl cp`` through a short-lived pod, as a user without node access would.
    Returns the ``pvc://`` URI of the copy."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": MODELS_PVC},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(cluster, namespace, claim)
    pod = f"model-loader-{uuid.uuid4().hex[:6]}"
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsUser": 65532, "runAsNonRoot": True},
                "containers": [
                    {
                        "name": "loader",
                        "image": RUNTIME_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "600"],
                        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                    }
                ],
                "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_PVC}}],
            },
        },
    )
    try:
        cluster.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            f"pod/{pod}",
            "--timeout=120s",
            timeout=150,
        )
        directory = str(Path("/models") / dest).rsplit("/", 1)[0]
        cluster.kubectl("exec", "-n", namespace, pod, "--", "mkdir", "-p", directory)
        cluster.kubectl("cp", str(source), f"{namespace}/{pod}:/models/{dest}", timeout=300)
    finally:
        cluster.kubectl("delete", "pod", "-n", namespace, pod, "--wait=false", check=False)
    log(f"copied {source.name} into pvc://{MODELS_PVC}/{dest} ({namespace})")
    return f"pvc://{MODELS_PVC}/{dest}"


def get_mdep(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        json.loads(cluster.kubectl("get", "mdep", name, "-n", namespace, "-o", "json").stdout)
    )


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return {}


def wait_for(
    cluster: Cluster,
    namespace: str,
    name: str,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = 900,
    progress: bool = True,
) -> dict[str, Any]:
    """Poll the ModelDeployment until ``done`` holds, printing phase changes as they happen."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        obj = get_mdep(cluster, namespace, name)
        status = obj.get("status", {})
        line = " ".join(
            f"{c['type']}={c['status']}({c.get('reason', '')})"
            for c in status.get("conditions", [])
        )
        summary = f"{status.get('phase', 'Pending')}: {line}"
        if progress and summary != last:
            log(f"{namespace}/{name} {summary}")
            last = summary
        if done(obj):
            return obj
        if time.monotonic() > deadline:
            raise TimeoutError(f"{namespace}/{name} not {what} after {timeout_s:.0f}s: {summary}")
        time.sleep(2)


def is_ready(obj: dict[str, Any]) -> bool:
    return (
        obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]
        and condition(obj, "Ready").get("status") == "True"
    )


def service_url(cluster: Cluster, namespace: str, service: str, port_name: str = "http") -> str:
    """The ClusterIP address of a Service port (reachable from this machine via kube-proxy)."""
    svc = json.loads(cluster.kubectl("get", "svc", service, "-n", namespace, "-o", "json").stdout)
    port = next(p["port"] for p in svc["spec"]["ports"] if p.get("name") == port_name)
    return f"http://{svc['spec']['clusterIP']}:{port}"
