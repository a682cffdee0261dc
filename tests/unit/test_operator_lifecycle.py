"""The update path, driven tick by tick through the pure state machine (build, first deploy,
faults); releases of a second revision are in test_canary_release.py."""

from __future__ import annotations

from modelship.api.v1alpha1 import Phase
from modelship.domain.lifecycle import AdoptBuild, EnsureServing, RecordArtifact, StartBuild
from modelship.domain.observation import BuildObservation, BuildState, Fault, Problem, Scope
from release_world import World, artifact, spec

NEW = artifact(2, "int8-dynamic")


def kinds(world: World) -> list[type]:
    return [type(a) for a in world.actions if type(a).__name__ != "Emit"]


def test_first_deploy_tick_by_tick() -> None:
    world = World()
    # tick 1: nothing known -> build
    state = world.tick()
    assert state.phase is Phase.BUILDING
    assert kinds(world) == [StartBuild]
    assert world.events() == ["BuildStarted", "Building"]
    # tick 2: the Job runs -> nothing to do, no event
    world.build = BuildObservation(BuildState.RUNNING, world.target.job_name)
    again = world.tick()
    assert again == state
    assert world.actions == []
    # tick 3: the Job succeeded -> record, then deploy the first revision directly
    world.build = BuildObservation(
        BuildState.SUCCEEDED, world.target.job_name, NEW, duration_seconds=12.0
    )
    state = world.tick()
    assert state.phase is Phase.DEPLOYING
    assert kinds(world) == [RecordArtifact, EnsureServing]
    assert "BuildSucceeded" in world.events()
    plan = world.plan()
    assert plan.canary is None
    assert (plan.stable.artifact, plan.stable.replicas, plan.stable.render) == (NEW, 1, True)
    assert state.stable is not None
    assert state.stable.digest == NEW.digest
    assert state.canary is None, "the first revision has nothing to be compared with"
    # tick 4: pods ready -> Ready
    world.settle()
    state = world.tick()
    assert state.phase is Phase.READY
    assert world.events() == ["Ready"]
    # tick 5: steady -> nothing changes, no event
    again = world.tick()
    assert again == state
    assert world.events() == []


def test_known_artifact_skips_the_build() -> None:
    world = World(stored=NEW)
    state = world.tick()
    assert StartBuild not in kinds(world)
    assert kinds(world) == [EnsureServing]
    assert state.phase is Phase.DEPLOYING


def test_a_deployment_already_serving_the_target_needs_no_lookup() -> None:
    world = World(stored=NEW)
    world.tick()
    world.settle()
    world.stored = None  # the index is not consulted again: the Deployment says what it serves
    assert world.observe().serving(world.target.request_key) is not None
    assert world.tick().phase is Phase.READY
    assert StartBuild not in kinds(world)


def test_build_failure_is_degraded_once_and_not_retried() -> None:
    world = World(build=BuildObservation(BuildState.FAILED, "build-x", message="bad model"))
    state = world.tick()
    assert (state.phase, state.reason, state.message) == (
        Phase.DEGRADED,
        "BuildFailed",
        "bad model",
    )
    assert StartBuild not in kinds(world)
    assert [a.type for a in world.actions if type(a).__name__ == "Emit"] == ["Warning"]
    again = world.tick()
    assert again == state
    assert world.actions == []


def test_a_failed_rebuild_keeps_the_stable_revision_serving() -> None:
    world = World(stored=NEW)
    world.tick()
    world.settle()
    world.tick()
    world.spec = spec(optimization={"precision": "fp16"})
    world.stored = None
    world.build = BuildObservation(BuildState.FAILED, "build-y", message="fp16 lost accuracy")
    state = world.tick()
    assert state.phase is Phase.DEGRADED
    assert world.plan().stable.artifact == NEW, "the previous revision keeps serving"
    assert world.plan().stable.render is False, "and keeps its pods as they are"


def test_job_of_another_owner_is_adopted() -> None:
    world = World(build=BuildObservation(BuildState.RUNNING, "build-x", owned=False))
    world.tick()
    assert kinds(world) == [AdoptBuild]


def test_pod_fault_degrades_and_recovery_clears_it() -> None:
    world = World(stored=NEW)
    world.tick()
    world.settle()
    assert world.tick().phase is Phase.READY
    world.problems = (Problem("CrashLoopBackOff", "pod p-1: container server keeps crashing",
                              "p-1"),)  # fmt: skip
    state = world.tick()
    assert (state.phase, state.reason) == (Phase.DEGRADED, "CrashLoopBackOff")
    assert "p-1" in state.message
    assert [(a.type, a.reason) for a in world.actions if type(a).__name__ == "Emit"] == [
        ("Warning", "CrashLoopBackOff")
    ]
    world.problems = ()
    assert world.tick().phase is Phase.READY
    assert world.events() == ["Ready"]


