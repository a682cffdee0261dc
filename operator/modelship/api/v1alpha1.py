"""The ModelDeployment API, ``modelship.io/v1alpha1``: the single source of truth.

The CRD in ``crds/`` and in the chart is generated from these models (``make crds``). Every field
carries a description because ``kubectl explain`` prints it; every cross-field rule is a
:class:`~modelship.api.rules.Rule` so the API server and pydantic reject the same specs with the
same message.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, WithJsonSchema

from modelship.api.quantity import parse_quantity
from modelship.api.rules import APIModel, Rule
from modelship.api.serving import DEFAULT_MAX_DELAY_MS
from modelship.api.types import Duration, Quantity

GROUP = "modelship.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("mdep",)
CATEGORIES = ("modelship",)

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (DNS-1123 subdomain): a name, never ``namespace/name``."""
URI_PATTERN = (
    r"^(https://[^/ ]+(/.*)?|s3://[^/ ]+/.+|pvc://[a-z0-9]([-.a-z0-9]*[a-z0-9])?/.+|file:///.+)$"
)
URI_HELP = (
    "an https://host/path, s3://bucket/key or pvc://claim/path URI (claim: the name of a "
    "PersistentVolumeClaim in this namespace)"
)
CLI_ONLY_SCHEME = "file:"
"""file:// sources are for ``modelship-build`` on a laptop; a ModelDeployment refuses them."""
SHA256_PATTERN = r"^[a-f0-9]{64}$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 40


def _matches(pattern: str, value: str | None) -> bool:
    return value is None or re.fullmatch(pattern, value) is not None


def _uri_rule(field: str) -> Rule:
    return Rule(
        cel=f"!has(self.{field}) || self.{field}.matches('{URI_PATTERN}')",
        message=f"{field} must be {URI_HELP}",
        check=lambda m: _matches(URI_PATTERN, getattr(m, field)),
        field_path=f".{field}",
    )


# --- model source --------------------------------------------------------------------------


class ModelFormat(StrEnum):
    """Formats the builder can turn into an ONNX artifact."""

    ONNX = "onnx"
    SKLEARN = "sklearn"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    KERAS = "keras"
    TFLITE = "tflite"


FRAMEWORK_FORMATS = frozenset(
    {ModelFormat.PYTORCH, ModelFormat.TENSORFLOW, ModelFormat.KERAS, ModelFormat.TFLITE}
)
"""Formats converted in a converter image (the framework's own runtime), not the runtime image."""


