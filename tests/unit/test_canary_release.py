"""Releases of a new revision, tick by tick: steps, analysis verdicts, promotion, rollback,
manual control, restarts, scaling and adoption of the Deployment of older operators."""

from __future__ import annotations

from typing import Any

import pytest

from modelship.api.v1alpha1 import AnalysisVerdict, CanaryPhase, Phase
from modelship.domain import naming
from modelship.domain.observation import RolloutObservation
from modelship.domain.revisions import ReplicaRouter, revision_of
from release_world import IMAGE, NAME, World, artifact, respec, spec, verdict

OLD, NEW = artifact(1), artifact(2, "int8-dynamic")
PASS, FAIL, INCONCLUSIVE = (
    AnalysisVerdict.PASS,
    AnalysisVerdict.FAIL,
    AnalysisVerdict.INCONCLUSIVE,
)
STEPS = [{"weight": 10, "pause": "60s"}, {"weight": 50, "pause": "60s"}]


def rollout(**extra: Any) -> dict[str, Any]:
    return {"steps": STEPS, "analysis": {"interval": "10s"}} | extra


def serving_old(**rollout_spec: Any) -> World:
    """A ModelDeployment at 10 pods serving OLD, Ready, about to release NEW."""
    world = World(
        spec=spec(replicas=10, scaling={"maxReplicas": 20}, rollout=rollout(**rollout_spec)),
        stored=OLD,
    )
    world.tick()
    world.settle()
    assert world.tick().phase is Phase.READY
    world.stored = NEW
    world.spec = respec(world.spec, optimization={"precision": "fp16"})
    return world


def rev(a: Any, world: World) -> str:
    return revision_of(world.spec, a.digest, IMAGE)


def test_revision_names_change_with_what_the_pods_run_only() -> None:
    base = spec()
    r = revision_of(base, OLD.digest, IMAGE)
    assert revision_of(base, NEW.digest, IMAGE) != r
    assert revision_of(spec(serving={"grpc": False}), OLD.digest, IMAGE) != r
    assert revision_of(base, OLD.digest, "modelship-runtime:other") != r
    assert revision_of(spec(scaling={"maxReplicas": 9}), OLD.digest, IMAGE) == r
    assert revision_of(spec(rollout={"analysis": {"interval": "5s"}}), OLD.digest, IMAGE) == r
    assert revision_of(spec(serving={"grpc": True}), OLD.digest, IMAGE) == r, "a default"
    assert len(r) == naming.REVISION_LENGTH


@pytest.mark.parametrize(
    ("total", "weight", "stable", "canary", "actual"),
    [(10, 10, 9, 1, 10), (10, 50, 5, 5, 50), (1, 10, 1, 1, 50), (3, 10, 2, 1, 33),
     (4, 100, 0, 4, 100), (20, 5, 19, 1, 5)],
)  # fmt: skip
def test_the_replica_router_splits_pods_and_reports_the_real_share(
    total: int, weight: int, stable: int, canary: int, actual: int
) -> None:
    router = ReplicaRouter()
    split = router.split(total, weight)
    assert (split.stable, split.canary) == (stable, canary)
    assert router.actual_weight(split.stable, split.canary) == actual


