"""Revisions (what the serving pods run) and how traffic is split between two of them.

A revision is named by a short hash of the artifact digest, the spec's serving settings and the
runtime image: any change to one of them is a new revision, released as a canary; a change to
anything else (scaling bounds, analysis settings) is applied in place. The serving settings are
hashed in the same default-free canonical form as the build recipe, so an operator upgrade that
adds an optional serving field starts no release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from modelship.api.artifact import canonical_json, sha256_hex
from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import naming


def revision_of(spec: ModelDeploymentSpec, digest: str, image: str) -> str:
    """The revision name of serving ``digest`` with the spec's serving settings and ``image``."""
    serving = spec.serving.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    content = {"digest": digest, "serving": serving, "image": image}
    return sha256_hex(canonical_json(content))[: naming.REVISION_LENGTH]


@dataclass(frozen=True)
class Split:
    """Pods of each revision for a weight."""

    stable: int
    canary: int


class Router(Protocol):
    """Realises a canary weight: ReplicaRouter (pod counts) or GatewayRouter (route weights)."""

    def split(self, total: int, weight: int) -> Split:
        """Pods of each revision when ``total`` pods serve and the canary asks ``weight``%."""
        ...

    def actual_weight(self, stable_ready: int, canary_ready: int) -> int:
        """The share of requests the canary gets now, in percent."""
        ...

    def serves(self, total: int, weight: int, stable_ready: int, canary_ready: int) -> bool:
        """Whether the canary serves its step's ``weight``% now (a step without a pause asks a
        person only from then on)."""
        ...


class ReplicaRouter:
    """One Service selects the pods of both revisions; requests spread over ready pods, so the
    weight is the canary's share of the ready pods. The canary has at least one pod, which can
    make the real share larger than the one asked for on few pods: the status reports it."""

    def split(self, total: int, weight: int) -> Split:
        total = max(total, 1)
        if weight >= 100:
            return Split(0, total)
        canary = max(1, math.floor(total * weight / 100 + 0.5))
        return Split(max(1, total - canary), canary)

    def actual_weight(self, stable_ready: int, canary_ready: int) -> int:
        serving = stable_ready + canary_ready
        return 0 if serving == 0 else math.floor(100 * canary_ready / serving + 0.5)

    def serves(self, total: int, weight: int, stable_ready: int, canary_ready: int) -> bool:
        """Every canary pod of the step's split is ready."""
        return canary_ready >= self.split(total, weight).canary


class GatewayRouter(ReplicaRouter):
    """router: gatewayAPI. The Gateway sends each request by the weights the operator puts on
    the user's routes, so the share is exact whatever the pod counts; pods are still sized for
    the share (as for replicas), so the canary has the capacity its weight asks. The weight
    achieved is the one the live route carries, once the canary has a ready pod."""

    def __init__(self, route_weight: int | None) -> None:
        self.route_weight = route_weight

    def actual_weight(self, stable_ready: int, canary_ready: int) -> int:
        if canary_ready == 0 or self.route_weight is None:
            return 0
        return self.route_weight

    def serves(self, total: int, weight: int, stable_ready: int, canary_ready: int) -> bool:
        """The split's canary pods are ready and the Gateways took the step's weight (the
        route's current generation is programmed with it): before, requests still go by the
        previous weights."""
        return super().serves(total, weight, stable_ready, canary_ready) and (
            self.actual_weight(stable_ready, canary_ready) == weight
        )