class TensorDatatype(StrEnum):
    """Tensor element types, named as in the Open Inference Protocol."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class TensorSpec(APIModel):
    """Name, element type and shape of one model input."""

    name: str = Field(min_length=1, max_length=256, description="Input tensor name.")
    datatype: TensorDatatype = Field(description="Element type (Open Inference Protocol name).")
    shape: list[Annotated[int, Field(ge=-1)]] = Field(
        max_length=8,
        description="Dimensions; -1 marks a dynamic dimension (for example the batch).",
    )


class S3Settings(APIModel):
    """Where and how to reach an S3-compatible object store."""

    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        description="Endpoint URL of an S3-compatible store (MinIO, SeaweedFS, Ceph); "
        "empty means AWS S3.",
    )
    region: str | None = Field(default=None, max_length=64, description="Region of the bucket.")
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="Name of a Secret in the ModelDeployment's own namespace with "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Build pods get no other credentials "
        "(no service-account token, no instance metadata, never the artifact store's).",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"!has(self.secretName) || self.secretName.matches('{DNS_SUBDOMAIN}')",
            message="secretName must be the name of a Secret in this namespace (lowercase "
            "letters, digits, '-' and '.'); Secrets of other namespaces cannot be named",
            check=lambda m: _matches(DNS_SUBDOMAIN, m.secret_name),
            field_path=".secretName",
        ),
    )


class ModelSource(APIModel):
    """Where the trained model comes from and how to read it."""

    uri: str = Field(
        max_length=2048,
        description=f"Location of the model: {URI_HELP}. Archives (.tar, .tar.gz, .zip) are "
        "unpacked safely.",
    )
    format: ModelFormat = Field(
        default=ModelFormat.ONNX,
        description="Format of the model at uri: onnx; sklearn (a pickled scikit-learn "
        "estimator or pipeline, converted with skl2onnx); pytorch (a torch.export archive, "
        ".pt2, or with allowPickle a whole module saved with torch.save); tensorflow (a "
        "SavedModel directory in a .tar/.tar.gz/.zip, with a serving signature); keras (a "
        ".keras file); tflite (a TF Lite .tflite flatbuffer). Framework models are converted "
        "to ONNX with torch.onnx / tf2onnx and checked against the framework's own outputs.",
    )
    sha256: str | None = Field(
        default=None,
        max_length=64,
        description="Expected sha256 of the fetched bytes (64 lowercase hex characters). The "
        "build fails if the bytes differ; pinning also lets the operator skip builds it "
        "has already published.",
    )
    allow_pickle: bool = Field(
        default=False,
        description="Allow unpickling: needed for format sklearn, and for format pytorch "
        "when the file is a whole module saved with torch.save rather than a torch.export "
        "archive. Unpickling runs code from the model file, so only enable it for sources you "
        "trust.",
    )
    inputs: list[TensorSpec] | None = Field(
        default=None,
        max_length=64,
        description="Input signature, when the model does not declare it (sklearn, a pickled "
        "PyTorch module) or declares it only partly. Dimensions of -1 are dynamic (keep the "
        "first one -1 so requests can be batched).",
    )
    s3: S3Settings | None = Field(default=None, description="Settings for s3:// URIs.")

    rules: ClassVar[tuple[Rule, ...]] = (
        _uri_rule("uri"),
        Rule(
            cel=f"!has(self.sha256) || self.sha256.matches('{SHA256_PATTERN}')",
            message="sha256 must be 64 lowercase hex characters, as printed by sha256sum",
            check=lambda m: _matches(SHA256_PATTERN, m.sha256),
            field_path=".sha256",
        ),
        Rule(
            cel="self.format != 'sklearn' || self.allowPickle == true",
            message="format sklearn unpickles the model, which runs code from it: set "
            "allowPickle: true if you trust the source",
            check=lambda m: m.format != ModelFormat.SKLEARN or m.allow_pickle,
            field_path=".allowPickle",
        ),
        Rule(
            cel="!has(self.s3) || self.uri.startsWith('s3://')",
            message="s3 settings only apply to s3:// URIs",
            check=lambda m: m.s3 is None or m.uri.startswith("s3://"),
            field_path=".s3",
        ),
    )


# --- optimization ------------------------------------------------------------------------


class GraphLevel(StrEnum):
    """ONNX Runtime graph optimization levels."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class Precision(StrEnum):
    """Numeric precision of the served artifact."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8_DYNAMIC = "int8-dynamic"
    INT8_STATIC = "int8-static"
    AUTO = "auto"


class AccuracyMetric(StrEnum):
    """How an optimized variant is compared with the original model."""

    COSINE = "cosine"
    TOP1 = "top1"


class CalibrationSpec(APIModel):
    """Representative inputs for static quantization and for drift baselines."""

    uri: str | None = Field(
        default=None,
        max_length=2048,
        description=f"Sample inputs (.npz with one array per input name), as {URI_HELP}. "
        "Without it, inputs are generated from the input signature.",
    )
    samples: int = Field(
        default=128, ge=1, le=10000, description="How many samples to use (1-10000)."
    )

    rules: ClassVar[tuple[Rule, ...]] = (_uri_rule("uri"),)


class AccuracySpec(APIModel):
    """The accuracy budget every optimized variant must meet against the original."""

    metric: AccuracyMetric = Field(
        default=AccuracyMetric.COSINE,
        description="cosine: mean cosine similarity of outputs; top1: share of samples whose "
        "arg-max agrees.",
    )
    min: float = Field(
        default=0.99, ge=0, le=1, description="Minimum value of the metric (0-1) to accept."
    )
    max_abs_error: float | None = Field(
        default=None,
        gt=0,
        description="Optional upper bound on the largest absolute difference of any output.",
    )


class PruningSpec(APIModel):
    """Magnitude pruning of weights. Dense CPU kernels do not get faster from sparsity alone."""

    sparsity: float = Field(
        default=0.0,
        ge=0,
        le=0.95,
        description="Target share of weights set to zero (0-0.95); 0 disables pruning.",
    )


class OptimizationSpec(APIModel):
    """How the builder turns the source model into the served artifact."""

    graph: GraphLevel = Field(
        default=GraphLevel.EXTENDED,
        description="ONNX Runtime graph optimization level: disabled, basic, extended or all.",
    )
    precision: Precision = Field(
        default=Precision.AUTO,
        description="fp32, fp16, int8-dynamic, int8-static, or auto: the fastest variant "
        "that stays within the accuracy budget.",
    )
    calibration: CalibrationSpec | None = Field(
        default=None, description="Calibration data for int8-static and drift statistics."
    )
    accuracy: AccuracySpec = Field(
        default_factory=AccuracySpec, description="Accuracy budget against the original model."
    )
    pruning: PruningSpec = Field(default_factory=PruningSpec, description="Weight pruning.")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.precision != 'int8-static' || (has(self.calibration) && "
            "has(self.calibration.uri))",
            message="precision int8-static needs calibration.uri: static quantization "
            "computes activation ranges from representative inputs",
            check=lambda m: (
                m.precision != Precision.INT8_STATIC
                or (m.calibration is not None and m.calibration.uri is not None)
            ),
            field_path=".calibration",
        ),
    )


# --- serving -----------------------------------------------------------------------------


class ResourceList(APIModel):
    """CPU and memory amounts."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. 500m or 2.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 512Mi or 2Gi.")