def test_a_good_version_walks_every_step_and_is_promoted() -> None:
    world = serving_old()
    old, new = rev(OLD, world), rev(NEW, world)
    state = world.tick()
    assert state.canary is not None
    assert state.canary.revision == new
    assert "CanaryStarted" in world.events()
    assert world.pods() == {old: 9, new: 1}
    assert state.phase is Phase.PROGRESSING
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert (state.canary.step, state.canary.desired_weight, state.canary.weight) == (0, 10, 10)
    # A pass within the pause does not end the step early.
    world.advance(10)
    state = world.tick(verdict(PASS, world.now))
    assert state.canary is not None
    assert state.canary.step == 0
    assert state.canary.successful_intervals == 1
    world.advance(55)
    state = world.tick(verdict(PASS, world.now))
    assert state.canary is not None
    assert state.canary.step == 1
    assert "StepAdvanced" in world.events()
    assert world.pods() == {old: 5, new: 5}
    world.settle()
    world.advance(61)
    state = world.tick(verdict(PASS, world.now))
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.PROMOTING
    assert world.pods() == {old: 5, new: 10}, "the stable keeps serving until the canary is full"
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.SUCCEEDED
    assert state.canary.weight == 100
    assert state.stable is not None
    assert state.stable.revision == new
    assert "Promoted" in world.events()
    assert world.pods() == {new: 10}, "the old revision is scaled down at once"
    old_name = naming.revision_deployment_name(NAME, old)
    assert world.deployments[old_name].retired_at is not None
    world.settle()
    assert world.tick().phase is Phase.READY
    world.advance(31)  # scaleDownDelay 30s
    world.tick()
    assert old_name not in world.deployments
    world.tick()
    assert world.plan().delete == ()


def test_failed_analyses_roll_back_within_the_failure_limit() -> None:
    world = serving_old()
    old, new = rev(OLD, world), rev(NEW, world)
    world.tick()
    world.settle()
    world.advance(10)
    state = world.tick(verdict(FAIL, world.now, "p99 412 ms > 250 ms on 1 830 requests in 10 s"))
    assert state.canary is not None
    assert state.canary.failed_intervals == 1
    assert state.canary.phase is CanaryPhase.PROGRESSING
    assert world.warnings() == [
        f"revision {new} failed analysis 1/2: p99 412 ms > 250 ms on 1 830 requests in 10 s"
    ]
    world.advance(10)
    state = world.tick(verdict(FAIL, world.now, "p99 398 ms > 250 ms on 1 790 requests in 10 s"))
    assert state.phase is Phase.DEGRADED
    assert state.reason == "RolledBack"
    assert "p99 398 ms > 250 ms on 1 790 requests" in state.message
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.ABORTED
    assert state.canary.reason == "AnalysisFailed"
    assert "RolledBack" in world.events()
    assert world.pods() == {old: 10}, "all traffic to the stable at once"
    # Not tried again while the spec stays the same.
    world.settle()
    world.advance(60)
    state = world.tick()
    assert state.phase is Phase.DEGRADED
    assert world.pods() == {old: 10}
    assert world.events() == []


def test_a_retry_restarts_an_aborted_canary_once_per_value() -> None:
    world = serving_old()
    new = rev(NEW, world)
    world.annotations[naming.ANNOTATION_ABORT] = new
    world.tick()
    state = world.tick()
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.ABORTED
    assert state.canary.reason == "Aborted"
    world.annotations[naming.ANNOTATION_RETRY] = "0000000000"  # another revision: ignored
    assert world.tick().canary.phase is CanaryPhase.ABORTED  # type: ignore[union-attr]
    world.annotations[naming.ANNOTATION_RETRY] = new + "@s0a1"
    state = world.tick()
    assert state.canary is not None
    assert (state.canary.phase, state.canary.attempt) == (CanaryPhase.PROGRESSING, 2)
    assert "CanaryRetried" in world.events()
    # The abort annotation still there was acted on already: it does not abort the retry.
    state = world.tick()
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.PROGRESSING


def test_too_little_traffic_is_inconclusive_and_holds_then_follows_on_inconclusive() -> None:
    world = serving_old(analysis={"interval": "10s", "inconclusiveLimit": 3})
    world.tick()
    world.settle()
    for i in range(5):
        world.advance(20)
        state = world.tick(verdict(INCONCLUSIVE, world.now, "3 requests < minRequests 20"))
        assert state.canary is not None
        assert state.canary.phase is CanaryPhase.PROGRESSING
        assert state.canary.step == 0, "hold: never advance without a verdict"
        assert state.canary.failed_intervals == 0, "inconclusive is never a failure"
        assert state.canary.inconclusive_intervals == i + 1
    assert world.tick().phase is Phase.PROGRESSING

    rollback = serving_old(
        analysis={"interval": "10s", "inconclusiveLimit": 2, "onInconclusive": "rollback"}
    )
    rollback.tick()
    rollback.settle()
    rollback.advance(10)
    rollback.tick(verdict(INCONCLUSIVE, rollback.now))
    rollback.advance(10)
    state = rollback.tick(verdict(INCONCLUSIVE, rollback.now))
    assert state.canary is not None
    assert state.canary.reason == "Inconclusive"
    assert state.phase is Phase.DEGRADED

    promote = serving_old(
        analysis={"interval": "10s", "inconclusiveLimit": 2, "onInconclusive": "promote"}
    )
    promote.tick()
    promote.settle()
    promote.advance(30)
    promote.tick(verdict(INCONCLUSIVE, promote.now))
    promote.advance(31)
    state = promote.tick(verdict(INCONCLUSIVE, promote.now))
    assert state.canary is not None
    assert state.canary.step == 1


