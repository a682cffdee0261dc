"""A small pure world for driving the lifecycle and release machines tick by tick.

It plays the parts the operator's pure code does not: it carries the status from one tick to the
next (through the real status computation and parser, as the API server would), applies serving
plans to Deployments as the Kubernetes layer would, makes pods ready when told, and moves the
clock. No Kubernetes, no threads, no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from modelship.api.timestamps import format_time
from modelship.api.v1alpha1 import (
    AnalysisResult,
    AnalysisVerdict,
    MismatchExample,
    ModelDeploymentSpec,
)
from modelship.domain import naming, status
from modelship.domain.lifecycle import Action, Emit, EnsureServing, State, step
from modelship.domain.observation import (
    Artifact,
    BuildObservation,
    Fault,
    Observation,
    Problem,
    ReleaseObservation,
    RolloutObservation,
)
from modelship.domain.plan import build_target
from modelship.domain.release import ServingPlan
from modelship.domain.settings import Settings

NAME = "m"
OWNER = naming.Owner(NAME, "ml", "uid-1")
IMAGE = "modelship-runtime:test"
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def artifact(n: int, variant: str = "fp32") -> Artifact:
    return Artifact(f"sha256:{str(n) * 64}", f"file:///artifacts/{str(n) * 64}", variant)


def spec(**extra: Any) -> ModelDeploymentSpec:
    body: dict[str, Any] = {"model": {"uri": "s3://b/m.onnx"}} | extra
    return ModelDeploymentSpec.model_validate(body)


def respec(base: ModelDeploymentSpec, **changes: Any) -> ModelDeploymentSpec:
    """The spec with some fields changed (camelCase, merged one level deep), validated."""
    body = base.to_wire()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = body[key] | value
        else:
            body[key] = value
    return ModelDeploymentSpec.model_validate(body)


def verdict(v: AnalysisVerdict, when: datetime, message: str = "") -> AnalysisResult:
    return AnalysisResult(
        time=format_time(when), verdict=v, requests=100, message=message or v.value
    )


@dataclass
class World:
    spec: ModelDeploymentSpec = field(default_factory=spec)
    now: datetime = T0
    generation: int = 1
    stored: Artifact | None = None
    build: BuildObservation = field(default_factory=BuildObservation)
    deployments: dict[str, RolloutObservation] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    faults: tuple[Fault, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    """As the API server stores it: every tick writes it and the next one reads it back."""
    actions: list[Action] = field(default_factory=list)
    route_weight: int | None = None
    """The canary weight the live routes carry (router: gatewayAPI); None: not programmed."""
    mismatches: tuple[MismatchExample, ...] | None = None
    """What the stable pods' GET /v2/mirror says, read with the next verdict."""

    @property
    def target(self) -> Any:
        return build_target(self.spec, Settings().artifact_store())

    @property
    def state(self) -> State:
        return status.state_from_status(self.status)

    def observe(self, analysis: AnalysisResult | None = None) -> Observation:
        before = self.state
        release = ReleaseObservation(
            now=self.now,
            image=IMAGE,
            revisions=tuple(self.deployments.values()),
            stable=before.stable,
            canary=before.canary,
            annotations=dict(self.annotations),
            analysis=analysis,
            route_weight=self.route_weight,
            mismatches=self.mismatches if analysis is not None else None,
        )
        return Observation(
            self.generation,
            self.target,
            self.stored,
            self.build,
            release,
            self.problems,
            self.faults,
        )

    def tick(self, analysis: AnalysisResult | None = None) -> State:
        """One reconcile: observe, step, apply the serving plan, write the status."""
        obs = self.observe(analysis)
        state, self.actions = step(self.state, obs, self.spec)
        for action in self.actions:
            if isinstance(action, EnsureServing):
                self.apply(action.plan)
        self.status = status.compute(
            state, obs, self.status, OWNER, self.spec.serving.grpc, format_time(self.now)
        )
        return state

    def apply(self, plan: ServingPlan) -> None:
        for revision in (plan.stable, plan.canary):
            if revision is None:
                continue
            name = revision.legacy_name or naming.revision_deployment_name(NAME, revision.revision)
            seen = self.deployments.get(name)
            if seen is None:
                seen = RolloutObservation(
                    exists=True,
                    name=name,
                    revision=revision.revision,
                    artifact=revision.artifact,
                    request_key=revision.request_key,
                )
            self.deployments[name] = replace(
                seen, desired=revision.replicas, retired_at=None, complete=False
            ) if seen.desired != revision.replicas or seen.retired_at else seen  # fmt: skip
        for retired in plan.retire:
            seen = self.deployments[retired.name]
            self.deployments[retired.name] = replace(
                seen, desired=0, retired_at=seen.retired_at or format_time(self.now)
            )
        for name in plan.delete:
            del self.deployments[name]

    def settle(self) -> None:
        """The kubelet catches up: every Deployment has its pods, all ready."""
        for name, seen in self.deployments.items():
            n = seen.desired
            self.deployments[name] = replace(
                seen, replicas=n, updated=n, ready=n, available=n, complete=True
            )

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def events(self) -> list[str]:
        return [a.reason for a in self.actions if isinstance(a, Emit)]

    def warnings(self) -> list[str]:
        return [a.message for a in self.actions if isinstance(a, Emit) and a.type == "Warning"]

    def pods(self) -> dict[str, int]:
        """Desired pods by revision (legacy Deployments by their name)."""
        return {(d.revision or d.name): d.desired for d in self.deployments.values() if d.desired}

    def plan(self) -> ServingPlan:
        return next(a.plan for a in self.actions if isinstance(a, EnsureServing))