def _limit_not_below_request(resource: str) -> Rule:
    def check(m: ResourcesSpec) -> bool:
        request = getattr(m.requests, resource, None) if m.requests else None
        limit = getattr(m.limits, resource, None) if m.limits else None
        return request is None or limit is None or parse_quantity(limit) >= parse_quantity(request)

    return Rule(
        cel=f"!has(self.requests) || !has(self.limits) || !has(self.requests.{resource}) || "
        f"!has(self.limits.{resource}) || quantity(string(self.limits.{resource}))"
        f".compareTo(quantity(string(self.requests.{resource}))) >= 0",
        message=f"limits.{resource} must be greater than or equal to requests.{resource}",
        check=check,
        field_path=f".limits.{resource}",
    )


class ResourcesSpec(APIModel):
    """Compute resources of each serving pod."""

    requests: ResourceList | None = Field(
        default=None, description="Guaranteed resources (default cpu 1, memory 1Gi)."
    )
    limits: ResourceList | None = Field(
        default=None,
        description="Upper bounds. The CPU limit also sets the ONNX Runtime thread count.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        _limit_not_below_request("cpu"),
        _limit_not_below_request("memory"),
    )


class BatchingSpec(APIModel):
    """Dynamic batching: concurrent requests are merged into one model call."""

    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Largest merged batch (1-1024)."
    )
    max_delay_ms: float = Field(
        default=DEFAULT_MAX_DELAY_MS,
        ge=0,
        le=1000,
        description="Longest time (ms, 0-1000) a request waits for others to join its batch.",
    )


class ServingSpec(APIModel):
    """How the runtime pods serve the artifact."""

    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="CPU and memory of each serving pod."
    )
    batching: BatchingSpec | None = Field(
        default=None,
        description="Enable dynamic batching (models with a dynamic batch dimension only).",
    )
    grpc: bool = Field(
        default=True, description="Also serve the Open Inference Protocol over gRPC."
    )


# --- scaling and rollout -----------------------------------------------------------------


class ScalingSpec(APIModel):
    """Horizontal autoscaling of the serving pods."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest pods (1-1000).")
    max_replicas: int = Field(default=3, ge=1, le=1000, description="Most pods (1-1000).")
    target_cpu_utilization: int = Field(
        default=70,
        ge=1,
        le=100,
        alias="targetCPUUtilization",
        description="Average CPU utilisation (percent of requests, 1-100) the autoscaler aims for.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda m: m.min_replicas <= m.max_replicas,
            field_path=".minReplicas",
        ),
    )


class RolloutStrategy(StrEnum):
    """How a new revision replaces the running one."""

    CANARY = "canary"
    ROLLING = "rolling"


class Router(StrEnum):
    """How a canary's share of the traffic is realised."""

    REPLICAS = "replicas"
    GATEWAY_API = "gatewayAPI"


class GatewayRoutes(APIModel):
    """The user's Gateway API routes whose rule pointing at this ModelDeployment carries the
    canary's weight (the rule's backendRefs name Service ``<name>``; the operator sets them to
    ``<name>-stable`` and ``<name>-canary`` with weights and leaves everything else alone)."""

    http_route: str | None = Field(
        default=None,
        max_length=253,
        description="Name of an HTTPRoute in this namespace (REST clients), e.g. minilm.",
    )
    grpc_route: str | None = Field(
        default=None,
        max_length=253,
        description="Name of a GRPCRoute in this namespace (gRPC clients; needs serving.grpc).",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.httpRoute) || has(self.grpcRoute)",
            message="name an HTTPRoute (httpRoute), a GRPCRoute (grpcRoute) or both",
            check=lambda m: m.http_route is not None or m.grpc_route is not None,
        ),
        Rule(
            cel=f"!has(self.httpRoute) || self.httpRoute.matches('{DNS_SUBDOMAIN}')",
            message="httpRoute must be the name of an HTTPRoute in this namespace",
            check=lambda m: _matches(DNS_SUBDOMAIN, m.http_route),
            field_path=".httpRoute",
        ),
        Rule(
            cel=f"!has(self.grpcRoute) || self.grpcRoute.matches('{DNS_SUBDOMAIN}')",
            message="grpcRoute must be the name of a GRPCRoute in this namespace",
            check=lambda m: _matches(DNS_SUBDOMAIN, m.grpc_route),
            field_path=".grpcRoute",
        ),
    )


class MetricsSource(StrEnum):
    """Where canary analysis reads request metrics."""

    PODS = "pods"
    PROMETHEUS = "prometheus"


PROMQL_PLACEHOLDERS = ("namespace", "name", "revision", "stable", "interval")
"""What a metrics query may name: ``{{ revision }}`` and so on (see AnalysisMetric.query)."""
PLACEHOLDER_CANDIDATE = "[{][{][^}]*[}]?[}]?"
"""Every ``{{`` of a query and what follows up to its ``}}``: each must be a placeholder."""
PLACEHOLDER_PATTERN = "^[{][{] *(" + "|".join(PROMQL_PLACEHOLDERS) + ") *[}][}]$"
PLACEHOLDER_HELP = ", ".join("{{ " + p + " }}" for p in PROMQL_PLACEHOLDERS)
BUILTIN_CHECKS = ("requests", "successRate", "p99LatencyMs", "p99LatencyRatio", "errorRateIncrease")
"""Names of the checks the operator makes itself; a metrics query cannot take them."""
METRIC_NAME_PATTERN = r"^[a-zA-Z][-_a-zA-Z0-9]*$"
MAX_METRICS = 10
"""With the built-in checks, still within AnalysisResult's 16 checks."""


