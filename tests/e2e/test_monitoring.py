"""The monitoring kit against a real Prometheus on the local node (hack/localkube/prometheus.py,
which discovers the serving pods and the operator as the chart's PodMonitor and ServiceMonitor
select them). The chart's PrometheusRule groups are loaded into it; under load, during a canary
release of a version that fails on part of the inputs, every query of the Grafana dashboard
returns data, the canary weight is seen at its step, and after the rollback the
ModelshipCanaryRolledBack alert fires (read from Prometheus' /api/v1/alerts).

The operator's per-ModelDeployment series carry its ``namespace`` label; the scrape job of the
operator must honor it (honor_labels, as the chart's ServiceMonitor sets honorLabels), else
Prometheus renames it ``exported_namespace`` and these queries find nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml

import dashboard
from canary_models import BAD_X, GOOD_X, calibration_rows, canary_model
from chart_helpers import rule_groups
from e2e_models import SMALL, pod_restarts
from localkube import Cluster, prometheus, stack
from localkube.load import HeyLoad, infer_body, wait_until_serving

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE
RULES_CONFIGMAP = ("kube-system", "prometheus-rules")
RULE_GROUPS = {"modelship.slo", "modelship.alerts"}
STEP_WEIGHT = 50
OPERATORS = "app.kubernetes.io/component=operator"
T = TypeVar("T")


def _get(base: str, path: str, **params: str) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
    assert body.get("status") == "success", body
    return body


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    return list(_get(base, "/api/v1/query", query=expr)["data"]["result"])


def _until(what: str, timeout_s: float, probe: Callable[[], T | None], every: float = 2) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(every)


def _load_rules(cluster: Cluster, base: str) -> None:
    """The chart's rule groups into Prometheus' rules ConfigMap, then reloads until it has
    them (the kubelet refreshes a mounted ConfigMap within a minute or so; Prometheus reads
    rule files on start and on POST /-/reload only)."""
    namespace, name = RULES_CONFIGMAP
    patch = {"data": {"modelship.yaml": yaml.safe_dump(rule_groups(), sort_keys=False)}}
    cluster.kubectl(
        "-n", namespace, "patch", "configmap", name, "--type=merge", "-p", json.dumps(patch)
    )

    def loaded() -> bool | None:
        request = urllib.request.Request(f"{base}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.URLError:
            return None  # not reachable through its Service yet
        groups = {g["name"] for g in _get(base, "/api/v1/rules")["data"]["groups"]}
        return True if groups >= RULE_GROUPS else None

    _until("the chart's rule groups loaded into Prometheus", 240, loaded, every=5)


@pytest.fixture(scope="module")
def prom(modelship: Cluster) -> str:
    prometheus.start(modelship)
    base = f"http://{prometheus.address(modelship)}"
    _load_rules(modelship, base)
    return base


class Models:
    """The canary test models, copied once into the namespace's models PVC."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster, self.workdir = cluster, workdir
        self.prefix = f"monitoring-{uuid.uuid4().hex[:6]}"

    def seed(self, name: str, **kind: Any) -> tuple[str, str]:
        path = canary_model(self.workdir / f"{name}.onnx", seed=11 if name == "v1" else 12, **kind)
        uri = stack.seed_model(self.cluster, NS, path, f"{self.prefix}/{name}.onnx")
        return uri, hashlib.sha256(path.read_bytes()).hexdigest()

    def calibration(self) -> str:
        path = self.workdir / "calibration.npz"
        np.savez(path, x=calibration_rows())
        return stack.seed_model(self.cluster, NS, path, f"{self.prefix}/calibration.npz")


def _spec(model: tuple[str, str], calibration: str) -> dict[str, Any]:
    uri, sha = model
    return {
        "model": {"uri": uri, "sha256": sha},
        # Calibration data gives the manifest the input statistics that drift is scored on.
        "optimization": {"precision": "fp32", "calibration": {"uri": calibration, "samples": 32}},
        "serving": {
            "resources": SMALL, "grpc": False,
            "batching": {"maxBatchSize": 8, "maxDelayMs": 5},
        },
        "scaling": {"minReplicas": 2, "maxReplicas": 2},
        "rollout": {
            "steps": [{"weight": STEP_WEIGHT, "pause": "20s"}],
            "progressDeadline": "8m",
            "scaleDownDelay": "5s",
            "analysis": {"interval": "5s", "minRequests": 10, "failureLimit": 2},
        },
    }  # fmt: skip


@dataclass
class Release:
    name: str
    broken: dict[str, Any]
    """The spec of the next version, which fails on part of the inputs."""


