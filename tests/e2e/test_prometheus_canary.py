"""Canary analysis with ``source: prometheus`` on the real local node.

Prometheus (hack/localkube/prometheus.py) discovers the runtime pods with Kubernetes service
discovery and scrapes them every 2 s; the operator is installed with its URL (the chart's
``analysis.prometheus.url``) and asks it for each verdict. A version that fails on part of the
inputs is rolled back on Prometheus' success rate, and a user-defined query without data holds
a healthy canary Inconclusive. Each spec carries a user-defined check that always has data
(``served``), whose presence in the status shows the verdicts came from Prometheus.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from canary_models import BAD_X, GOOD_X
from e2e_models import (
    CREATED,
    SMALL,
    Models,
    canary_of,
    delete_what_the_test_created,  # noqa: F401  (autouse: deletes CREATED)
    events,
    first_revision,
    infer_url,
)
from localkube import Cluster, prometheus, stack
from localkube.load import HeyLoad, infer_body

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE
INTERVAL_S = 10
"""Five of Prometheus' 2 s scrapes per interval, so increase() always has samples to work on."""
FAILURE_LIMIT = 2
SERVED = {
    "name": "served",
    "query": 'sum(increase(modelship_requests_total{namespace="{{ namespace }}",'
    'model="{{ name }}",revision="{{ revision }}"}[{{ interval }}]))',
    "min": 1,
}
NO_DATA = {
    "name": "delayedAccuracy",
    "query": 'avg(modelship_delayed_label_accuracy{namespace="{{ namespace }}",'
    'revision="{{ revision }}"})',
    "min": 0.9,
}


