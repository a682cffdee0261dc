"""Status: conditions a person can act on, stable timestamps, and no write when nothing changed."""

from __future__ import annotations

from datetime import UTC, datetime

from modelship.api.v1alpha1 import (
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    RevisionStatus,
)
from modelship.domain import status
from modelship.domain.lifecycle import State
from modelship.domain.naming import Owner
from modelship.domain.observation import (
    Artifact,
    Observation,
    ReleaseObservation,
    RolloutObservation,
)
from modelship.domain.plan import build_target
from modelship.domain.settings import Settings

OWNER = Owner("sentiment", "ml", "uid")
TARGET = build_target(
    ModelDeploymentSpec.model_validate({"model": {"uri": "s3://b/m"}}), Settings().artifact_store()
)
ART = Artifact("sha256:" + "4" * 64, "file:///artifacts/x", "fp16")


def test_ready_status_validates_against_the_api_and_round_trips_the_state() -> None:
    rollout = RolloutObservation(
        exists=True,
        artifact=ART,
        desired=2,
        replicas=2,
        updated=2,
        ready=2,
        available=2,
        complete=True,
    )
    stable = RevisionStatus(revision="0123456789", digest=ART.digest, replicas=2, ready_replicas=2)
    state = State(Phase.READY, "Ready", "2/2 pods serve", ART, stable)
    release = ReleaseObservation(datetime(2026, 12, 1, tzinfo=UTC), "img", (rollout,))
    out = status.compute(state, Observation(3, TARGET, release=release), None, OWNER, True, "T1")
    ModelDeploymentStatus.model_validate(out)
    assert out["observedGeneration"] == 3
    assert out["selector"] == "app.kubernetes.io/component=server,modelship.io/deployment=sentiment"
    assert out["endpoints"] == {
        "rest": "http://sentiment.ml.svc:8080",
        "grpc": "sentiment.ml.svc:8081",
    }
    by_type = {c["type"]: c for c in out["conditions"]}
    assert [c["type"] for c in out["conditions"]] == list(status.CONDITION_TYPES)
    assert by_type["Ready"]["status"] == "True"
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Available"]["status"] == "True"
    assert out["stable"] == {
        "revision": "0123456789", "digest": ART.digest, "replicas": 2, "readyReplicas": 2
    }  # fmt: skip
    assert status.state_from_status(out) == state


def test_timestamps_move_only_on_flips_and_unchanged_status_is_not_rewritten() -> None:
    state = State(Phase.BUILDING, "Building", "building in Job build-x")
    obs = Observation(1, TARGET)
    first = status.compute(state, obs, None, OWNER, False, "T1")
    second = status.compute(state, obs, first, OWNER, False, "T2")
    assert not status.changed(first | {"kopf": {"x": 1}}, second)
    degraded = State(Phase.DEGRADED, "BuildFailed", "build Job build-x failed; builder said: boom")
    third = status.compute(degraded, obs, second, OWNER, False, "T3")
    assert status.changed(second, third)
    stamps = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert stamps["Degraded"] == "T3"
    assert stamps["ArtifactReady"] == "T1"
    cond = next(c for c in third["conditions"] if c["type"] == "Degraded")
    assert cond["reason"] == "BuildFailed"
    assert "builder said: boom" in cond["message"]


def test_new_generation_is_reported_only_when_handled() -> None:
    state = State(Phase.BUILDING, "Building", "m")
    out = status.compute(state, Observation(7, TARGET), None, OWNER, False, "T")
    assert out["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in out["conditions"])
