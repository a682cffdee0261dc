"""Canary releases on the real local node, under load from ``hey`` through the client Service.

Each test starts from a first revision (deployed directly), then releases a second one built from
a real ONNX model made for the purpose: a good one, one that fails on part of the inputs, one
several times slower than the stable. Analysis runs every 5 s on the pods' own /metrics.
"""

from __future__ import annotations

import subprocess
import sys
import time
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
from localkube import Cluster, stack
from localkube.load import HeyLoad, LoadResult, infer_body

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE
INTERVAL_S = 5
FAILURE_LIMIT = 2


@pytest.fixture(scope="module")
def models(modelship: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(
        modelship, tmp_path_factory.mktemp("canary-models"), f"canary-{uuid.uuid4().hex[:6]}"
    )


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


def _rollout(**analysis: Any) -> dict[str, Any]:
    return {
        "steps": [{"weight": 50, "pause": "10s"}],
        "progressDeadline": "8m",
        "scaleDownDelay": "5s",
        "analysis": {"interval": f"{INTERVAL_S}s", "minRequests": 10,
                     "failureLimit": FAILURE_LIMIT} | analysis,
    }  # fmt: skip


def _first_revision(cluster: Cluster, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    CREATED.append(name)
    return dict(first_revision(cluster, name, spec))


_url = infer_url


_canary = canary_of


def _watch_release(
    cluster: Cluster, name: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> list[dict[str, Any]]:
    """Every distinct canary status seen until ``done``, printed as the release goes."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        obj = stack.get_mdep(cluster, NS, name)
        canary = _canary(obj)
        summary = {k: canary.get(k) for k in ("phase", "step", "desiredWeight", "weight")}
        verdict = (canary.get("lastAnalysis") or {}).get("verdict")
        if canary and (not seen or seen[-1]["summary"] != summary or
                       seen[-1]["verdict"] != verdict):  # fmt: skip
            seen.append({"at": time.monotonic(), "summary": summary, "verdict": verdict,
                         "canary": canary})  # fmt: skip
            print(f"{name}: {summary} last analysis {verdict}", file=sys.stderr)
        if done(obj):
            return seen
        assert time.monotonic() < deadline, f"{name}: not done after {timeout_s:.0f}s: {seen[-3:]}"
        time.sleep(0.5)


_events = events


def _phase(obj: dict[str, Any]) -> str:
    return str(_canary(obj).get("phase", ""))


def _rolled_back_after_failures(seen: list[dict[str, Any]]) -> float:
    """Seconds from the first failed analysis to the rollback."""
    first_fail = next(s["at"] for s in seen if s["verdict"] == "Fail")
    aborted = next(s["at"] for s in seen if s["summary"]["phase"] == "Aborted")
    return float(aborted - first_fail)


def test_a_good_version_walks_every_step_and_is_promoted_without_a_failed_request(
    modelship: Cluster, models: Models
) -> None:
    name = "canary-good"
    _first_revision(modelship, name, _spec(models, "v1", _rollout()))
    with HeyLoad(_url(modelship, name), infer_body(GOOD_X), concurrency=2,
                 qps_per_worker=25, duration_s=600) as load:  # fmt: skip
        stack.apply_mdep(modelship, NS, name, _spec(models, "v2", _rollout()))
        seen = _watch_release(
            modelship, name,
            lambda o: _phase(o) == "Succeeded" and stack.is_ready(o), 600,
        )  # fmt: skip
        result: LoadResult = load.stop()
    steps = [s["summary"] for s in seen]
    assert any(s["phase"] == "Progressing" and s["weight"] == 50 for s in steps), steps
    assert any(s["verdict"] == "Pass" for s in seen), "analysis passed at least once"
    print(f"{name}: {result.total} requests, codes {result.codes}, errors {result.errors}")
    assert result.total > 300
    assert result.failed == 0, f"failed requests during the release: {result}"
    obj = stack.get_mdep(modelship, NS, name)
    assert obj["status"]["stable"]["revision"] == _canary(obj)["revision"]
    events = _events(modelship, name)
    assert {"CanaryStarted", "Promoting", "Promoted"} <= events.keys(), events


def test_a_version_failing_on_part_of_the_inputs_is_rolled_back(
    modelship: Cluster, models: Models
) -> None:
    name = "canary-failing"
    _first_revision(modelship, name, _spec(models, "v1", _rollout()))
    url = _url(modelship, name)
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=600) as good, HeyLoad(url, infer_body(BAD_X), concurrency=1,
                                                  qps_per_worker=20, duration_s=600):  # fmt: skip
        stack.apply_mdep(
            modelship, NS, name, _spec(models, "broken", _rollout(), fails_on_positive=True)
        )
        seen = _watch_release(modelship, name, lambda o: _phase(o) == "Aborted", 600)
        result = good.stop()
    took = _rolled_back_after_failures(seen)
    print(f"{name}: rolled back {took:.1f}s after the first failed analysis")
    assert took <= (FAILURE_LIMIT + 1) * INTERVAL_S + INTERVAL_S, seen[-4:]
    assert result.failed == 0, f"the rows every version answers must never fail: {result}"
    obj = stack.get_mdep(modelship, NS, name)
    assert obj["status"]["phase"] == "Degraded"
    degraded = stack.condition(obj, "Degraded")
    assert degraded["status"] == "True"
    assert "success rate" in degraded["message"]
    assert "%" in degraded["message"]
    assert "RolledBack" in _events(modelship, name)
    assert "success rate" in _events(modelship, name)["RolledBack"]
    stack.wait_for(modelship, NS, name,
                   lambda o: o["status"].get("readyReplicas") == 2 and not _canary(o).get(
                       "readyReplicas"), "the stable alone", 120)  # fmt: skip


def test_a_version_several_times_slower_is_rolled_back_by_the_relative_check(
    modelship: Cluster, models: Models
) -> None:
    name = "canary-slow"
    rollout = _rollout(maxP99LatencyMs=10_000, maxP99LatencyRatio=2.0)
    _first_revision(modelship, name, _spec(models, "v1", rollout))
    with HeyLoad(_url(modelship, name), infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=600) as load:  # fmt: skip
        stack.apply_mdep(modelship, NS, name, _spec(models, "slow", rollout, slow=100))
        _watch_release(modelship, name, lambda o: _phase(o) == "Aborted", 600)
        result = load.stop()
    assert result.failed == 0, result
    obj = stack.get_mdep(modelship, NS, name)
    checks = {c["name"]: c for c in _canary(obj)["lastAnalysis"]["checks"]}
    assert checks["p99LatencyRatio"]["verdict"] == "Fail", checks
    assert checks["p99LatencyMs"]["verdict"] == "Pass", "only the relative check catches it"
    assert "x stable" in stack.condition(obj, "Degraded")["message"]


def test_too_little_traffic_holds_inconclusive_then_follows_on_inconclusive(
    modelship: Cluster, models: Models
) -> None:
    name = "canary-thin"
    rollout = _rollout(minRequests=100_000, inconclusiveLimit=3, onInconclusive="rollback")
    _first_revision(modelship, name, _spec(models, "v1", rollout))
    with HeyLoad(_url(modelship, name), infer_body(GOOD_X), concurrency=1, qps_per_worker=2,
                 duration_s=600):  # fmt: skip
        stack.apply_mdep(modelship, NS, name, _spec(models, "v2", rollout))
        seen = _watch_release(modelship, name, lambda o: _phase(o) == "Aborted", 600)
    verdicts = [s["verdict"] for s in seen if s["verdict"]]
    assert set(verdicts) == {"Inconclusive"}, verdicts
    held = [s["canary"] for s in seen if s["summary"]["phase"] == "Progressing"]
    assert held, "it held at its step before the limit"
    assert all(c["failedIntervals"] == 0 for c in held), "thin traffic never fails a canary"
    obj = stack.get_mdep(modelship, NS, name)
    assert _canary(obj)["reason"] == "Inconclusive"


def _plugin(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelship.plugin", "--kubeconfig", str(cluster.kubeconfig),
         "-n", NS, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_kubectl_modelship_promote_and_abort_a_paused_canary(
    modelship: Cluster, models: Models
) -> None:
    name = "canary-manual"
    rollout = _rollout() | {"steps": [{"weight": 50}]}
    _first_revision(modelship, name, _spec(models, "v1", rollout))
    with HeyLoad(_url(modelship, name), infer_body(GOOD_X), concurrency=1, qps_per_worker=20,
                 duration_s=600) as load:  # fmt: skip
        stack.apply_mdep(modelship, NS, name, _spec(models, "v2", rollout))
        _watch_release(modelship, name, lambda o: _phase(o) == "Paused", 600)
        status = _plugin(modelship, "status", name)
        assert status.returncode == 0, status.stderr
        assert "Paused" in status.stdout
        promoted = _plugin(modelship, "promote", name)
        assert promoted.returncode == 0, promoted.stderr
        _watch_release(modelship, name, lambda o: _phase(o) == "Succeeded", 300)
        # The next release waits too, and is aborted by hand.
        stack.apply_mdep(modelship, NS, name, _spec(models, "v1", rollout))
        _watch_release(modelship, name, lambda o: _phase(o) == "Paused", 600)
        aborted = _plugin(modelship, "abort", name)
        assert aborted.returncode == 0, aborted.stderr
        _watch_release(modelship, name, lambda o: _phase(o) == "Aborted", 120)
        result = load.stop()
    assert result.failed == 0, result
    obj = stack.get_mdep(modelship, NS, name)
    assert _canary(obj)["reason"] == "Aborted"