def _placeholders_known(query: str) -> bool:
    return all(
        re.fullmatch(PLACEHOLDER_PATTERN, found)
        for found in re.findall(PLACEHOLDER_CANDIDATE, query)
    )


class AnalysisMetric(APIModel):
    """A check of your own (source: prometheus): a PromQL query whose value must be in min..max."""

    name: str = Field(
        min_length=1,
        max_length=63,
        description="Names the check in the status, e.g. accuracy (letters, digits, '-', '_').",
    )
    query: str = Field(
        min_length=1,
        max_length=2048,
        description="PromQL returning one number (an instant vector of one series, or a "
        f"scalar). Placeholders, replaced before each query: {PLACEHOLDER_HELP} (the "
        "ModelDeployment's namespace and name, the canary's and the stable's revision, the "
        "span of traffic judged, e.g. 30s). Values are escaped for a double-quoted PromQL "
        'string: write revision="{{ revision }}". No data is Inconclusive, never a pass '
        "or a failure.",
    )
    min: float | None = Field(default=None, description="Lowest passing value, e.g. 0.9.")
    max: float | None = Field(default=None, description="Highest passing value, e.g. 0.05.")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"self.name.matches('{METRIC_NAME_PATTERN}')",
            message="name must start with a letter and hold only letters, digits, '-' and '_' "
            "(it names the check in the status)",
            check=lambda m: _matches(METRIC_NAME_PATTERN, m.name),
            field_path=".name",
        ),
        Rule(
            cel="!(self.name in [" + ", ".join(f"'{n}'" for n in BUILTIN_CHECKS) + "])",
            message="name must differ from the built-in checks (" + ", ".join(BUILTIN_CHECKS) + ")",
            check=lambda m: m.name not in BUILTIN_CHECKS,
            field_path=".name",
        ),
        Rule(
            cel=f"self.query.findAll('{PLACEHOLDER_CANDIDATE}')"
            f".all(p, p.matches('{PLACEHOLDER_PATTERN}'))",
            message=f"query may only use the placeholders {PLACEHOLDER_HELP} (each written "
            "{{ name }}; no other '{{' in the query)",
            check=lambda m: _placeholders_known(m.query),
            field_path=".query",
        ),
        Rule(
            cel="has(self.min) || has(self.max)",
            message="set min, max or both: the range the query's value must stay in",
            check=lambda m: m.min is not None or m.max is not None,
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="min must be less than or equal to max",
            check=lambda m: m.min is None or m.max is None or m.min <= m.max,
            field_path=".min",
        ),
    )


class InconclusiveAction(StrEnum):
    """What a canary does after too many intervals without enough requests for a verdict."""

    HOLD = "hold"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class CanaryStep(APIModel):
    """One canary step: shift traffic (and/or mirror it), analyse, then go on after the pause."""

    weight: int = Field(
        ge=0,
        le=100,
        description="Percent of traffic for the canary (0-100), e.g. 10. 0 is a shadow step: "
        "no client is served by the canary, which only receives mirrored requests (set "
        "mirror).",
    )
    mirror: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Percent of the stable's client requests also sent to the canary, whose "
        "answers are compared with the stable's and thrown away (never returned to a client), "
        "e.g. 20. Empty: analysis.agreement.mirror when agreement is checked, 10 for a live "
        "outputDrift alone, else none.",
    )
    pause: Duration | None = Field(
        default=None,
        description="How long to hold this weight while analysis runs (e.g. 60s, 5m); "
        "empty holds until promoted (kubectl modelship promote, or the modelship.io/promote "
        "annotation).",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.weight > 0 || has(self.mirror)",
            message="a step of weight 0 serves no client: it is a shadow step and needs mirror "
            "(the percent of requests the canary receives as copies), e.g. {weight: 0, mirror: "
            "50, pause: 2m}",
            check=lambda m: m.weight > 0 or m.mirror is not None,
        ),
    )


DEFAULT_MIRROR_PERCENT = 10


class AgreementCheck(APIModel):
    """Compare the canary's answers with the stable's on mirrored live requests."""

    metric: AccuracyMetric = Field(
        default=AccuracyMetric.COSINE,
        description="cosine: mean cosine similarity of the compared output; top1: share of "
        "rows whose arg-max agrees (the builder's accuracy-gate metrics).",
    )
    min: float = Field(
        default=0.99, ge=0, le=1, description="Lowest passing value of the metric (0-1)."
    )
    min_samples: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="Compared requests needed for a verdict; fewer is Inconclusive (they add "
        "up over inconclusive intervals).",
    )
    mirror: int = Field(
        default=DEFAULT_MIRROR_PERCENT,
        ge=1,
        le=100,
        description="Percent of the stable's requests mirrored at steps that do not set their "
        "own mirror, e.g. 10.",
    )
    keep_inputs: bool = Field(
        default=False,
        description="Keep the inputs of mismatching examples in the stable pods (GET "
        "/v2/mirror); false (default): only their sha256.",
    )


