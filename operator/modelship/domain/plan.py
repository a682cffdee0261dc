"""From a ModelDeployment spec to the build plan, and what identifies its artifact."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from modelship.api.artifact import DIGEST_PATTERN, ArtifactStore, BuildPlan, SourceAccess
from modelship.api.quantity import parse_quantity
from modelship.api.v1alpha1 import ModelDeploymentSpec, ModelFormat
from modelship.domain import naming

DEFAULT_CPU = "1"
DEFAULT_MEMORY = "1Gi"
PICKLE_REFUSED = (
    "format sklearn unpickles the model, which runs code from the file, and this operator does "
    "not build pickles (MODELSHIP_ALLOW_PICKLE is false): export the model to ONNX yourself "
    "(skl2onnx.to_onnx) and use format onnx, or ask the cluster's administrators to allow "
    "pickles (chart value build.allowPickle)"
)
TORCH_PICKLE_REFUSED = (
    "allowPickle: true with format pytorch unpickles a whole module saved with torch.save, "
    "which runs code from the file, and this operator does not build pickles "
    "(MODELSHIP_ALLOW_PICKLE is false): export the model with torch.export.export and "
    "torch.export.save (.pt2) and drop allowPickle, or ask the cluster's administrators to "
    "allow pickles (chart value build.allowPickle)"
)


def serving_threads(spec: ModelDeploymentSpec) -> int:
    """Intra-op threads of a serving pod: the CPU limit, else the request, rounded down.

    The builder measures latency with the same thread count the server will use, and the
    thread count is part of the recipe, so a new CPU limit is a new artifact digest.
    """
    resources = spec.serving.resources
    cpu = (resources.limits.cpu if resources.limits else None) or (
        resources.requests.cpu if resources.requests else None
    )
    return max(1, math.floor(parse_quantity(cpu or DEFAULT_CPU)))


@dataclass(frozen=True)
class BuildPolicy:
    """What the operator lets any build do, whatever its spec asks (operator settings)."""

    allow_pickle: bool = False
    source_access: SourceAccess = field(default_factory=SourceAccess)


def build_plan(
    spec: ModelDeploymentSpec, store: ArtifactStore, policy: BuildPolicy | None = None
) -> BuildPlan:
    return BuildPlan(
        source=spec.model,
        optimization=spec.optimization,
        threads=serving_threads(spec),
        store=store,
        source_access=(policy or BuildPolicy()).source_access,
    )


@dataclass(frozen=True)
class BuildTarget:
    """What the operator needs to find or build the artifact of a spec."""

    plan: BuildPlan
    pinned_digest: str | None
    request_key: str
    refusal: str | None = None
    """Why the operator will not build this spec (its settings forbid it), if it will not."""

    @property
    def key(self) -> str:
        """The pinned digest when known (content address), else the request key."""
        return self.pinned_digest or self.request_key

    @property
    def job_name(self) -> str:
        return naming.build_job_name(self.key)

    @property
    def index_key(self) -> str:
        if self.pinned_digest:
            return naming.index_key_for_digest(self.pinned_digest)
        return naming.index_key_for_request(self.request_key)

    def artifact_uri(self, digest: str) -> str:
        """Where the plan's store keeps the artifact ``digest``."""
        return f"{self.plan.store.uri.rstrip('/')}/{naming.hex_of(digest)}"

    def in_store(self, digest: str, uri: str) -> bool:
        """Whether an artifact found in the index is in this plan's store (the namespace's
        own part of it): one published elsewhere (another namespace, or the store before it
        was partitioned) is built again from a source this namespace fetches itself."""
        return re.fullmatch(DIGEST_PATTERN, digest) is not None and uri == self.artifact_uri(digest)


def build_target(
    spec: ModelDeploymentSpec, store: ArtifactStore, policy: BuildPolicy | None = None
) -> BuildTarget:
    policy = policy or BuildPolicy()
    plan = build_plan(spec, store, policy)
    refusal = None
    if spec.model.format == ModelFormat.SKLEARN and not policy.allow_pickle:
        refusal = PICKLE_REFUSED
    elif spec.model.format == ModelFormat.PYTORCH and spec.model.allow_pickle:
        refusal = None if policy.allow_pickle else TORCH_PICKLE_REFUSED
    return BuildTarget(
        plan=plan, pinned_digest=plan.pinned_digest, request_key=plan.request_key, refusal=refusal
    )