@pytest.fixture
def release(modelship: Cluster, tmp_path: Path) -> Iterator[Release]:
    """A first revision, Ready with two pods, and the spec of a broken second one; the
    ModelDeployment is deleted after the test."""
    name = f"mon-{uuid.uuid4().hex[:5]}"
    models = Models(modelship, tmp_path)
    calibration = models.calibration()
    broken = _spec(models.seed("broken", fails_on_positive=True), calibration)
    stack.apply_mdep(modelship, NS, name, _spec(models.seed("v1"), calibration))
    try:
        stack.wait_for(
            modelship, NS, name,
            lambda o: stack.is_ready(o) and o["status"].get("readyReplicas") == 2,
            "Ready with 2 pods", 900,
        )  # fmt: skip
        yield Release(name, broken)
    finally:
        modelship.kubectl("delete", "mdep", name, "-n", NS, "--ignore-not-found", "--wait=true",
                          timeout=180)  # fmt: skip


def _data(base: str, expr: str) -> list[dict[str, Any]] | None:
    """The series of ``expr`` now, when at least one has a number (not NaN)."""
    series = _query(base, expr)
    return series if any(math.isfinite(float(s["value"][1])) for s in series) else None


def _canary_phase(cluster: Cluster, name: str) -> str:
    return str((stack.get_mdep(cluster, NS, name).get("status", {}).get("canary") or {})
               .get("phase", ""))  # fmt: skip


def _check_operator_labels(base: str, name: str) -> None:
    series = _until(
        "the operator's series of the ModelDeployment in Prometheus", 120,
        lambda: _query(base, f'modelship_operator_canary_weight{{name="{name}"}}') or None,
    )  # fmt: skip
    labels = series[0]["metric"]
    assert labels.get("namespace") == NS, (
        f"the operator's series have {labels}: its scrape job must honor the series' own "
        "namespace label (honor_labels), as the chart's ServiceMonitor does"
    )


def _rolled_back(owner: str, window: str) -> str:
    series = f'modelship_operator_canary_releases_total{{{owner}, outcome="rolled_back"}}'
    return f"max_over_time({series}{window})"


def _counted_rollbacks(base: str, owner: str) -> float:
    found = _query(base, f"sum({_rolled_back(owner, '[15m]')})")
    return float(found[0]["value"][1]) if found else 0.0


def _operators(cluster: Cluster) -> dict[str, list[tuple[int, str | None]]]:
    return pod_restarts(cluster, stack.OPERATOR_NAMESPACE, OPERATORS)


def _firing(base: str, alertname: str, name: str) -> dict[str, Any] | None:
    for alert in _get(base, "/api/v1/alerts")["data"]["alerts"]:
        labels = alert["labels"]
        if (labels.get("alertname"), labels.get("name"), labels.get("namespace")) == (
            alertname, name, NS,
        ) and alert["state"] == "firing":  # fmt: skip
            return dict(alert)
    return None


def test_dashboard_queries_return_data_and_a_rollback_fires_its_alert(
    modelship: Cluster, prom: str, release: Release
) -> None:
    name = release.name
    url = f"{stack.service_url(modelship, NS, name)}/v2/models/{name}/infer"
    wait_until_serving(url, infer_body(GOOD_X))
    _check_operator_labels(prom, name)
    queries = [
        (title, dashboard.instantiate(expr, NS, name)) for title, expr in dashboard.queries()
    ]
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=600), HeyLoad(url, infer_body(BAD_X), concurrency=1,
                                          qps_per_worker=20, duration_s=600):  # fmt: skip
        stack.apply_mdep(modelship, NS, name, release.broken)
        _until(
            "the canary release to start", 600,
            lambda: True if _canary_phase(modelship, name) else None,
        )  # fmt: skip
        missing = dict(queries)
        deadline = time.monotonic() + 180
        while missing and time.monotonic() < deadline:
            for title, expr in list(missing.items()):
                if _data(prom, expr) is not None:
                    del missing[title]
            time.sleep(2)
        assert not missing, f"dashboard panels without data under load: {missing}"
        _until(
            "the rollback", 600,
            lambda: True if _canary_phase(modelship, name) == "Aborted" else None,
        )  # fmt: skip
    owner = f'namespace="{NS}", name="{name}"'
    weight = _query(prom, f"max_over_time(modelship_operator_canary_weight{{{owner}}}[15m])")
    assert float(weight[0]["value"][1]) == STEP_WEIGHT, "the step's weight was scraped"
    # Counted once, by the replica that led: each operator pod's highest value over the
    # release (a counter restarts at 0 with its process), summed over the pods.
    deadline = time.monotonic() + 60
    while not (counted := _counted_rollbacks(prom, owner)) and time.monotonic() < deadline:
        time.sleep(2)  # until a scrape after the count (Prometheus polls the operator)
    assert counted == 1, (
        f"rollbacks counted {counted} times, per series "
        f"{_query(prom, _rolled_back(owner, '[15m]'))}; operator pods {_operators(modelship)}"
    )
    alert = _until(
        "ModelshipCanaryRolledBack firing", 120,
        lambda: _firing(prom, "ModelshipCanaryRolledBack", name),
    )  # fmt: skip
    print(f"{name}: {alert['labels']} {alert['annotations']['summary']}; operator pods "
          f"(restarts, last reason): {_operators(modelship)}", file=sys.stderr)  # fmt: skip
    assert alert["labels"]["severity"] == "warning"
    assert f"{NS}/{name} was rolled back" in alert["annotations"]["summary"]
