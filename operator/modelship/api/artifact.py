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
import ipaddress
import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A file name inside an artifact folder: no separators, no ``..``, nothing hidden."""
DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

ALWAYS_DENIED_NETWORKS = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.100.100.200/32",
    "::1/128",
    "fe80::/10",
    "fd00:ec2::254/128",
)
"""Never where a build fetches from: this host (loopback), link-local addresses, where most
cloud metadata endpoints answer (169.254.169.254), and the other clouds' metadata addresses."""
CLUSTER_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
"""Where clusters put their service and pod networks (the private and shared ranges): the
default of the operator's ``cluster_cidrs``, which it may set to the cluster's own CIDRs."""

REDACTED = "***"


def redact_uri(uri: str) -> str:
    """``uri`` fit for logs, the artifact index and the status: ``user:password@`` and the
    values of query parameters (presigned URLs carry their signature and token there) hidden."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{quote(key, safe='')}={REDACTED}"
        for key, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    if parts.query and not query:
        query = REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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

    def for_namespace(self, namespace: str) -> ArtifactStore:
        """The namespace's own part of the store, ``<uri>/<namespace>``: what its builds
        publish to and its serving pods read from (an artifact of another namespace is never
        found there, so it is built again from a source this namespace can fetch)."""
        if not NAMESPACE_PATTERN.match(namespace):
            raise ValueError(f"{namespace!r} is not a namespace name")
        return self.model_copy(update={"uri": f"{self.uri.rstrip('/')}/{namespace}"})


def _network(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


class SourceAccess(_Contract):
    """Which addresses a build may fetch its sources from: set by the operator, never by the
    spec, and checked by the builder on every connection (and on every redirect)."""

    internal: bool = Field(
        default=False,
        description="Allow every address, denied_networks too; modelship-build on a laptop "
        "allows them.",
    )
    denied_networks: list[str] = Field(
        default_factory=lambda: [*ALWAYS_DENIED_NETWORKS, *CLUSTER_NETWORKS],
        description="CIDRs sources must not be in: loopback, link-local and the cluster's "
        "service and pod networks.",
    )

    @field_validator("denied_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [_network(v) for v in value]


class BuildPlan(_Contract):
    """Everything the builder needs, derived from a ModelDeployment spec by the operator."""

    schema_version: int = Field(default=PLAN_SCHEMA_VERSION)
    source: ModelSource
    optimization: OptimizationSpec = Field(default_factory=OptimizationSpec)
    threads: int = Field(
        default=1, ge=1, le=256, description="intra-op threads the serving pods will use"
    )
    store: ArtifactStore
    source_access: SourceAccess = Field(
        default_factory=SourceAccess,
        description="Where sources may be fetched from (not part of the recipe).",
    )

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

    digest: str = Field(pattern=DIGEST_PATTERN)
    source_digest: str = Field(description="sha256 of the fetched source bytes")
    plan_key: str
    variant: str
    model_file: str = Field(
        default=MODEL_FILE,
        pattern=FILE_NAME_PATTERN,
        description="The model's file name in the artifact folder (a plain name: readers "
        "join it to their folder, so a path could point anywhere).",
    )
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

    @field_validator("model_file")
    @classmethod
    def _not_the_manifest(cls, value: str) -> str:
        if value == MANIFEST_FILE:
            raise ValueError(f"model_file cannot be {MANIFEST_FILE}")
        return value