class ComparedSource(StrEnum):
    """Which compared requests a check reads."""

    LIVE = "live"
    REPLAY = "replay"


class OutputDriftCheck(APIModel):
    """The distribution of the compared output on the canary against the stable's on the same
    requests: the population stability index (PSI) the runtime computes for inputs, here
    between revisions. It can see a shift that per-request agreement averages away."""

    max: float = Field(
        default=0.25,
        gt=0,
        le=10,
        description="Highest passing PSI (0: the same distribution; above 0.25 is usually "
        "called a major shift), e.g. 0.1.",
    )
    source: ComparedSource = Field(
        default=ComparedSource.LIVE,
        description="live: mirrored client requests (mirrored at agreement.mirror, or 10 % "
        "without agreement, at steps without their own mirror); replay: the golden set "
        "(replayed with the replay settings, or their defaults without replay).",
    )
    min_values: int = Field(
        default=1000,
        ge=100,
        le=50_000,
        description="Output values per revision the PSI must rest on; fewer is Inconclusive.",
    )


class ReplayCheck(APIModel):
    """Every analysis interval the stable pods send the stable artifact's golden set (the
    samples its build calibrated and validated with) to the canary and compare the answers:
    evidence when live traffic is too thin."""

    metric: AccuracyMetric = Field(
        default=AccuracyMetric.COSINE, description="cosine or top1, as for agreement."
    )
    min: float = Field(
        default=0.99, ge=0, le=1, description="Lowest passing value of the metric (0-1)."
    )
    samples: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Golden samples each stable pod replays per interval at most.",
    )
    min_samples: int = Field(
        default=16,
        ge=1,
        le=1_000_000,
        description="Compared replays needed for a verdict; fewer is Inconclusive.",
    )
    min_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="With a labelled golden set (a 'labels' array in the calibration .npz): "
        "the canary's lowest passing top-1 accuracy on it (0-1), e.g. 0.9. Judged instead of "
        "agreement when labels exist; without labels, agreement is judged.",
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="With a labelled golden set: how far the canary's accuracy may fall below "
        "the stable's on the same rows (0-1; 0.02 is two points). Judged instead of agreement "
        "when labels exist.",
    )

    @property
    def judges_accuracy(self) -> bool:
        return self.min_accuracy is not None or self.max_accuracy_drop is not None


class AnalysisSpec(APIModel):
    """Metric checks that decide whether the canary goes on, holds or rolls back.

    Every interval the operator reads what both revisions did in that interval (from each ready
    pod's /metrics, or from Prometheus) and judges the canary on it: absolute thresholds, and,
    where set, relative to the stable revision measured in the same interval.
    """

    interval: Duration = Field(default="30s", description="How often to analyse, e.g. 30s.")
    initial_delay: Duration = Field(
        default="0s",
        description="How long new canary pods warm up after a step's weight is reached before "
        "the first verdict of that step, e.g. 20s.",
    )
    min_success_rate: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Lowest share of non-5xx responses of the canary (0-1), e.g. 0.99.",
    )
    max_p99_latency_ms: float = Field(
        default=500, gt=0, description="Highest p99 latency of the canary in ms, e.g. 500."
    )
    max_p99_latency_ratio: float | None = Field(
        default=None,
        ge=1,
        description="Relative check: the canary's p99 at most this many times the stable "
        "revision's in the same interval, e.g. 1.2. Empty: no relative latency check.",
    )
    max_error_rate_increase: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Relative check: the canary's error rate at most the stable's plus this "
        "(0-1), e.g. 0.01 for one percentage point. Empty: no relative error check.",
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Requests the canary must serve for a verdict; fewer is Inconclusive, "
        "never a failure, and requests add up over inconclusive intervals. Default 20.",
    )
    failure_limit: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Failed intervals that roll the canary back, e.g. 2 (default).",
    )
    inconclusive_limit: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive inconclusive intervals after which onInconclusive decides "
        "(default 5).",
    )
    on_inconclusive: InconclusiveAction = Field(
        default=InconclusiveAction.HOLD,
        description="After inconclusiveLimit inconclusive intervals: hold (keep waiting for "
        "traffic; default), promote (go on as if passed) or rollback.",
    )
    source: MetricsSource = Field(
        default=MetricsSource.PODS,
        description="pods: the operator scrapes the runtime pods' /metrics (default). "
        "prometheus: the operator queries the Prometheus its installation names (chart value "
        "analysis.prometheus.url) over each interval, and metrics adds checks of your own.",
    )
    metrics: list[AnalysisMetric] | None = Field(
        default=None,
        max_length=MAX_METRICS,
        description="source: prometheus only: PromQL checks of your own, each failing the "
        "analysis when its value leaves min..max; e.g. [{name: accuracy, query: ..., min: 0.9}].",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    agreement: AgreementCheck | None = Field(
        default=None,
        description="Output-aware check on mirrored live traffic: the canary's answers must "
        "agree with the stable's, e.g. {metric: cosine, min: 0.99}. Turns on mirroring at "
        "every step.",
    )
    replay: ReplayCheck | None = Field(
        default=None,
        description="Output-aware check on the stable's golden set, replayed to the canary "
        "every interval, e.g. {min: 0.99}.",
    )
    output_drift: OutputDriftCheck | None = Field(
        default=None,
        description="Output-aware check: the compared output's distribution on the canary "
        "against the stable's (PSI), e.g. {max: 0.1}.",
    )
    compare_output: str | None = Field(
        default=None,
        max_length=256,
        description="Output tensor that agreement and replay compare; empty: the model's first "
        "float output.",
    )

    @property
    def live_mirror_percent(self) -> int | None:
        """The percent mirrored at steps without their own mirror: what agreement (or a live
        outputDrift) needs; None when no check reads mirrored requests."""
        if self.agreement is not None:
            return self.agreement.mirror
        if self.output_drift is not None and self.output_drift.source is ComparedSource.LIVE:
            return DEFAULT_MIRROR_PERCENT
        return None

    @property
    def replays(self) -> ReplayCheck | None:
        """The replay settings when a check reads replayed requests."""
        if self.replay is not None:
            return self.replay
        if self.output_drift is not None and self.output_drift.source is ComparedSource.REPLAY:
            return ReplayCheck()
        return None

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.source == 'prometheus' || !has(self.metrics) || size(self.metrics) == 0",
            message="metrics are PromQL queries: they need source: prometheus",
            check=lambda m: m.source is MetricsSource.PROMETHEUS or not m.metrics,
            field_path=".metrics",
        ),
        Rule(
            cel="!has(self.metrics) || "
            "self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))",
            message="metrics names must be unique: each names a check in the status",
            check=lambda m: not m.metrics or len({q.name for q in m.metrics}) == len(m.metrics),
            field_path=".metrics",
        ),
    )


