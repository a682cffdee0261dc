"""The contract between operator, builder and runtime: the build plan and the artifact manifest.

The operator derives a :class:`BuildPlan` from a ModelDeployment spec and hands it to the builder
Job as JSON. The builder publishes ``<digest>/model.onnx`` and ``<digest>/manifest.json`` (a
:class:`Manifest`) to the artifact store; the runtime server and the operator read the manifest.

Digests: ``plan_key`` hashes what the builder is asked to do (recipe + builder version);
the artifact digest hashes the source bytes together with the plan key. When the spec pins the
source sha256 the operator can compute the artifact digest itself and skip the Job entirely.

The recipe holds only what changes the artifact, and a field at its default is left out of it,
so adding an optional field to the API (at a default that keeps today's behaviour) changes no
digest and an operator upgrade rebuilds nothing. A change of the builder's output for the same
recipe is a new :data:`BUILDER_VERSION` (docs/builder.md, "Digests").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelship.api.v1alpha1 import ModelSource, OptimizationSpec, S3Settings, TensorSpec

BUILDER_VERSION = "2"
"""Bumped whenever the builder's output for the same recipe changes; part of every digest.

History (docs/builder.md): 1, the first builder; 2, the recipe leaves out fields at their
defaults and the plan schema version."""

RECIPE_FIELDS: dict[str, Any] = {
    "source": {"format": True, "inputs": True},
    "optimization": True,
    "threads": True,
}
"""The plan fields that change the artifact (not where it is fetched from or published to)."""

PLAN_SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"


def canonical_json(value: Any) -> bytes:
    """Stable JSON bytes: sorted keys, no whitespace, so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ArtifactStore(_Contract):
    """Where artifacts are published: a directory (a mounted PVC) or an S3 prefix."""

    uri: str = Field(description="file:///path or s3://bucket/prefix")
    s3: S3Settings | None = Field(default=None, description="Endpoint and credentials for s3.")


class BuildPlan(_Contract):
    """Everything the builder needs, derived from a ModelDeployment spec by the operator."""

    schema_version: int = Field(default=PLAN_SCHEMA_VERSION)
    source: ModelSource
    optimization: OptimizationSpec = Field(default_factory=OptimizationSpec)
    threads: int = Field(
        default=1, ge=1, le=256, description="intra-op threads the serving pods will use"
    )
    store: ArtifactStore

    def recipe(self) -> dict[str, Any]:
        """The canonical recipe: :data:`RECIPE_FIELDS` without those at their defaults."""
        dumped = self.model_dump(
            mode="json", by_alias=True, exclude_defaults=True, include=RECIPE_FIELDS
        )
        recipe = {k: v for k, v in dumped.items() if v != {}}
        recipe["builderVersion"] = BUILDER_VERSION
        return recipe

    @property
    def plan_key(self) -> str:
        """Hash of the recipe and the builder version."""
        return sha256_hex(canonical_json(self.recipe()))

    @property
    def request_key(self) -> str:
        """Hash of the recipe and the source location: names the build Job for unpinned sources."""
        return sha256_hex(canonical_json({"recipe": self.recipe(), "uri": self.source.uri}))

    def artifact_digest(self, source_sha256: str) -> str:
        """Digest of the artifact built from source bytes with this sha256."""
        return "sha256:" + sha256_hex(f"{source_sha256}:{self.plan_key}".encode())

    @property
    def pinned_digest(self) -> str | None:
        """The artifact digest when the source is pinned, else None (known only after fetch)."""
        return self.artifact_digest(self.source.sha256) if self.source.sha256 else None


class Accuracy(_Contract):
    """How a variant compares with the original on the validation samples."""

    metric: str
    value: float
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_abs_error: float | None = None
    top1_agreement: float | None = None
    samples: int = 0


class Latency(_Contract):
    """Benchmark figures measured by the builder with the serving thread count."""

    p50_ms: float
    p99_ms: float
    throughput_per_s: float
    threads: int
    batch_size: int = 1


class VariantReport(_Contract):
    """One candidate the builder produced and judged."""

    name: str
    accepted: bool
    reason: str = ""
    size_bytes: int | None = None
    accuracy: Accuracy | None = None
    latency: Latency | None = None
    sparsity: float | None = None


class TensorStats(_Contract):
    """Per-input calibration statistics: the baseline for drift monitoring."""

    mean: float
    std: float
    min: float
    max: float
    count: int
    histogram_edges: list[float] = Field(default_factory=list)
    histogram_counts: list[int] = Field(default_factory=list)


class Signature(_Contract):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Manifest(_Contract):
    """``manifest.json`` next to ``model.onnx`` in every published artifact."""

    digest: str
    source_digest: str = Field(description="sha256 of the fetched source bytes")
    plan_key: str
    variant: str
    model_file: str = MODEL_FILE
    model_sha256: str | None = Field(
        default=None, description="sha256 of model_file; readers check the bytes against it"
    )
    size_bytes: int
    source_size_bytes: int
    accuracy: Accuracy | None = None
    latency: Latency | None = None
    variants: list[VariantReport] = Field(default_factory=list)
    signature: Signature
    calibration_stats: dict[str, TensorStats] = Field(default_factory=dict)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""