def test_a_step_without_a_pause_waits_for_a_promote_of_this_revision() -> None:
    world = serving_old(steps=[{"weight": 20}, {"weight": 60, "pause": "30s"}])
    new = rev(NEW, world)
    world.tick()
    world.settle()
    world.advance(600)
    state = world.tick(verdict(PASS, world.now))
    assert state.canary is not None
    assert (state.canary.phase, state.canary.reason) == (
        CanaryPhase.PAUSED,
        "WaitingForPromotion",
    )
    assert state.reason == "CanaryPaused"
    world.annotations[naming.ANNOTATION_PROMOTE] = "ffffffffff"  # a stale revision
    assert world.tick().canary.step == 0  # type: ignore[union-attr]
    world.annotations[naming.ANNOTATION_PROMOTE] = new
    state = world.tick()
    assert state.canary is not None
    assert (state.canary.step, state.canary.phase) == (1, CanaryPhase.PROGRESSING)
    assert state.canary.handled == {"promote": new}
    # The same value does not skip the next step's pause.
    state = world.tick()
    assert state.canary is not None
    assert state.canary.step == 1
    assert state.canary.phase is CanaryPhase.PROGRESSING


def test_failed_metric_queries_never_count_towards_on_inconclusive_promote() -> None:
    analysis = {"interval": "10s", "inconclusiveLimit": 2, "onInconclusive": "promote"}
    failing = serving_old(analysis=analysis)
    failing.tick()
    failing.settle()
    for _ in range(5):
        failing.advance(31)
        errored = verdict(INCONCLUSIVE, failing.now).model_copy(update={"errors": 1})
        state = failing.tick(errored)
    assert state.canary is not None
    assert (state.canary.step, state.canary.inconclusive_intervals) == (0, 0), "held"
    quiet = serving_old(analysis=analysis)
    quiet.tick()
    quiet.settle()
    for _ in range(2):
        quiet.advance(31)
        state = quiet.tick(verdict(INCONCLUSIVE, quiet.now))
    assert state.canary is not None
    assert state.canary.step == 1, "too little traffic (no error) does go on"


def test_a_step_without_a_pause_asks_for_a_promote_only_once_its_weight_is_served() -> None:
    world = serving_old(steps=[{"weight": 50}])
    world.tick()
    world.advance(30)
    state = world.tick(verdict(PASS, world.now))  # the canary's pods are not ready yet
    assert state.canary is not None
    assert (state.canary.phase, state.canary.reason) == (
        CanaryPhase.PROGRESSING,
        "StepInProgress",
    )
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert (state.canary.phase, state.canary.reason, state.canary.weight) == (
        CanaryPhase.PAUSED,
        "WaitingForPromotion",
        50,
    )


def test_promote_full_skips_the_remaining_steps() -> None:
    world = serving_old()
    world.tick()
    world.annotations[naming.ANNOTATION_PROMOTE_FULL] = rev(NEW, world) + "@s0a1"
    state = world.tick()
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.PROMOTING
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.SUCCEEDED


def test_a_release_past_its_deadline_is_rolled_back() -> None:
    world = serving_old(progressDeadline="5m", steps=[{"weight": 10}])
    world.tick()
    world.settle()
    world.advance(301)
    state = world.tick()
    assert state.phase is Phase.DEGRADED
    assert state.reason == "ProgressDeadlineExceeded"
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.ABORTED