@pytest.fixture(scope="module")
def prom(modelship: Cluster) -> str:
    """Prometheus on the node, and the operator upgraded to ask it; returns its URL. Both stay
    for the rest of the session: a Prometheus URL changes nothing for source: pods."""
    prometheus.start(modelship)
    url = f"http://{prometheus.address(modelship)}"
    stack.helm_install(modelship, namespaces=["default", stack.E2E_NAMESPACE], prometheus_url=url)
    return url


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    form = urllib.parse.urlencode({"query": promql}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=form, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def models(prom: str, modelship: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(modelship, tmp_path_factory.mktemp("prometheus-models"),
                  f"prom-{uuid.uuid4().hex[:6]}", seeds=(41, 42))  # fmt: skip


def _spec(models: Models, version: str, rollout: dict[str, Any], **kind: Any) -> dict[str, Any]:
    uri, sha = models.get(version, **kind)
    return {
        "model": {"uri": uri, "sha256": sha},
        "optimization": {
            "precision": "fp32",
            "calibration": {"uri": models.calibration(), "samples": 32},
        },
        "serving": {"resources": SMALL, "grpc": False},
        "scaling": {"minReplicas": 2, "maxReplicas": 2},
        "rollout": rollout,
    }


def _rollout(*metrics: dict[str, Any], **analysis: Any) -> dict[str, Any]:
    return {
        "steps": [{"weight": 50, "pause": "10s"}],
        "progressDeadline": "8m",
        "scaleDownDelay": "5s",
        "analysis": {"source": "prometheus", "interval": f"{INTERVAL_S}s", "minRequests": 10,
                     "failureLimit": FAILURE_LIMIT, "metrics": [SERVED, *metrics]} | analysis,
    }  # fmt: skip


def _first_revision(cluster: Cluster, name: str, spec: dict[str, Any]) -> str:
    """Deploy the first revision and return the client Service's infer URL once it answers."""
    CREATED.append(name)
    first_revision(cluster, name, spec)
    return infer_url(cluster, name)


_canary = canary_of


def _analyses(
    cluster: Cluster, name: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> list[dict[str, Any]]:
    """Every distinct analysis of the canary until ``done``, printed as the release goes."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        obj = stack.get_mdep(cluster, NS, name)
        canary = _canary(obj)
        last = canary.get("lastAnalysis")
        if last and (not seen or seen[-1]["analysis"]["time"] != last["time"]):
            seen.append({"analysis": last, "canary": canary})
            print(f"{name}: {canary.get('phase')} step {canary.get('step')} "
                  f"{last['verdict']}: {last.get('message')}", file=sys.stderr)  # fmt: skip
        if done(obj):
            return seen
        assert time.monotonic() < deadline, f"{name}: not done after {timeout_s:.0f}s: {seen[-3:]}"
        time.sleep(0.5)


def _checks(analysis: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in analysis.get("checks") or []}


_events = events


def test_a_failing_version_is_rolled_back_by_prometheus_analysis(
    modelship: Cluster, prom: str, models: Models
) -> None:
    name = "prom-failing"
    url = _first_revision(modelship, name, _spec(models, "v1", _rollout()))
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=600) as good, HeyLoad(url, infer_body(BAD_X), concurrency=1,
                                                  qps_per_worker=20, duration_s=600):  # fmt: skip
        stack.apply_mdep(
            modelship, NS, name, _spec(models, "broken", _rollout(), fails_on_positive=True)
        )
        seen = _analyses(modelship, name, lambda o: _canary(o).get("phase") == "Aborted", 600)
        result = good.stop()
    assert result.failed == 0, f"the rows every version answers must never fail: {result}"
    failed = [s["analysis"] for s in seen if s["analysis"]["verdict"] == "Fail"]
    assert len(failed) >= FAILURE_LIMIT, seen[-4:]
    for analysis in failed:
        checks = _checks(analysis)
        assert checks["successRate"]["verdict"] == "Fail", checks
        assert checks["served"]["verdict"] == "Pass", "the verdict came from Prometheus"
    obj = stack.get_mdep(modelship, NS, name)
    assert obj["status"]["phase"] == "Degraded"
    degraded = stack.condition(obj, "Degraded")
    assert degraded["status"] == "True"
    assert "success rate" in degraded["message"]
    assert "success rate" in _events(modelship, name)["RolledBack"]
    # Prometheus itself tells the two revisions apart by the runtime's revision label.
    revision = _canary(obj)["revision"]
    errors = _query(prom, f'sum(modelship_requests_total{{namespace="{NS}",model="{name}",'
                          f'revision="{revision}",code="500"}})')  # fmt: skip
    assert errors, "Prometheus has the canary's 5xx series"
    assert float(errors[0]["value"][1]) > 0, errors


def test_a_user_query_without_data_holds_the_canary_inconclusive(
    modelship: Cluster, prom: str, models: Models
) -> None:
    name = "prom-no-data"
    rollout = _rollout(NO_DATA, inconclusiveLimit=100)
    url = _first_revision(modelship, name, _spec(models, "v1", rollout))
    held: set[str] = set()

    def three_inconclusive_analyses_at_the_first_step(obj: dict[str, Any]) -> bool:
        canary = _canary(obj)
        last = canary.get("lastAnalysis") or {}
        if canary.get("phase") == "Progressing" and last.get("verdict") == "Inconclusive":
            held.add(last["time"])
        return len(held) >= 3

    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=600) as load:  # fmt: skip
        stack.apply_mdep(modelship, NS, name, _spec(models, "v2", rollout))
        seen = _analyses(modelship, name, three_inconclusive_analyses_at_the_first_step, 600)
        result = load.stop()
    assert result.failed == 0, result
    analyses = [s["analysis"] for s in seen]
    assert {a["verdict"] for a in analyses} == {"Inconclusive"}, analyses
    for analysis in analyses[-3:]:
        checks = _checks(analysis)
        assert checks["delayedAccuracy"]["verdict"] == "Inconclusive"
        assert checks["delayedAccuracy"]["message"] == (
            "prometheus query delayedAccuracy returned no data"
        )
        assert checks["successRate"]["verdict"] == "Pass", "only the query without data holds it"
        assert checks["served"]["verdict"] == "Pass", "the verdict came from Prometheus"
    obj = stack.get_mdep(modelship, NS, name)
    canary = _canary(obj)
    # Three intervals is well past the step's 10 s pause: only the missing data holds it.
    assert (canary["phase"], canary["step"]) == ("Progressing", 0), canary
    assert canary["failedIntervals"] == 0, "no data never fails a canary"
    assert canary["successfulIntervals"] == 0, "nor passes one"
    assert "returned no data" in stack.condition(obj, "Progressing")["message"]
