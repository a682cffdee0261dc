"""The update path of a ModelDeployment as a pure state machine.

``step(state, observation) -> (state, actions)`` makes one decision per tick from what the
reconciler observed; the reconciler carries out the actions, writes the status and comes back on
the next event or after ``requeue_after``. Nothing here talks to Kubernetes, so every transition
is tested tick by tick.

Phases (the API's :class:`~modelship.api.v1alpha1.Phase`):

    Pending ─▶ Building ─▶ Deploying ─▶ Ready ◀─▶ Degraded
                  ▲                      │
                  └─── revision change ──┘ (Building when the artifact changes, then
                                            Progressing while the release runs: the serving
                                            half is :func:`modelship.domain.release.release`)

A build failure is Degraded (the previous revision, if any, keeps serving); it is not retried
until the spec changes or the failed Job is deleted, so a broken build cannot loop. A rolled-back
canary is Degraded too, with the stable revision serving, until the spec changes or a retry.
A :class:`~modelship.domain.observation.Fault` (a name taken by an object we do not own, a
request the API server refused) is Degraded with the fault's reason, and the step plans nothing
in the fault's scope: no build, no index write, or no serving write at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelship.api.v1alpha1 import (
    CanaryStatus,
    ModelDeploymentSpec,
    Phase,
    RevisionStatus,
    Router,
)
from modelship.domain.desired import desired_replicas
from modelship.domain.observation import (
    STUCK_BUILD_REASONS,
    Artifact,
    BuildState,
    Observation,
    Scope,
)
from modelship.domain.release import ServingPlan, release
from modelship.domain.revisions import GatewayRouter

# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartBuild:
    """Create the build Job of the target (idempotent: its name derives from the digest)."""


@dataclass(frozen=True)
class AdoptBuild:
    """Add this ModelDeployment to the owners of a Job another one created."""


@dataclass(frozen=True)
class RecordArtifact:
    """Publish the build result in the artifact index, so later specs skip the build."""

    artifact: Artifact
    duration_seconds: float | None = None


@dataclass(frozen=True)
class EnsureServing:
    """Bring the revision Deployments, the Services, HPA and PDB to this serving plan."""

    plan: ServingPlan


@dataclass(frozen=True)
class Emit:
    """Post an Event on the ModelDeployment."""

    type: str
    reason: str
    message: str


Action = StartBuild | AdoptBuild | RecordArtifact | EnsureServing | Emit

# --- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """What the status already says: the phase and why."""

    phase: Phase = Phase.PENDING
    reason: str = ""
    message: str = ""
    artifact: Artifact | None = None
    """The artifact the spec resolves to (not necessarily rolled out yet)."""
    stable: RevisionStatus | None = None
    canary: CanaryStatus | None = None

    @property
    def busy(self) -> bool:
        return self.phase in (Phase.PENDING, Phase.BUILDING, Phase.DEPLOYING, Phase.PROGRESSING)


def _resolve(obs: Observation) -> tuple[Artifact | None, list[Action]]:
    """The artifact of the target if already known, and what recording it takes."""
    serving = obs.serving(obs.target.request_key)
    if serving is not None and serving.artifact is not None:
        return serving.artifact, []
    if obs.stored is not None:
        return obs.stored, []
    if obs.build.state is BuildState.SUCCEEDED and obs.build.result is not None:
        return obs.build.result, [RecordArtifact(obs.build.result, obs.build.duration_seconds)]
    return None, []


def _next(before: State, obs: Observation, spec: ModelDeploymentSpec) -> tuple[State, list[Action]]:
    artifact, actions = _resolve(obs)
    if obs.blocked(Scope.INDEX):
        actions = []
    router = (
        GatewayRouter(obs.release.route_weight)
        if spec.rollout.router is Router.GATEWAY_API
        else None
    )
    served = release(
        spec, artifact, obs.target.request_key, desired_replicas(spec), obs.release, router
    )
    if obs.blocked(Scope.SERVING):
        # Nothing is written, so the release stays where the status says it is.
        served = replace(served, plan=None, events=(), stable=before.stable, canary=before.canary)
    if served.plan is not None:
        actions.append(EnsureServing(served.plan))
    actions += [Emit(e.type, e.reason, e.message) for e in served.events]
    if artifact is None:
        state = _while_building(obs)
        return _faulted(replace(state, stable=served.stable, canary=served.canary), obs), actions
    state = State(
        served.phase, served.reason, served.message, artifact, served.stable, served.canary
    )
    if obs.problems and served.phase in (Phase.READY, Phase.PROGRESSING, Phase.DEPLOYING):
        first = obs.problems[0]
        more = f" (and {len(obs.problems) - 1} more)" if len(obs.problems) > 1 else ""
        state = replace(state, phase=Phase.DEGRADED, reason=first.reason,
                        message=first.message + more)  # fmt: skip
    return _faulted(state, obs), actions


def _faulted(state: State, obs: Observation) -> State:
    """What the operator cannot do outweighs how the pods are: it needs a person first."""
    if not obs.faults:
        return state
    shown = [f.message for f in obs.faults[:3]]
    more = f" (and {len(obs.faults) - 3} more)" if len(obs.faults) > 3 else ""
    return replace(
        state, phase=Phase.DEGRADED, reason=obs.faults[0].reason, message="; ".join(shown) + more
    )


def _while_building(obs: Observation) -> State:
    """No artifact for the spec yet: what serves keeps serving while the build runs or after
    it failed."""
    build = obs.build
    if build.state is BuildState.FAILED:
        return State(Phase.DEGRADED, "BuildFailed", build.message)
    if build.state is BuildState.ABSENT:
        return State(
            Phase.BUILDING, "Building", f"building the artifact in Job {obs.target.job_name}"
        )
    if build.reason:  # the builder pod cannot start; say why (it may still, e.g. new nodes)
        return State(Phase.BUILDING, build.reason, build.message)
    return State(Phase.BUILDING, "Building", f"building the artifact in Job {build.job_name}")


def _build_actions(obs: Observation, artifact: Artifact | None) -> list[Action]:
    if artifact is not None or obs.build.state is BuildState.FAILED or obs.blocked(Scope.BUILD):
        return []
    if obs.build.state is BuildState.ABSENT:
        return [StartBuild()]
    return [] if obs.build.owned else [AdoptBuild()]


def _events(before: State, after: State, actions: list[Action], obs: Observation) -> list[Emit]:
    events: list[Emit] = []
    for action in actions:
        if isinstance(action, StartBuild):
            events.append(
                Emit("Normal", "BuildStarted", f"created build Job {obs.target.job_name}")
            )
        elif isinstance(action, RecordArtifact):
            events.append(
                Emit(
                    "Normal",
                    "BuildSucceeded",
                    f"artifact {action.artifact.digest} ({action.artifact.variant or 'variant ?'}) "
                    f"published at {action.artifact.uri}",
                )
            )
    if (before.phase, before.reason) != (after.phase, after.reason):
        warn = after.phase is Phase.DEGRADED or after.reason in STUCK_BUILD_REASONS
        kind = "Warning" if warn else "Normal"
        events.append(Emit(kind, after.reason or after.phase.value, after.message))
    return events


def step(state: State, obs: Observation, spec: ModelDeploymentSpec) -> tuple[State, list[Action]]:
    """One tick: the next state and the actions that move the world towards it."""
    after, actions = _next(state, obs, spec)
    actions = _build_actions(obs, after.artifact) + actions
    if after == state:
        return state, actions
    return after, [*actions, *_events(state, after, actions, obs)]
