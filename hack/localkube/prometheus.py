"""A real Prometheus on the local node, as a pod of an image built here.

Prometheus 3.16 (``github.com/prometheus/prometheus`` v0.316.0, ``cmd/prometheus``, built with
only Kubernetes service discovery) runs in ``kube-system`` and discovers pods with Kubernetes
service discovery, the way the chart's PodMonitor selects them: every pod labelled
``app.kubernetes.io/name=modelship-runtime`` is scraped on its ``metrics`` port, and the operator
on its ``metrics`` port. Alerting rules are read from the ``prometheus-rules`` ConfigMap (the
e2e tier loads the chart's PrometheusRule groups into it) and reloaded on change.

``python -m localkube up --prometheus`` (``make cluster-up PROMETHEUS=1``) adds it,
``python -m localkube prometheus`` adds it to a running node. Its HTTP API is the ClusterIP of the
``prometheus`` Service, port 9090.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from localkube import addons, binaries, node
from localkube.cluster import http_ok, log, wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

NS = addons.NS
SCRAPE_INTERVAL = "2s"
"""Short, so that an e2e analysis interval of a few seconds sees several scrapes."""


BINARY_PATH = "/bin/prometheus"


def image(binary: Path) -> str:
    """Tagged by version and image layout, so a changed layout is a new image on the node."""
    layout = hashlib.sha256(f"{binary.name}:{BINARY_PATH}".encode()).hexdigest()[:8]
    return f"modelship.local/prometheus:{binary.name.rsplit('-', 1)[-1]}-{layout}"


def _keep(label: str, regex: str) -> dict[str, Any]:
    return {"source_labels": [label], "regex": regex, "action": "keep"}


def _copy(label: str, target: str) -> dict[str, Any]:
    return {"source_labels": [label], "target_label": target}


def config() -> dict[str, Any]:
    pods = "__meta_kubernetes_pod_"
    common = [
        _keep(f"{pods}container_port_name", "metrics"),
        _keep(f"{pods}phase", "Running"),
        _copy("__meta_kubernetes_namespace", "namespace"),
        _copy(f"{pods}name", "pod"),
    ]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": ["/etc/prometheus/rules/*.yaml"],
        "scrape_configs": [
            {
                "job_name": "modelship-runtime",
                "honor_labels": True,  # the runtime's own model/revision labels win
                "kubernetes_sd_configs": [{"role": "pod"}],
                "relabel_configs": [
                    _keep(f"{pods}label_app_kubernetes_io_name", "modelship-runtime"),
                    *common,
                ],
            },
            {
                "job_name": "modelship-operator",
                "honor_labels": True,  # its series name the ModelDeployment's namespace
                "kubernetes_sd_configs": [{"role": "pod"}],
                "relabel_configs": [
                    _keep(f"{pods}label_app_kubernetes_io_name", "modelship"),
                    _keep(f"{pods}label_app_kubernetes_io_component", "operator"),
                    *common,
                ],
            },
        ],
    }


def manifests(prometheus_image: str, rules: dict[str, str] | None = None) -> list[dict[str, Any]]:
    args = [
        "--config.file=/etc/prometheus/config/prometheus.yaml",
        "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=2h",
        "--web.listen-address=:9090",
        "--web.enable-lifecycle",
    ]
    probe = {"httpGet": {"path": "/-/ready", "port": 9090}, "periodSeconds": 2}
    volumes = [
        {"name": "config", "configMap": {"name": "prometheus"}},
        {"name": "rules", "configMap": {"name": "prometheus-rules"}},
        {"name": "data", "emptyDir": {"sizeLimit": "512Mi"}},
    ]
    mounts = [
        {"name": "config", "mountPath": "/etc/prometheus/config"},
        {"name": "rules", "mountPath": "/etc/prometheus/rules"},
        {"name": "data", "mountPath": "/prometheus"},
    ]
    deployment = addons._deployment(
        "prometheus", prometheus_image, args, 9090, probe, volumes, mounts
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "50m", "memory": "128Mi"}}
    rules_cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prometheus-rules", "namespace": NS},
        "data": rules or {"empty.yaml": "groups: []\n"},
    }
    return [
        *addons._account(
            "prometheus",
            [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
            ],
        ),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prometheus", "namespace": NS},
            "data": {"prometheus.yaml": yaml.safe_dump(config(), sort_keys=False)},
        },
        rules_cm,
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "prometheus", "namespace": NS},
            "spec": {
                "selector": {"k8s-app": "prometheus"},
                "ports": [{"name": "http", "port": 9090, "targetPort": 9090}],
            },
        },
    ]


def start(cluster: Cluster, timeout_s: float = 180.0) -> None:
    if cluster.state is None or not cluster.state.node:
        raise RuntimeError("Prometheus needs the node tier: `make cluster-up PROMETHEUS=1`")
    binary = binaries.ensure(("prometheus",))["prometheus"]
    name = image(binary)
    images = node.Images(node.NodeFiles(cluster.directory).socket)
    images.ensure_binary_image(name, binary, BINARY_PATH)
    log("installing Prometheus (Kubernetes pod discovery of the runtime and the operator)")
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(name)}),
    )  # fmt: skip
    cluster.wait_kubectl(
        ["-n", NS, "wait", "--for=condition=Available", "deployment/prometheus", "--timeout=5s"],
        "Prometheus",
        timeout_s,
    )
    # kube-proxy programs a new Service's rules a moment after it exists: wait until the API
    # answers through the Service, where the tests and the operator reach it.
    url = f"http://{address(cluster)}/-/ready"
    wait_until(lambda: http_ok(url), f"Prometheus at {url}", timeout_s, cluster.dead_process)
    log(f"Prometheus ready at http://{address(cluster)}")


def address(cluster: Cluster) -> str:
    svc = json.loads(cluster.kubectl("get", "svc", "prometheus", "-n", NS, "-o", "json").stdout)
    return f"{svc['spec']['clusterIP']}:9090"
