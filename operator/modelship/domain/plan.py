"""From a ModelDeployment spec to the build plan, and what identifies its artifact."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelship.api.artifact import ArtifactStore, BuildPlan
from modelship.api.quantity import parse_quantity
from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import naming

DEFAULT_CPU = "1"
DEFAULT_MEMORY = "1Gi"


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


def build_plan(spec: ModelDeploymentSpec, store: ArtifactStore) -> BuildPlan:
    return BuildPlan(
        source=spec.model,
        optimization=spec.optimization,
        threads=serving_threads(spec),
        store=store,
    )


@dataclass(frozen=True)
class BuildTarget:
    """What the operator needs to find or build the artifact of a spec."""

    plan: BuildPlan
    pinned_digest: str | None
    request_key: str

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


def build_target(spec: ModelDeploymentSpec, store: ArtifactStore) -> BuildTarget:
    plan = build_plan(spec, store)
    return BuildTarget(plan=plan, pinned_digest=plan.pinned_digest, request_key=plan.request_key)