def test_an_operator_restart_in_the_middle_resumes_from_the_status_alone() -> None:
    world = serving_old()
    world.tick()
    world.settle()
    world.advance(10)
    world.tick(verdict(PASS, world.now))
    # A new process: nothing but the status and the cluster. The World keeps no other memory,
    # so this is the same as the next tick of a fresh operator; check the status has it all.
    restarted = World(
        spec=world.spec, now=world.now, stored=world.stored,
        deployments=dict(world.deployments), status=dict(world.status),
    )  # fmt: skip
    assert restarted.state == world.state
    restarted.advance(55)
    state = restarted.tick(verdict(PASS, restarted.now))
    assert state.canary is not None
    assert state.canary.step == 1


def test_an_autoscaler_scale_event_during_a_step_keeps_the_weight() -> None:
    world = serving_old()
    old, new = rev(OLD, world), rev(NEW, world)
    world.tick()
    world.settle()
    world.tick()
    world.spec = respec(world.spec, replicas=20)
    state = world.tick()
    assert world.pods() == {old: 18, new: 2}
    assert state.canary is not None
    assert state.canary.step == 0
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert state.canary.weight == 10


def test_a_new_revision_during_a_canary_replaces_the_canary_not_the_stable() -> None:
    world = serving_old()
    old, new = rev(OLD, world), rev(NEW, world)
    world.tick()
    world.settle()
    world.spec = respec(world.spec, serving={"grpc": False})  # same artifact, new revision
    newer = rev(NEW, world)
    assert newer != new
    state = world.tick()
    assert state.canary is not None
    assert state.canary.revision == newer
    assert state.canary.attempt == 1
    assert "CanaryReplaced" in world.events()
    assert state.stable is not None
    assert state.stable.revision == old
    assert world.pods() == {old: 9, newer: 1}
    replaced = naming.revision_deployment_name(NAME, new)
    assert world.deployments[replaced].retired_at is not None


def test_the_spec_going_back_to_the_stable_revision_ends_the_release() -> None:
    world = serving_old()
    old = rev(OLD, world)
    world.tick()
    world.stored = OLD
    world.spec = respec(world.spec, optimization={"precision": "auto"})
    state = world.tick()
    assert state.canary is None
    assert "CanarySuperseded" in world.events()
    assert world.pods() == {old: 10}


def test_rolling_replaces_the_stable_once_the_new_pods_are_ready() -> None:
    world = serving_old()
    world.spec = respec(world.spec, rollout={"strategy": "rolling", "steps": None})
    old, new = rev(OLD, world), rev(NEW, world)
    state = world.tick()
    assert (state.phase, state.reason) == (Phase.PROGRESSING, "RollingOut")
    assert world.pods() == {old: 10, new: 10}
    world.settle()
    state = world.tick()
    assert state.stable is not None
    assert state.stable.revision == new
    assert state.canary is None
    assert world.pods() == {new: 10}


def test_the_deployment_of_an_older_operator_is_adopted_without_touching_its_pods() -> None:
    world = World(spec=spec(replicas=2, rollout=rollout()), stored=OLD)
    legacy = RolloutObservation(
        exists=True, name=NAME, legacy=True, artifact=OLD, request_key=world.target.request_key,
        desired=2, replicas=2, updated=2, ready=2, available=2, complete=True,
        template_hash="5f9c",
    )  # fmt: skip
    world.deployments[NAME] = legacy
    state = world.tick()
    old = rev(OLD, world)
    assert state.phase is Phase.READY
    assert state.stable is not None
    assert state.stable.revision == old
    assert state.canary is None, "the same artifact: adopted, not released"
    plan = world.plan()
    assert plan.stable.legacy_name == NAME
    assert plan.stable.render is False
    assert plan.stable.template_hash == "5f9c"
    # A new version is released against it, and it is retired after the promotion.
    world.stored = NEW
    world.spec = respec(world.spec, optimization={"precision": "fp16"})
    new = rev(NEW, world)
    state = world.tick()
    assert state.canary is not None
    assert state.canary.revision == new
    assert world.pods() == {NAME: 1, new: 1}
    world.annotations[naming.ANNOTATION_PROMOTE_FULL] = new
    world.settle()
    world.tick()
    world.settle()
    state = world.tick()
    assert state.stable is not None
    assert state.stable.revision == new
    assert world.deployments[NAME].desired == 0
    world.advance(31)
    world.tick()
    assert NAME not in world.deployments