def test_scaling_in_progress_is_progressing_not_degraded() -> None:
    world = World(stored=NEW)
    world.tick()
    world.settle()
    world.tick()
    world.spec = world.spec.model_copy(update={"replicas": 3})
    state = world.tick()
    assert (state.phase, state.reason) == (Phase.PROGRESSING, "Scaling")
    assert world.plan().stable.replicas == 3
    world.settle()
    assert world.tick().phase is Phase.READY


def test_a_build_pod_that_cannot_start_is_reported_while_building() -> None:
    world = World(
        build=BuildObservation(
            BuildState.RUNNING,
            "build-x",
            reason="BuildUnschedulable",
            message="builder pod build-x-1 cannot be scheduled: 0/1 nodes are available",
        )
    )
    state = world.tick()
    assert state.phase is Phase.BUILDING  # it may still start (a new node, freed capacity)
    assert state.reason == "BuildUnschedulable"
    assert "cannot be scheduled" in state.message
    assert StartBuild not in kinds(world)
    assert [(a.type, a.reason) for a in world.actions if type(a).__name__ == "Emit"] == [
        ("Warning", "BuildUnschedulable")
    ]



# --- faults: what the operator cannot do until a person acts ------------------------------

CONFLICT = Fault(Scope.SERVING, "NameConflict", "Service ml/m already exists and is not owned")


def test_a_serving_fault_writes_nothing_and_holds_the_release_where_it_is() -> None:
    world = World(stored=NEW, faults=(CONFLICT,))
    state = world.tick()
    assert (state.phase, state.reason, state.message) == (
        Phase.DEGRADED,
        "NameConflict",
        CONFLICT.message,
    )
    assert kinds(world) == [], "no serving write while a name we need is someone else's"
    assert state.stable is None, "the status must not claim a revision nothing rolled out"
    assert state.artifact == NEW, "the build is not what failed"
    assert [(a.type, a.reason) for a in world.actions if type(a).__name__ == "Emit"] == [
        ("Warning", "NameConflict")
    ]
    assert world.tick() == state
    assert world.events() == [], "said once, not every tick"
    world.faults = ()
    assert world.tick().phase is Phase.DEPLOYING
    assert kinds(world) == [EnsureServing]


def test_a_serving_fault_keeps_a_running_revision_as_it_is() -> None:
    world = World(stored=NEW)
    world.tick()
    world.settle()
    ready = world.tick()
    assert ready.phase is Phase.READY
    world.spec = world.spec.model_copy(update={"replicas": 3})
    world.faults = (Fault(Scope.SERVING, "Forbidden", "applying HPA ml/m: HTTP 403: no"),)
    state = world.tick()
    assert (state.phase, state.reason) == (Phase.DEGRADED, "Forbidden")
    assert kinds(world) == []
    assert state.stable == ready.stable


def test_a_build_fault_creates_no_job_and_says_why() -> None:
    fault = Fault(Scope.BUILD, "NameConflict", "Job ml/build-x already exists and is not owned")
    world = World(faults=(fault,))
    state = world.tick()
    assert (state.phase, state.reason) == (Phase.DEGRADED, "NameConflict")
    assert kinds(world) == []
    assert "BuildStarted" not in world.events()
    world.build = BuildObservation(BuildState.RUNNING, "build-x", owned=False)
    world.tick()
    assert AdoptBuild not in kinds(world), "a Job that is not ours is never adopted"


def test_an_index_fault_still_serves_the_built_artifact() -> None:
    world = World(
        build=BuildObservation(BuildState.SUCCEEDED, "build-x", NEW),
        faults=(Fault(Scope.INDEX, "ArtifactIndexFull", "the artifact index is full"),),
    )
    state = world.tick()
    assert kinds(world) == [EnsureServing], "not recorded, but served"
    assert (state.phase, state.reason) == (Phase.DEGRADED, "ArtifactIndexFull")
    assert "BuildSucceeded" not in world.events()


def test_several_faults_are_all_named() -> None:
    faults = tuple(Fault(Scope.SERVING, "Forbidden", f"fault {i}") for i in range(5))
    state = World(stored=NEW, faults=faults).tick()
    assert state.message == "fault 0; fault 1; fault 2 (and 2 more)"
