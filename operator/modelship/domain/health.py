"""Faults of serving pods, found in their status and said so that a person can fix them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelship.api.timestamps import parse_time
from modelship.domain import pod_faults
from modelship.domain.observation import Problem, RolloutObservation


def _age_seconds(timestamp: str | None, now: datetime) -> float:
    then = parse_time(timestamp)
    return 0.0 if then is None else (now - then).total_seconds()


def _container_problem(pod: str, cs: dict[str, Any], now: datetime, grace: float) -> Problem | None:
    name = cs.get("name", "?")
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    reason = waiting.get("reason", "")
    if last.get("reason") == "OOMKilled":
        return Problem(
            "OOMKilled",
            f"pod {pod}: container {name} was killed for using too much memory (OOMKilled, "
            f"{cs.get('restartCount', 0)} restarts); raise spec.serving.resources.limits.memory",
            pod,
        )
    if reason == "CrashLoopBackOff":
        exit_info = ""
        if last:
            exit_info = f", last exit code {last.get('exitCode')} ({last.get('reason', '')})"
        return Problem(
            "CrashLoopBackOff",
            f"pod {pod}: container {name} keeps crashing ({cs.get('restartCount', 0)} "
            f"restarts{exit_info}); see kubectl logs {pod} -c {name} --previous",
            pod,
        )
    fault = pod_faults.start_fault(cs)
    if fault is not None and fault.image_pull:
        return Problem(
            "ImagePullError",
            f"pod {pod}: cannot pull image {fault.image} ({fault.reason}: {fault.message}); "
            "check the operator's MODELSHIP_RUNTIME_IMAGE and the registry credentials",
            pod,
        )
    if fault is not None:
        return Problem(
            fault.reason, f"pod {pod}: container {name} cannot start: {fault.message}", pod
        )
    running = state.get("running")
    if (
        running
        and not cs.get("ready", False)
        and _age_seconds(running.get("startedAt"), now) > grace
    ):
        return Problem(
            "NotReady",
            f"pod {pod}: container {name} has run for more than {grace:.0f}s without passing "
            "its readiness probe (/v2/health/ready); see kubectl logs",
            pod,
        )
    return None


def pod_problems(pods: list[dict[str, Any]], now: datetime, grace: float) -> list[Problem]:
    """Faults of the given pods, one per pod at most, ordered by pod name."""
    found: list[Problem] = []
    for pod in sorted(pods, key=pod_faults.pod_name):
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        name = pod_faults.pod_name(pod)
        problem = next(
            (
                p
                for cs in pod_faults.container_statuses(pod)
                if (p := _container_problem(name, cs, now, grace)) is not None
            ),
            None,
        )
        scheduler_says = pod_faults.unschedulable(pod) if problem is None else None
        if scheduler_says is not None:
            problem = Problem(
                "Unschedulable",
                f"pod {name} cannot be scheduled: {scheduler_says}; lower "
                "spec.serving.resources.requests or add capacity",
                name,
            )
        if problem:
            found.append(problem)
    return found


def rollout_problems(rollout: RolloutObservation, name: str) -> list[Problem]:
    if rollout.deadline_exceeded:
        return [
            Problem(
                "ProgressDeadlineExceeded",
                f"Deployment {name} made no progress within spec.rollout.progressDeadline: "
                f"{rollout.message}",
            )
        ]
    return []


def needs_pod_check(rollout: RolloutObservation) -> bool:
    """Pods are listed only when the Deployment is short of ready pods: a healthy steady state
    costs no pod reads."""
    return rollout.exists and (rollout.ready < rollout.desired or rollout.replicas > rollout.ready)