def test_adoption_waits_for_the_build_then_takes_the_specs_revision() -> None:
    """After an upgrade the spec's artifact is built again (a new request key) before its
    digest is known; the adopted Deployment must not be released against meanwhile."""
    world = World(spec=spec(replicas=2, rollout=rollout()))
    world.deployments[NAME] = RolloutObservation(
        exists=True, name=NAME, legacy=True, artifact=OLD, request_key="previous-operator",
        desired=2, replicas=2, updated=2, ready=2, available=2, complete=True,
    )  # fmt: skip
    state = world.tick()
    assert state.phase is Phase.BUILDING
    assert world.pods() == {NAME: 2}
    world.stored = OLD  # the build finds the same artifact
    state = world.tick()
    assert state.canary is None, "the same artifact: adopted, not released"
    assert state.stable is not None
    assert state.stable.revision == rev(OLD, world)
    assert world.pods() == {NAME: 2}
    assert world.events() == ["Ready"]


def test_a_promotion_is_not_reported_as_a_superseded_release() -> None:
    world = serving_old()
    world.tick()
    world.annotations[naming.ANNOTATION_PROMOTE_FULL] = rev(NEW, world)
    world.settle()
    world.tick()
    world.settle()
    world.tick()
    assert "Promoted" in world.events()
    assert "CanarySuperseded" not in world.events()


def test_an_adopted_deployment_of_another_artifact_is_released_against() -> None:
    world = World(spec=spec(rollout=rollout()), stored=NEW)
    world.deployments[NAME] = RolloutObservation(
        exists=True, name=NAME, legacy=True, artifact=OLD, request_key="old-request",
        desired=1, replicas=1, updated=1, ready=1, available=1, complete=True,
    )  # fmt: skip
    state = world.tick()
    assert state.stable is not None
    assert state.stable.revision == "legacy"
    assert state.canary is not None
    assert state.canary.revision == rev(NEW, world)


def test_a_canary_while_its_artifact_builds_holds_as_it_is() -> None:
    world = serving_old()
    old, new = rev(OLD, world), rev(NEW, world)
    world.tick()
    world.settle()
    held_pods = world.pods()
    world.stored = None
    world.spec = respec(world.spec, serving={"grpc": False})
    world.stored = None
    # The new spec's artifact is unknown (a new build): the world has no build for it yet.
    world.spec = respec(world.spec, model={"uri": "s3://b/other.onnx"})
    state = world.tick()
    assert state.phase is Phase.BUILDING
    assert world.pods() == held_pods == {old: 9, new: 1}
    assert all(not r.render for r in (world.plan().stable, world.plan().canary) if r)


def test_weight_reported_is_the_one_achieved_on_few_pods() -> None:
    world = serving_old()
    world.spec = respec(world.spec, replicas=1)
    world.tick()
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert (state.canary.desired_weight, state.canary.weight) == (10, 50)


def test_status_round_trips_the_canary_through_the_api_types() -> None:
    world = serving_old()
    world.tick()
    world.settle()
    world.advance(10)
    world.tick(verdict(FAIL, world.now, "success rate 90.00% < 99.00% on 100 requests in 10 s"))
    from modelship.api.v1alpha1 import ModelDeploymentStatus

    parsed = ModelDeploymentStatus.model_validate(world.status)
    assert parsed.canary is not None
    assert parsed.canary.last_analysis is not None
    assert parsed.canary.last_analysis.verdict is FAIL
    assert world.state.canary == parsed.canary, "the operator reads back what it wrote"
