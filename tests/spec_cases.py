"""Specs shared by the unit tests (pydantic) and the integration tests (the API server).

Each invalid case breaks exactly one rule of a valid base spec. Both validators must reject it,
and both messages must name the offending field, so the two can never drift apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BASE_SPEC: dict[str, Any] = {
    "model": {"uri": "https://models.example.com/minilm/model.onnx"},
    "scaling": {"minReplicas": 1, "maxReplicas": 3},
}


def valid_object(name: str = "valid", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec if spec is not None else BASE_SPEC),
    }


@dataclass(frozen=True)
class InvalidCase:
    id: str
    field: str
    """The field path both validators must name, e.g. ``spec.scaling.minReplicas``."""
    mutate: Callable[[dict[str, Any]], None]
    name: str = "invalid"

    def object(self) -> dict[str, Any]:
        obj = valid_object(self.name)
        self.mutate(obj)
        return obj


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``spec.a.b`` (dicts created on the way) to ``value``."""

    def mutate(obj: dict[str, Any]) -> None:
        keys = path.split(".")
        node = obj
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def _metric(**fields: Any) -> dict[str, Any]:
    """A valid user-defined check of source: prometheus, with ``fields`` changed."""
    return {"name": "accuracy", "query": 'avg(accuracy{revision="{{ revision }}"})',
            "min": 0.9} | fields  # fmt: skip


def _prometheus(*metrics: dict[str, Any]) -> dict[str, Any]:
    return {"source": "prometheus", "metrics": list(metrics)}


