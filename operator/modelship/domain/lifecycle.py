"""The update path of a ModelDeployment as a pure state machine.

``step(state, observation) -> (state, actions)`` makes one decision per tick from what the
reconciler observed; the reconciler carries out the actions, writes the status and comes back on
the next event or after ``requeue_after``. Nothing here talks to Kubernetes, so every transition
is tested tick by tick.

Phases (the API's :class:`~modelship.api.v1alpha1.Phase`):

    Pending ─▶ Building ─▶ Deploying ─▶ Ready ◀─▶ Degraded
                  ▲                      │
                  └──── digest change ───┘ (Building, then Progressing while the new artifact
                                           rolls out; the canary issue replaces that rolling step
                                           with its own sub-machine behind the same phase)

A build failure is Degraded (the previous artifact, if any, keeps serving); it is not retried
until the spec changes or the failed Job is deleted, so a broken build cannot loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelship.api.v1alpha1 import Phase
from modelship.domain.observation import STUCK_BUILD_REASONS, Artifact, BuildState, Observation

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
    """Bring Deployment, Service, HPA and PDB to the desired state for this artifact."""

    artifact: Artifact
    request_key: str | None = None
    """The build request the artifact answers; None means the current target's."""


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

    @property
    def busy(self) -> bool:
        return self.phase in (Phase.PENDING, Phase.BUILDING, Phase.DEPLOYING, Phase.PROGRESSING)


def _resolve(obs: Observation) -> tuple[Artifact | None, list[Action]]:
    """The artifact of the target if already known, and what recording it takes."""
    rollout = obs.rollout
    if rollout.artifact is not None and rollout.request_key == obs.target.request_key:
        return rollout.artifact, []
    if obs.stored is not None:
        return obs.stored, []
    if obs.build.state is BuildState.SUCCEEDED and obs.build.result is not None:
        return obs.build.result, [RecordArtifact(obs.build.result, obs.build.duration_seconds)]
    return None, []


def _next(obs: Observation) -> tuple[State, list[Action]]:
    artifact, actions = _resolve(obs)
    if artifact is None:
        return _while_building(obs)
    actions.append(EnsureServing(artifact))
    return _serving(obs, artifact), actions


def _while_building(obs: Observation) -> tuple[State, list[Action]]:
    """No artifact for the spec yet: the previous one keeps serving while the build runs or
    after it failed."""
    build, serving = obs.build, obs.rollout.artifact
    keep: list[Action] = (
        [EnsureServing(serving, obs.rollout.request_key)] if serving is not None else []
    )
    if build.state is BuildState.FAILED:
        return State(Phase.DEGRADED, "BuildFailed", build.message), keep
    if build.state is BuildState.ABSENT:
        return State(
            Phase.BUILDING,
            "Building",
            f"building the artifact in Job {obs.target.job_name}",
        ), [StartBuild(), *keep]
    adopt: list[Action] = [] if build.owned else [AdoptBuild()]
    if build.reason:  # the builder pod cannot start; say why (it may still, e.g. new nodes)
        return State(Phase.BUILDING, build.reason, build.message), adopt + keep
    return State(
        Phase.BUILDING, "Building", f"building the artifact in Job {build.job_name}"
    ), adopt + keep


def _serving(obs: Observation, artifact: Artifact) -> State:
    """The artifact exists: how far the Deployment is in serving it."""
    rollout, serving = obs.rollout, obs.rollout.artifact
    rolled = serving is not None and serving.digest == artifact.digest
    if rolled and obs.problems:
        first = obs.problems[0]
        more = f" (and {len(obs.problems) - 1} more)" if len(obs.problems) > 1 else ""
        return State(Phase.DEGRADED, first.reason, first.message + more, artifact)
    if serving is None:
        return State(
            Phase.DEPLOYING, "Deploying", f"deploying artifact {artifact.digest}", artifact
        )
    if not rolled:
        return State(
            Phase.PROGRESSING,
            "RollingOut",
            f"replacing artifact {serving.digest} with {artifact.digest}",
            artifact,
        )
    if rollout.complete and rollout.ready >= rollout.desired:
        return State(
            Phase.READY,
            "Ready",
            f"{rollout.ready}/{rollout.desired} pods serve artifact {artifact.digest}",
            artifact,
        )
    if rollout.available == 0 and rollout.updated == rollout.replicas:
        return State(
            Phase.DEPLOYING, "WaitingForPods", f"{rollout.ready}/{rollout.desired} pods ready",
            artifact,
        )  # fmt: skip
    return State(
        Phase.PROGRESSING,
        "Progressing",
        f"{rollout.updated}/{rollout.desired} pods updated, {rollout.ready} ready",
        artifact,
    )


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


def step(state: State, obs: Observation) -> tuple[State, list[Action]]:
    """One tick: the next state and the actions that move the world towards it."""
    after, actions = _next(obs)
    if after == state:
        return state, actions
    return after, [*actions, *_events(state, after, actions, obs)]