class RolloutSpec(APIModel):
    """How new revisions are released."""

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.CANARY,
        description="canary (default): the new revision takes traffic step by step under "
        "analysis, with automatic promotion or rollback; rolling: the new revision replaces "
        "the old one as soon as its pods are ready, without analysis.",
    )
    router: Router = Field(
        default=Router.REPLICAS,
        description="replicas (default): one Service selects the pods of both revisions and "
        "the weight is realised by pod counts (the canary has at least one pod); the status "
        "reports the weight actually achieved. gatewayAPI: exact per-request weights on the "
        "Gateway API routes named in gateway (clients go through the Gateway).",
    )
    gateway: GatewayRoutes | None = Field(
        default=None,
        description="The routes the gatewayAPI router sets weights on (required with it).",
    )
    steps: list[CanaryStep] | None = Field(
        default=None,
        max_length=20,
        description="Canary steps with strictly increasing weights; default 10% then 50%, "
        "60s each. After the last step the canary is promoted. Only for the canary strategy.",
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="Metric analysis of the canary."
    )
    progress_deadline: Duration = Field(
        default="10m",
        description="Longest a release may take before it is rolled back, e.g. 10m; manual "
        "pauses count too.",
    )
    scale_down_delay: Duration = Field(
        default="30s",
        description="How long the previous revision's scaled-down Deployment is kept after a "
        "promotion before it is deleted, e.g. 30s.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.steps) || self.steps.map(s, s.weight).isSorted() && "
            "self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))",
            message="steps weights must be strictly increasing (for example 10, 50, 100)",
            check=lambda m: (
                m.steps is None
                or all(a.weight < b.weight for a, b in zip(m.steps, m.steps[1:], strict=False))
            ),
            field_path=".steps",
        ),
        Rule(
            cel="self.router != 'gatewayAPI' || has(self.gateway)",
            message="router: gatewayAPI needs gateway.httpRoute and/or gateway.grpcRoute: the "
            "routes whose weights the operator sets",
            check=lambda m: m.router != Router.GATEWAY_API or m.gateway is not None,
            field_path=".gateway",
        ),
        Rule(
            cel="self.strategy != 'rolling' || !has(self.steps) || size(self.steps) == 0",
            message="steps only apply to the canary strategy: remove them or use strategy: canary",
            check=lambda m: m.strategy != RolloutStrategy.ROLLING or not m.steps,
            field_path=".steps",
        ),
    )

    @property
    def effective_steps(self) -> list[CanaryStep]:
        """The steps the canary walks through, defaults included."""
        if self.strategy == RolloutStrategy.ROLLING:
            return []
        if self.steps:
            return list(self.steps)
        return [CanaryStep(weight=10, pause="60s"), CanaryStep(weight=50, pause="60s")]