def _all(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        for m in mutations:
            m(obj)

    return mutate


def _drop_uri(obj: dict[str, Any]) -> None:
    del obj["spec"]["model"]["uri"]


INVALID_CASES = [
    InvalidCase("uri-scheme", "spec.model.uri", _set("spec.model.uri", "ftp://host/m.onnx")),
    InvalidCase("uri-pvc-without-path", "spec.model.uri", _set("spec.model.uri", "pvc://claim")),
    InvalidCase("uri-missing", "spec.model.uri", _drop_uri),
    # file:// is for modelship-build on a laptop; in a cluster it would read the build pod's disk.
    InvalidCase("uri-file", "spec.model.uri", _set("spec.model.uri", "file:///etc/passwd")),
    InvalidCase(
        "calibration-uri-file",
        "spec.optimization.calibration.uri",
        _set("spec.optimization.calibration", {"uri": "file:///data/c.npz"}),
    ),
    # Names of Secrets and claims are names in the spec's own namespace, never ns/name.
    InvalidCase(
        "uri-pvc-claim-of-another-namespace",
        "spec.model.uri",
        _set("spec.model.uri", "pvc://team-b:models/m.onnx"),
    ),
    InvalidCase(
        "s3-secret-of-another-namespace",
        "spec.model.s3.secretName",
        _all(
            _set("spec.model.uri", "s3://bucket/m.onnx"),
            _set("spec.model.s3", {"secretName": "team-b/s3-creds"}),
        ),
    ),
    InvalidCase("sha256-short", "spec.model.sha256", _set("spec.model.sha256", "abc123")),
    InvalidCase("sha256-uppercase", "spec.model.sha256", _set("spec.model.sha256", "A" * 64)),
    InvalidCase("format-unknown", "spec.model.format", _set("spec.model.format", "caffe")),
    InvalidCase(
        "pickle-without-opt-in", "spec.model.allowPickle", _set("spec.model.format", "sklearn")
    ),
    InvalidCase(
        "s3-settings-on-https",
        "spec.model.s3",
        _set("spec.model.s3", {"endpoint": "http://minio:9000"}),
    ),
    InvalidCase(
        "graph-level-unknown", "spec.optimization.graph", _set("spec.optimization.graph", "O3")
    ),
    InvalidCase(
        "precision-unknown",
        "spec.optimization.precision",
        _set("spec.optimization.precision", "int4"),
    ),
    InvalidCase(
        "static-int8-without-calibration",
        "spec.optimization.calibration",
        _set("spec.optimization.precision", "int8-static"),
    ),
    InvalidCase(
        "accuracy-above-one",
        "spec.optimization.accuracy.min",
        _set("spec.optimization.accuracy.min", 1.5),
    ),
    InvalidCase(
        "sparsity-too-high",
        "spec.optimization.pruning.sparsity",
        _set("spec.optimization.pruning.sparsity", 0.99),
    ),
    InvalidCase(
        "calibration-samples-zero",
        "spec.optimization.calibration.samples",
        _set("spec.optimization.calibration", {"uri": "s3://b/cal.npz", "samples": 0}),
    ),
    InvalidCase(
        "batch-size-zero",
        "spec.serving.batching.maxBatchSize",
        _set("spec.serving.batching", {"maxBatchSize": 0}),
    ),
    InvalidCase(
        "cpu-limit-below-request",
        "spec.serving.resources.limits.cpu",
        _set("spec.serving.resources", {"requests": {"cpu": 2}, "limits": {"cpu": "500m"}}),
    ),
    InvalidCase(
        "memory-not-a-quantity",
        "spec.serving.resources.requests.memory",
        _set("spec.serving.resources", {"requests": {"memory": "lots"}}),
    ),
    InvalidCase(
        "min-above-max",
        "spec.scaling.minReplicas",
        _all(_set("spec.scaling.minReplicas", 5), _set("spec.scaling.maxReplicas", 2)),
    ),
    InvalidCase(
        "min-replicas-zero", "spec.scaling.minReplicas", _set("spec.scaling.minReplicas", 0)
    ),
    InvalidCase(
        "cpu-target-above-100",
        "spec.scaling.targetCPUUtilization",
        _set("spec.scaling.targetCPUUtilization", 150),
    ),
    # router: gatewayAPI names the routes it sets weights on; names, never ns/name.
    InvalidCase(
        "gateway-router-without-routes",
        "spec.rollout.gateway",
        _set("spec.rollout", {"router": "gatewayAPI"}),
    ),
    InvalidCase(
        "gateway-route-of-another-namespace",
        "spec.rollout.gateway.httpRoute",
        _set("spec.rollout", {"router": "gatewayAPI", "gateway": {"httpRoute": "team-b/r"}}),
    ),
    InvalidCase(
        "gateway-grpc-route-without-grpc",
        "spec.rollout.gateway.grpcRoute",
        _all(
            _set("spec.serving", {"grpc": False}),
            _set("spec.rollout", {"router": "gatewayAPI", "gateway": {"grpcRoute": "r"}}),
        ),
    ),
    InvalidCase(
        "steps-decreasing",
        "spec.rollout.steps",
        _set("spec.rollout.steps", [{"weight": 50}, {"weight": 10}]),
    ),
    InvalidCase(
        "steps-repeated",
        "spec.rollout.steps",
        _set("spec.rollout.steps", [{"weight": 10}, {"weight": 10}, {"weight": 50}]),
    ),
    InvalidCase(
        "shadow-step-without-mirror",
        "spec.rollout.steps[0]",
        _set("spec.rollout.steps", [{"weight": 0}]),
    ),
    InvalidCase(
        "step-mirror-zero",
        "spec.rollout.steps[0].mirror",
        _set("spec.rollout.steps", [{"weight": 10, "mirror": 0}]),
    ),
    InvalidCase(
        "agreement-min-above-1",
        "spec.rollout.analysis.agreement.min",
        _set("spec.rollout.analysis.agreement", {"min": 1.5}),
    ),
    InvalidCase(
        "step-weight-above-100",
        "spec.rollout.steps[1].weight",
        _set("spec.rollout.steps", [{"weight": 10}, {"weight": 101}]),
    ),
    InvalidCase(
        "step-pause-not-a-duration",
        "spec.rollout.steps[0].pause",
        _set("spec.rollout.steps", [{"weight": 10, "pause": "soon"}]),
    ),
    InvalidCase(
        "steps-with-rolling",
        "spec.rollout.steps",
        _all(
            _set("spec.rollout.strategy", "rolling"), _set("spec.rollout.steps", [{"weight": 10}])
        ),
    ),
    InvalidCase(
        "source-unknown",
        "spec.rollout.analysis.source",
        _set("spec.rollout.analysis", {"source": "datadog"}),
    ),
    InvalidCase(
        "metrics-without-prometheus",
        "spec.rollout.analysis.metrics",
        _set("spec.rollout.analysis", {"metrics": [_metric()]}),
    ),
    InvalidCase(
        "metric-name-with-a-space",
        "spec.rollout.analysis.metrics[0].name",
        _set("spec.rollout.analysis", _prometheus(_metric(name="my accuracy"))),
    ),
    InvalidCase(
        "metric-name-of-a-built-in-check",
        "spec.rollout.analysis.metrics[0].name",
        _set("spec.rollout.analysis", _prometheus(_metric(name="successRate"))),
    ),
    InvalidCase(
        "metric-placeholder-unknown",
        "spec.rollout.analysis.metrics[0].query",
        _set("spec.rollout.analysis", _prometheus(_metric(query='up{r="{{ revison }}"}'))),
    ),
    InvalidCase(
        "metric-placeholder-unclosed",
        "spec.rollout.analysis.metrics[0].query",
        _set("spec.rollout.analysis", _prometheus(_metric(query='up{r="{{ revision }"}'))),
    ),
    InvalidCase(
        "metric-without-range",
        "spec.rollout.analysis.metrics[0]",
        _set("spec.rollout.analysis", _prometheus({"name": "accuracy", "query": "vector(1)"})),
    ),
    InvalidCase(
        "metric-min-above-max",
        "spec.rollout.analysis.metrics[0].min",
        _set("spec.rollout.analysis", _prometheus(_metric(min=0.9, max=0.5))),
    ),
    InvalidCase(
        "metric-names-repeated",
        "spec.rollout.analysis.metrics",
        _set("spec.rollout.analysis", _prometheus(_metric(), _metric(min=0.5))),
    ),
    InvalidCase(
        "latency-ratio-below-one",
        "spec.rollout.analysis.maxP99LatencyRatio",
        _set("spec.rollout.analysis", {"maxP99LatencyRatio": 0.5}),
    ),
    InvalidCase(
        "on-inconclusive-unknown",
        "spec.rollout.analysis.onInconclusive",
        _set("spec.rollout.analysis", {"onInconclusive": "retry"}),
    ),
    InvalidCase(
        "router-unknown",
        "spec.rollout.router",
        _set("spec.rollout.router", "istio"),
    ),
    InvalidCase(
        "failure-limit-negative",
        "spec.rollout.analysis.failureLimit",
        _set("spec.rollout.analysis", {"failureLimit": 0}),
    ),
    InvalidCase(
        "interval-without-unit",
        "spec.rollout.analysis.interval",
        _set("spec.rollout.analysis", {"interval": "30"}),
    ),
    InvalidCase("replicas-negative", "spec.replicas", _set("spec.replicas", -1)),
    InvalidCase("unknown-field", "spec.modle", _set("spec.modle", {"uri": "file:///m.onnx"})),
    InvalidCase("name-starts-with-digit", "metadata.name", lambda obj: None, name="9lives"),
    InvalidCase("name-too-long", "metadata.name", lambda obj: None, name="m" + "x" * 44),
]
