"""Faults of serving pods, found in their status and said so that a person can fix them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelship.domain.observation import Problem, RolloutObservation

_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def _age_seconds(timestamp: str | None, now: datetime) -> float:
    if not timestamp:
        return 0.0
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - then).total_seconds()


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
    if reason in _PULL_ERRORS:
        return Problem(
            "ImagePullError",
            f"pod {pod}: cannot pull image {cs.get('image', '')} ({reason}: "
            f"{waiting.get('message', '')}); check the operator's MODELSHIP_RUNTIME_IMAGE and "
            "the registry credentials",
            pod,
        )
    if reason in _CONFIG_ERRORS:
        return Problem(
            reason, f"pod {pod}: container {name} cannot start: {waiting.get('message', '')}", pod
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
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = meta.get("name", "?")
        problem = None
        for cs in (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        ):
            problem = _container_problem(name, cs, now, grace)
            if problem:
                break
        if problem is None:
            for cond in status.get("conditions") or []:
                if (
                    cond.get("type") == "PodScheduled"
                    and cond.get("status") == "False"
                    and cond.get("reason") == "Unschedulable"
                ):
                    problem = Problem(
                        "Unschedulable",
                        f"pod {name} cannot be scheduled: {cond.get('message', '')}; lower "
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
