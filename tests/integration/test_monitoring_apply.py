"""The monitoring kit against a real API server loaded with the Prometheus Operator's CRDs
(v0.85.0, from its Go module: hack/build-k8s.sh prometheus-operator-crds): the PodMonitor,
ServiceMonitor, PrometheusRule and dashboard ConfigMap pass a server-side dry run with strict
field validation, and Helm renders them from the cluster's own discovery once the CRDs exist."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_helpers import CHART, MONITORING_APIS, helm, template_text, with_monitoring
from localkube import Cluster, binaries

pytestmark = pytest.mark.integration

CRDS = ("podmonitors", "servicemonitors", "prometheusrules")


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Cluster) -> Path:
    """Installed for the rest of the session (no test depends on their absence)."""
    directory = binaries.ensure(("prometheus-operator-crds",))["prometheus-operator-crds"]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    for plural in CRDS:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{plural}.monitoring.coreos.com",
        )  # fmt: skip
    return directory


def _values(namespace: str, **extra: Any) -> dict[str, Any]:
    return with_monitoring({"store": {"pvc": {"namespaces": [namespace]}}, **extra})


def _dry_run(cluster: Cluster, manifest: str) -> tuple[int, str]:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest, check=False
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.usefixtures("monitoring_crds")
def test_the_monitoring_kit_passes_the_api_servers_validation(
    cluster: Cluster, namespace: str
) -> None:
    values = _values(namespace, watchNamespaces=[namespace])
    manifest = template_text(values, namespace=namespace, api_versions=MONITORING_APIS)
    code, out = _dry_run(cluster, manifest)
    assert code == 0, out
    for created in (
        "podmonitor.monitoring.coreos.com/modelship-runtime",
        "servicemonitor.monitoring.coreos.com/modelship-operator",
        "prometheusrule.monitoring.coreos.com/modelship",
        "configmap/modelship-dashboard",
    ):
        assert f"{created} created (server dry run)" in out, out


@pytest.mark.usefixtures("monitoring_crds")
def test_the_api_server_rejects_a_pod_monitor_the_crd_does_not_describe(
    cluster: Cluster, namespace: str
) -> None:
    """The dry run above means something: a misspelt field is refused."""
    manifest = template_text(_values(namespace), namespace=namespace, api_versions=MONITORING_APIS)
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    pod_monitor = copy.deepcopy(next(d for d in docs if d["kind"] == "PodMonitor"))
    pod_monitor["spec"]["podMetricsEndpoints"][0]["honorLabel"] = True
    code, out = _dry_run(cluster, yaml.safe_dump(pod_monitor))
    assert code != 0
    assert "honorLabel" in out, out


@pytest.mark.usefixtures("monitoring_crds")
def test_helm_renders_the_kit_from_the_clusters_discovery(cluster: Cluster, namespace: str) -> None:
    result = helm(
        "install", "modelship", str(CHART), "--namespace", namespace, "--dry-run=server",
        f"--kubeconfig={cluster.kubeconfig}", values=_values(namespace),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = result.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest) if d}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds, kinds
    assert "does not serve monitoring.coreos.com/v1" not in result.stdout, "no missing-CRD note"
