"""Pod and rollout faults, and the Job result parsing they share a style with."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from modelship.domain import health
from modelship.domain.observation import BuildState, parse_build, parse_rollout

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def test_each_fault_names_the_pod_and_the_fix() -> None:
    pods = [
        pod(
            "a",
            containerStatuses=[
                {
                    "name": "server",
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
                }
            ],
        ),
        pod(
            "b",
            containerStatuses=[
                {
                    "name": "server",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        ),
        pod(
            "c",
            containerStatuses=[
                {
                    "name": "server",
                    "image": "reg/x:1",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ],
        ),
        pod(
            "d",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes: Insufficient cpu",
                }
            ],
        ),
        pod(
            "e",
            containerStatuses=[
                {
                    "name": "server",
                    "ready": False,
                    "state": {"running": {"startedAt": "2025-01-01T11:50:00Z"}},
                }
            ],
        ),
        pod("f", phase="Pending"),
    ]
    found = health.pod_problems(pods, NOW, grace=60)
    assert [(p.pod, p.reason) for p in found] == [
        ("a", "CrashLoopBackOff"),
        ("b", "OOMKilled"),
        ("c", "ImagePullError"),
        ("d", "Unschedulable"),
        ("e", "NotReady"),
    ]
    assert "kubectl logs a -c server --previous" in found[0].message
    assert "limits.memory" in found[1].message
    assert "Insufficient cpu" in found[3].message


def test_progress_deadline_is_a_rollout_problem() -> None:
    dep = {
        "metadata": {"generation": 2, "annotations": {}},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "x" has timed out progressing.',
                }
            ],
        },
    }
    rollout = parse_rollout(dep)
    assert rollout.deadline_exceeded
    assert health.rollout_problems(rollout, "x")[0].reason == "ProgressDeadlineExceeded"
    assert health.needs_pod_check(rollout)


def job(condition: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": "build-1", "ownerReferences": [{"uid": "u1"}]},
        "status": {
            "conditions": [
                {"type": condition, "status": "True", "reason": reason, "message": message}
            ]
        },
    }


def terminated(phase: str, message: str) -> dict[str, Any]:
    return pod(
        "build-1-x",
        phase=phase,
        containerStatuses=[{"name": "builder", "state": {"terminated": {"message": message}}}],
    )


def test_build_result_comes_from_the_termination_message() -> None:
    result = json.dumps(
        {"digest": "sha256:" + "5" * 64, "uri": "file:///artifacts/5", "variant": "fp32"}
    )
    seen = parse_build(job("Complete"), [terminated("Succeeded", result)], "u1")
    assert seen.state is BuildState.SUCCEEDED
    assert seen.result is not None
    assert seen.result.variant == "fp32"
    assert seen.owned


def test_build_failure_carries_the_job_reason_and_the_builder_message() -> None:
    seen = parse_build(
        job("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
        [terminated("Failed", json.dumps({"error": "sha256 mismatch: got 12ab, spec says 34cd"}))],
        "other",
    )
    assert seen.state is BuildState.FAILED
    assert seen.reason == "BackoffLimitExceeded"
    assert "builder said: sha256 mismatch" in seen.message
    assert "delete Job build-1 to retry" in seen.message
    assert not seen.owned


def test_no_job_and_running_job() -> None:
    assert parse_build(None, [], "u").state is BuildState.ABSENT
    running = {"metadata": {"name": "build-1"}, "status": {"active": 1}}
    assert parse_build(running, [], "u").state is BuildState.RUNNING


def pending(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Pending", **status}}


def test_a_builder_pod_that_cannot_start_says_why() -> None:
    running = {"metadata": {"name": "build-1"}, "status": {"active": 1}}
    unschedulable = pending(
        "build-1-a",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
            }
        ],
    )
    seen = parse_build(running, [unschedulable], "u")
    assert seen.state is BuildState.RUNNING
    assert seen.reason == "BuildUnschedulable"
    assert "build-1-a cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu" in (
        seen.message
    )
    assert "build.cpu" in seen.message
    pull = pending(
        "build-1-b",
        containerStatuses=[
            {
                "name": "builder",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
            }
        ],
    )
    seen = parse_build(running, [pull], "u")
    assert seen.reason == "BuildPodWaiting"
    assert "ImagePullBackOff: not found" in seen.message
    # Merely starting (ContainerCreating) is not a problem.
    creating = pending(
        "build-1-c",
        containerStatuses=[
            {"name": "builder", "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    )
    assert parse_build(running, [creating], "u").reason == ""