class ModelDeploymentSpec(APIModel):
    """Desired state: which model, how to optimize, serve, scale and release it."""

    model: ModelSource = Field(description="The trained model to serve.")
    optimization: OptimizationSpec = Field(
        default_factory=OptimizationSpec, description="How the artifact is optimized."
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Serving settings.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling bounds.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How new versions are released: canary steps under metric analysis with "
        "automatic promotion and rollback, or a plain rolling update.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Desired pods, written through the scale subresource by the autoscaler "
        "or kubectl scale, and kept within scaling.minReplicas..maxReplicas; leave it out of "
        "Git. Defaulted so the scale subresource always has a value to read.",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.rollout) || !has(self.rollout.gateway) || "
            "!has(self.rollout.gateway.grpcRoute) || !has(self.serving) || "
            "!has(self.serving.grpc) || self.serving.grpc",
            message="rollout.gateway.grpcRoute needs gRPC: remove it or set serving.grpc: true",
            check=lambda m: (
                m.rollout.gateway is None or m.rollout.gateway.grpc_route is None or m.serving.grpc
            ),
            field_path=".rollout.gateway.grpcRoute",
        ),
        Rule(
            cel=f"!self.model.uri.startsWith('{CLI_ONLY_SCHEME}')",
            message="model.uri: file:// is for modelship-build on the command line only; a "
            "ModelDeployment reads its model from https://, s3:// or pvc://claim/path",
            check=lambda m: not m.model.uri.startswith(CLI_ONLY_SCHEME),
            field_path=".model.uri",
        ),
        Rule(
            cel="!has(self.optimization) || !has(self.optimization.calibration) || "
            "!has(self.optimization.calibration.uri) || "
            f"!self.optimization.calibration.uri.startsWith('{CLI_ONLY_SCHEME}')",
            message="optimization.calibration.uri: file:// is for modelship-build on the "
            "command line only; use https://, s3:// or pvc://claim/path",
            check=lambda m: (
                not (
                    m.optimization.calibration is not None
                    and (m.optimization.calibration.uri or "").startswith(CLI_ONLY_SCHEME)
                )
            ),
            field_path=".optimization.calibration.uri",
        ),
    )


# --- status ------------------------------------------------------------------------------


class Phase(StrEnum):
    """Where a ModelDeployment is in its life."""

    PENDING = "Pending"
    BUILDING = "Building"
    DEPLOYING = "Deploying"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionStatus(StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(APIModel):
    """One aspect of the current state, in the metav1.Condition shape."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type: ArtifactReady, Available, Progressing, Degraded or Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed from."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="What happened and what to do, for people."
    )


class ArtifactStatus(APIModel):
    """The optimized artifact being served."""

    digest: str = Field(description="Content digest (sha256:...) of the artifact.")
    uri: str | None = Field(default=None, description="Where the artifact is stored.")
    model_sha256: str | None = Field(
        default=None,
        description="sha256 of the model file as the builder published it; serving pods "
        "refuse to load other bytes.",
    )
    variant: str | None = Field(default=None, description="Chosen variant, e.g. int8-dynamic.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size of model.onnx.")
    accuracy: float | None = Field(
        default=None, description="Accuracy metric of the variant against the original."
    )
    latency_ms: float | None = Field(
        default=None, description="Median single-request latency measured by the builder."
    )


class RevisionStatus(APIModel):
    """The stable revision: what clients are served by outside a release."""

    revision: str = Field(description="Revision name (a short hash of what the pods run).")
    digest: str = Field(description="Artifact digest served by this revision.")
    replicas: int = Field(default=0, ge=0, description="Pods of this revision.")
    ready_replicas: int = Field(default=0, ge=0, description="Ready pods of this revision.")


class AnalysisVerdict(StrEnum):
    """Outcome of one canary analysis (or one check of it)."""

    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class CheckResult(APIModel):
    """One check of an analysis: the measured value against its threshold."""

    name: str = Field(
        description="successRate, p99LatencyMs, p99LatencyRatio, errorRateIncrease, requests "
        "(the canary's request count, when it could not be read), agreement (mirrored live "
        "requests), replay (the golden set), outputDrift, or the name of one of "
        "analysis.metrics."
    )
    verdict: AnalysisVerdict = Field(description="Pass, Fail or Inconclusive.")
    value: float | None = Field(default=None, description="Measured value (empty: no data).")
    threshold: float = Field(description="The limit it is checked against.")
    samples: int = Field(
        default=0,
        ge=0,
        description="Requests the value is computed from (agreement, replay: compared ones).",
    )
    message: str = Field(default="", description="The check in words, e.g. p99 412 ms > 250 ms.")


class AnalysisResult(APIModel):
    """The latest canary analysis."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it ran.")
    verdict: AnalysisVerdict = Field(description="Pass, Fail or Inconclusive.")
    interval_seconds: float = Field(
        default=0, ge=0, description="Seconds of traffic the verdict is about."
    )
    requests: int = Field(default=0, ge=0, description="Canary requests judged.")
    stable_requests: int = Field(default=0, ge=0, description="Stable requests compared with.")
    checks: list[CheckResult] = Field(
        default_factory=list, max_length=16, description="Each check's value and threshold."
    )
    message: str = Field(default="", description="Why the verdict was reached.")
    errors: int = Field(
        default=0,
        ge=0,
        description="Metric queries that failed (source: prometheus): such an interval is "
        "Inconclusive and never counts towards onInconclusive: promote.",
    )


