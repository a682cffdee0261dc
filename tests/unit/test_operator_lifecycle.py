"""The update path, driven tick by tick through the pure state machine."""

from __future__ import annotations

from dataclasses import replace

from modelship.api.v1alpha1 import ModelDeploymentSpec, Phase
from modelship.domain.lifecycle import (
    AdoptBuild,
    Emit,
    EnsureServing,
    RecordArtifact,
    StartBuild,
    State,
    step,
)
from modelship.domain.observation import (
    Artifact,
    BuildObservation,
    BuildState,
    Observation,
    Problem,
    RolloutObservation,
)
from modelship.domain.plan import build_target
from modelship.domain.settings import Settings

TARGET = build_target(
    ModelDeploymentSpec.model_validate({"model": {"uri": "s3://b/m.onnx"}}),
    Settings().artifact_store(),
)
OLD = Artifact("sha256:" + "1" * 64, "file:///artifacts/" + "1" * 64, "fp32")
NEW = Artifact("sha256:" + "2" * 64, "file:///artifacts/" + "2" * 64, "int8-dynamic")


def obs(**kw: object) -> Observation:
    return Observation(generation=1, target=TARGET, **kw)  # type: ignore[arg-type]


def rollout(
    artifact: Artifact, *, ready: int, desired: int = 2, key: str | None = None
) -> RolloutObservation:
    return RolloutObservation(
        exists=True,
        artifact=artifact,
        request_key=key or TARGET.request_key,
        desired=desired,
        replicas=desired,
        updated=desired,
        ready=ready,
        available=ready,
        complete=ready == desired,
    )


def kinds(actions: list[object]) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, Emit)]


def events(actions: list[object]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Emit)]


def test_first_deploy_tick_by_tick() -> None:
    state = State()
    # tick 1: nothing known -> build
    state, actions = step(state, obs())
    assert state.phase is Phase.BUILDING
    assert kinds(actions) == [StartBuild]
    assert events(actions) == ["BuildStarted", "Building"]
    # tick 2: the Job runs -> nothing to do, no event
    running = BuildObservation(BuildState.RUNNING, TARGET.job_name)
    again, actions = step(state, obs(build=running))
    assert again == state
    assert actions == []
    # tick 3: the Job succeeded -> record, then serve
    done = BuildObservation(BuildState.SUCCEEDED, TARGET.job_name, NEW, duration_seconds=12.0)
    state, actions = step(state, obs(build=done))
    assert state.phase is Phase.DEPLOYING
    assert kinds(actions) == [RecordArtifact, EnsureServing]
    assert actions[1] == EnsureServing(NEW)
    assert "BuildSucceeded" in events(actions)
    # tick 4: Deployment exists, no pod ready yet
    state, actions = step(state, obs(build=done, rollout=rollout(NEW, ready=0)))
    assert state.phase is Phase.DEPLOYING
    assert kinds(actions) == [EnsureServing]
    # tick 5: all pods ready
    state, actions = step(state, obs(build=done, rollout=rollout(NEW, ready=2)))
    assert state.phase is Phase.READY
    assert events(actions) == ["Ready"]
    # tick 6: nothing changed -> no event, only the (no-op) ensure
    again, actions = step(state, obs(build=done, rollout=rollout(NEW, ready=2)))
    assert again == state
    assert kinds(actions) == [EnsureServing]
    assert events(actions) == []


def test_known_artifact_skips_the_build() -> None:
    state, actions = step(State(), obs(stored=NEW))
    assert StartBuild not in kinds(actions)
    assert kinds(actions) == [EnsureServing]
    assert state.phase is Phase.DEPLOYING


def test_deployment_already_serving_the_target_needs_no_lookup() -> None:
    state, actions = step(State(), obs(rollout=rollout(NEW, ready=2)))
    assert state.phase is Phase.READY
    assert kinds(actions) == [EnsureServing]


def test_digest_change_builds_while_the_old_artifact_keeps_serving_then_rolls() -> None:
    ready = State(Phase.READY, "Ready", "", OLD)
    old_rollout = rollout(OLD, ready=2, key="previous-request")
    state, actions = step(ready, obs(rollout=old_rollout))
    assert state.phase is Phase.BUILDING
    assert kinds(actions) == [StartBuild, EnsureServing]
    assert actions[1] == EnsureServing(OLD, "previous-request"), "keep the old request key"
    done = BuildObservation(BuildState.SUCCEEDED, TARGET.job_name, NEW)
    state, actions = step(state, obs(build=done, rollout=old_rollout))
    assert state.phase is Phase.PROGRESSING
    assert EnsureServing(NEW) in actions
    state, _ = step(state, obs(build=done, rollout=rollout(NEW, ready=2)))
    assert state.phase is Phase.READY


def test_build_failure_is_degraded_once_and_not_retried() -> None:
    failed = BuildObservation(
        BuildState.FAILED, TARGET.job_name, reason="BackoffLimitExceeded", message="bad model"
    )
    state, actions = step(State(Phase.BUILDING, "Building"), obs(build=failed))
    assert state.phase is Phase.DEGRADED
    assert state.reason == "BuildFailed"
    assert state.message == "bad model"
    assert StartBuild not in kinds(actions)
    assert [a.type for a in actions if isinstance(a, Emit)] == ["Warning"]
    again, actions = step(state, obs(build=failed))
    assert again == state
    assert actions == []


def test_job_of_another_owner_is_adopted() -> None:
    running = BuildObservation(BuildState.RUNNING, TARGET.job_name, owned=False)
    _, actions = step(State(), obs(build=running))
    assert kinds(actions) == [AdoptBuild]


def test_pod_fault_degrades_and_recovery_clears_it() -> None:
    ready = State(Phase.READY, "Ready", "2/2 pods serve", NEW)
    crash = Problem("CrashLoopBackOff", "pod p-1: container server keeps crashing", "p-1")
    state, actions = step(ready, obs(rollout=rollout(NEW, ready=1), problems=(crash,)))
    assert state.phase is Phase.DEGRADED
    assert state.reason == "CrashLoopBackOff"
    assert "p-1" in state.message
    assert [(a.type, a.reason) for a in actions if isinstance(a, Emit)] == [
        ("Warning", "CrashLoopBackOff")
    ]
    state, actions = step(state, obs(rollout=rollout(NEW, ready=2)))
    assert state.phase is Phase.READY
    assert events(actions) == ["Ready"]


def test_scaling_in_progress_is_progressing_not_degraded() -> None:
    partial = replace(rollout(NEW, ready=2, desired=3), replicas=3, updated=3, complete=False)
    state, _ = step(State(Phase.READY, "Ready", "", NEW), obs(rollout=partial))
    assert state.phase is Phase.PROGRESSING


def test_a_build_pod_that_cannot_start_is_reported_while_building() -> None:
    stuck = BuildObservation(
        BuildState.RUNNING,
        TARGET.job_name,
        reason="BuildUnschedulable",
        message="builder pod b-1 cannot be scheduled: 0/1 nodes are available",
    )
    state, actions = step(State(Phase.BUILDING, "Building"), obs(build=stuck))
    assert state.phase is Phase.BUILDING  # it may still start (a new node, freed capacity)
    assert state.reason == "BuildUnschedulable"
    assert "cannot be scheduled" in state.message
    assert StartBuild not in kinds(actions)
    assert [(a.type, a.reason) for a in actions if isinstance(a, Emit)] == [
        ("Warning", "BuildUnschedulable")
    ]
