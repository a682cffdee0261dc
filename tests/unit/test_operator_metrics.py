"""The operator's per-ModelDeployment series, which the chart's alerts and dashboard read: they
exist at 0 from the first reconcile, count each finished release and failed build once (judged
from the state the status held before the step), and go with the ModelDeployment."""

from __future__ import annotations

from typing import Any

from modelship.api.v1alpha1 import CanaryPhase, CanaryStatus, Phase
from modelship.domain.lifecycle import State
from modelship.metrics import OperatorMetrics

NS, NAME = "ml", "sentiment"
T = "2026-01-01T00:00:00Z"


def canary(phase: CanaryPhase, weight: int = 0, attempt: int = 1) -> CanaryStatus:
    return CanaryStatus(
        revision="7c41d9e2b3", digest="sha256:" + "a" * 64, phase=phase, weight=weight,
        attempt=attempt, started_at=T, step_started_at=T,
    )  # fmt: skip


def value(metrics: OperatorMetrics, metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def rollbacks(metrics: OperatorMetrics) -> float | None:
    return value(
        metrics, "modelship_operator_canary_releases_total",
        namespace=NS, name=NAME, outcome="rolled_back",
    )  # fmt: skip


def state(phase: Phase = Phase.READY, reason: str = "", **kw: Any) -> State:
    return State(phase, reason, **kw)


def test_series_of_a_model_deployment_exist_at_zero_before_any_event() -> None:
    metrics = OperatorMetrics()
    metrics.set_phases({(NS, NAME): "Building"})
    assert rollbacks(metrics) == 0
    for verdict in ("Pass", "Fail", "Inconclusive"):
        assert (
            value(
                metrics,
                "modelship_operator_analyses_total",
                namespace=NS,
                name=NAME,
                verdict=verdict,
            )
            == 0
        )
    assert value(metrics, "modelship_operator_canary_weight", namespace=NS, name=NAME) == 0
    assert value(metrics, "modelship_operator_builds_total", outcome="failed") == 0


def test_a_rollback_counts_once_and_a_retried_one_again() -> None:
    metrics = OperatorMetrics()
    running = state(Phase.PROGRESSING, canary=canary(CanaryPhase.PROGRESSING, weight=50))
    metrics.observe_step(NS, NAME, state(), running)
    assert value(metrics, "modelship_operator_canary_weight", namespace=NS, name=NAME) == 50
    aborted = state(Phase.DEGRADED, "RolledBack", canary=canary(CanaryPhase.ABORTED))
    metrics.observe_step(NS, NAME, running, aborted)
    metrics.observe_step(NS, NAME, aborted, aborted)  # the next reconcile: nothing new
    assert rollbacks(metrics) == 1
    assert value(metrics, "modelship_operator_canary_weight", namespace=NS, name=NAME) == 0
    retried = state(Phase.DEGRADED, "RolledBack", canary=canary(CanaryPhase.ABORTED, attempt=2))
    metrics.observe_step(NS, NAME, aborted, retried)
    assert rollbacks(metrics) == 2


def test_a_promotion_is_counted_and_leaves_no_canary_weight() -> None:
    metrics = OperatorMetrics()
    promoting = state(Phase.PROGRESSING, canary=canary(CanaryPhase.PROMOTING, weight=100))
    done = state(canary=canary(CanaryPhase.SUCCEEDED, weight=100))
    metrics.observe_step(NS, NAME, promoting, done)
    metrics.observe_step(NS, NAME, done, done)
    promoted = value(
        metrics, "modelship_operator_canary_releases_total",
        namespace=NS, name=NAME, outcome="promoted",
    )  # fmt: skip
    assert promoted == 1
    assert rollbacks(metrics) == 0
    assert value(metrics, "modelship_operator_canary_weight", namespace=NS, name=NAME) == 0


def test_a_failed_build_counts_once() -> None:
    metrics = OperatorMetrics()
    failed = state(Phase.DEGRADED, "BuildFailed")
    metrics.observe_step(NS, NAME, state(Phase.BUILDING, "Building"), failed)
    metrics.observe_step(NS, NAME, failed, failed)
    assert value(metrics, "modelship_operator_builds_total", outcome="failed") == 1


def test_phase_is_one_hot_and_a_deleted_model_deployment_leaves_no_series() -> None:
    metrics = OperatorMetrics()
    metrics.set_phases({(NS, NAME): "Degraded", (NS, "other"): "Ready"})
    metric = "modelship_operator_model_deployment_phase"
    phases = {
        p.value: value(metrics, metric, namespace=NS, name=NAME, phase=p.value) for p in Phase
    }
    assert phases == {p.value: (1 if p is Phase.DEGRADED else 0) for p in Phase}
    assert value(metrics, "modelship_operator_objects", phase="Ready") == 1
    metrics.set_phases({(NS, "other"): "Ready"})
    text = "\n".join(f"{s.name}{s.labels}" for m in metrics.registry.collect() for s in m.samples)
    assert f"'name': '{NAME}'" not in text
    assert "'name': 'other'" in text