MAX_MISMATCHES = 5


class MismatchExample(APIModel):
    """One request whose canary answer disagreed with the stable's."""

    id: str = Field(max_length=256, description="The request id (the client's, or generated).")
    source: str = Field(description="live (a mirrored client request) or replay (golden set).")
    pod: str = Field(default="", description="The stable pod that compared it.")
    cosine: float = Field(description="Cosine similarity of the canary's output to the stable's.")
    max_abs_error: float = Field(description="Largest absolute difference of the outputs.")
    top1_agreement: float | None = Field(
        default=None, description="Share of rows whose arg-max agrees (empty: no class axis)."
    )
    input_sha256: str = Field(
        default="", description="sha256 of the inputs (the inputs themselves are not kept)."
    )


class CanaryPhase(StrEnum):
    """Where a release is."""

    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"


class CanaryStatus(APIModel):
    """The latest release: in progress, or how it ended."""

    revision: str = Field(description="Revision name of the canary.")
    digest: str = Field(description="Artifact digest served by the canary.")
    phase: CanaryPhase = Field(
        description="Progressing, Paused (see reason), Promoting, Succeeded or Aborted."
    )
    reason: str = Field(default="", description="Why it is in this phase, CamelCase.")
    message: str = Field(default="", description="The same in words, with measured values.")
    step: int = Field(default=0, ge=0, description="Index of the current step (0-based).")
    desired_weight: int = Field(
        default=0, ge=0, le=100, description="Percent of traffic the step asks for."
    )
    weight: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent of traffic the canary actually gets (ready pods of the canary "
        "over ready pods of both revisions).",
    )
    replicas: int = Field(default=0, ge=0, description="Pods of the canary revision.")
    ready_replicas: int = Field(default=0, ge=0, description="Ready pods of the canary.")
    successful_intervals: int = Field(default=0, ge=0, description="Passed analyses.")
    failed_intervals: int = Field(default=0, ge=0, description="Failed analyses.")
    inconclusive_intervals: int = Field(
        default=0, ge=0, description="Consecutive inconclusive analyses."
    )
    attempt: int = Field(default=1, ge=1, description="1, then one more per retry.")
    started_at: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the release started."
    )
    step_started_at: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the current step's weight was set.",
    )
    finished_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When it succeeded or was aborted.",
    )
    handled: dict[str, Annotated[str, Field(description="The value acted on.")]] = Field(
        default_factory=dict,
        description="The value of each manual-control annotation (promote, promote-full, abort, "
        "retry) already acted on; an annotation acts once per value.",
    )
    last_analysis: AnalysisResult | None = Field(default=None, description="The latest analysis.")
    mismatches: list[MismatchExample] = Field(
        default_factory=list,
        max_length=MAX_MISMATCHES,
        description="The newest requests on which the canary's answer disagreed with the "
        "stable's (mirrored or replayed), as the stable pods keep them (GET /v2/mirror).",
    )


class Endpoints(APIModel):
    """In-cluster addresses of the service."""

    rest: str | None = Field(default=None, description="Open Inference Protocol REST base URL.")
    grpc: str | None = Field(default=None, description="Open Inference Protocol gRPC address.")


class ModelDeploymentStatus(APIModel):
    """Observed state, written by the operator only."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status describes."
    )
    phase: Phase | None = Field(
        default=None,
        description="Pending, Building, Deploying, Progressing, Ready, Degraded or Failed.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="ArtifactReady, Available, Progressing, Degraded and Ready.",
    )
    artifact: ArtifactStatus | None = Field(default=None, description="The served artifact.")
    stable: RevisionStatus | None = Field(default=None, description="The stable revision.")
    canary: CanaryStatus | None = Field(default=None, description="The release in progress.")
    replicas: int | None = Field(default=None, ge=0, description="Pods, all revisions.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Ready pods.")
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )
    endpoints: Endpoints | None = Field(default=None, description="Where to send requests.")
    kopf: Annotated[
        dict[str, Any] | None,
        WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    ] = Field(default=None, description="Operator bookkeeping (handler progress, diff base).")


class ModelDeployment(APIModel):
    """A trained model, built into an optimized artifact and served behind a Service."""

    api_version: str = Field(default=API_VERSION, description="modelship.io/v1alpha1")
    kind: str = Field(default=KIND, description="ModelDeployment")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=f"self.metadata.name.matches('{NAME_PATTERN}') && "
            f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
            message=f"metadata.name must be a DNS-1035 label (lowercase letters, digits and "
            f"'-', starting with a letter) of at most {MAX_NAME_LENGTH} characters, because "
            "Service and Deployment names derive from it",
            check=lambda m: (
                "name" not in m.metadata
                or (
                    _matches(NAME_PATTERN, m.metadata["name"])
                    and len(m.metadata["name"]) <= MAX_NAME_LENGTH
                )
            ),
        ),
    )
