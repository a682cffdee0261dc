"""The ModelDeployment status, computed once per reconcile from the state and the observation.

The ``Ready`` condition always carries the state's reason and message, so the previous state can
be read back from the status alone (the operator keeps no other memory across restarts).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from modelship.api.serving import GRPC_PORT, REST_PORT
from modelship.api.v1alpha1 import CanaryStatus, Phase, RevisionStatus
from modelship.domain import naming
from modelship.domain.lifecycle import State
from modelship.domain.observation import Artifact, Observation

CONDITION_TYPES = ("ArtifactReady", "Available", "Progressing", "Degraded", "Ready")


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def conditions(state: State, obs: Observation) -> list[dict[str, Any]]:
    """The five conditions, without timestamps (``merge_conditions`` adds them)."""
    rollout = obs.rollout
    if state.artifact is not None:
        variant = f" ({state.artifact.variant})" if state.artifact.variant else ""
        artifact = _condition(
            "ArtifactReady",
            True,
            "Published",
            f"artifact {state.artifact.digest}{variant} is in the store at {state.artifact.uri}",
        )
    else:
        artifact = _condition("ArtifactReady", False, state.reason or "Pending", state.message)
    if rollout.available > 0:
        available = _condition(
            "Available",
            True,
            "MinimumReplicasAvailable",
            f"{rollout.available}/{rollout.desired} pods available",
        )
    elif rollout.exists:
        available = _condition(
            "Available", False, "NoPodsAvailable", f"0/{rollout.desired} pods available yet"
        )
    else:
        available = _condition("Available", False, "NotDeployed", "no serving Deployment yet")
    busy = state.busy
    if busy:
        progressing = _condition("Progressing", True, state.reason, state.message)
    elif state.phase is Phase.READY:
        progressing = _condition("Progressing", False, "Complete", "nothing in progress")
    else:
        progressing = _condition("Progressing", False, state.reason, "stopped: " + state.message)
    degraded_now = state.phase is Phase.DEGRADED
    degraded = _condition(
        "Degraded",
        degraded_now,
        state.reason if degraded_now else "AsExpected",
        state.message if degraded_now else "no faults seen",
    )
    ready = _condition(
        "Ready", state.phase is Phase.READY, state.reason or "Pending", state.message
    )
    return [artifact, available, progressing, degraded, ready]


def merge_conditions(
    previous: list[dict[str, Any]], current: list[dict[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """Stamp conditions: lastTransitionTime moves only when the status of a condition flips."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in current:
        old = before.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        stamp = now if changed or old is None else old.get("lastTransitionTime", now)
        out.append(cond | {"observedGeneration": generation, "lastTransitionTime": stamp})
    return out


def faulted(
    previous: dict[str, Any] | None, generation: int, reason: str, message: str, now: str
) -> dict[str, Any]:
    """The status when the world could not even be read (a refused read): Degraded with the
    reason, the other conditions as they were (nothing is known to have changed)."""
    previous = previous or {}
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    current = []
    for kind in CONDITION_TYPES:
        if kind in ("Degraded", "Ready"):
            current.append(_condition(kind, kind == "Degraded", reason, message))
        elif kind in before:
            old = before[kind]
            current.append(
                _condition(kind, old.get("status") == "True", old.get("reason", ""),
                           old.get("message", ""))
            )  # fmt: skip
    return {
        "observedGeneration": generation,
        "phase": Phase.DEGRADED.value,
        "conditions": merge_conditions(previous.get("conditions") or [], current, generation, now),
    }


def state_from_status(status: dict[str, Any] | None) -> State:
    """The state the previous reconcile wrote (Pending for a new object)."""
    status = status or {}
    try:
        phase = Phase(status.get("phase") or Phase.PENDING)
    except ValueError:
        phase = Phase.PENDING
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    artifact_ok: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "ArtifactReady"), {}
    )
    artifact = None
    if artifact_ok.get("status") == "True" and status.get("artifact"):
        artifact = Artifact.from_dict(status["artifact"])
    return State(
        phase,
        ready.get("reason", ""),
        ready.get("message", ""),
        artifact,
        _parsed(RevisionStatus, status.get("stable")),
        _parsed(CanaryStatus, status.get("canary")),
    )


M = TypeVar("M", RevisionStatus, CanaryStatus)


def _parsed(model: type[M], value: Any) -> M | None:
    """A status part as we wrote it; None when absent or not ours (hand-edited, older)."""
    if not isinstance(value, dict):
        return None
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def compute(
    state: State,
    obs: Observation,
    previous: dict[str, Any] | None,
    owner: naming.Owner,
    grpc: bool,
    now: str,
) -> dict[str, Any]:
    """The whole status (without ``kopf``), ready for a merge patch."""
    previous = previous or {}
    rollout = obs.rollout
    served = state.artifact or _stable_artifact(state, obs)
    endpoints: dict[str, Any] = {"rest": naming.rest_endpoint(owner, REST_PORT)}
    if grpc:
        endpoints["grpc"] = naming.grpc_endpoint(owner, GRPC_PORT)
    return {
        "observedGeneration": obs.generation,
        "phase": state.phase.value,
        "conditions": merge_conditions(
            previous.get("conditions") or [], conditions(state, obs), obs.generation, now
        ),
        "artifact": served.to_status() if served else None,
        "stable": state.stable.to_wire() if state.stable else None,
        "canary": state.canary.to_wire() if state.canary else None,
        "replicas": rollout.replicas,
        "readyReplicas": rollout.ready,
        "selector": naming.selector_string(owner.name),
        "endpoints": endpoints,
    }


def _stable_artifact(state: State, obs: Observation) -> Artifact | None:
    """While the spec's artifact builds, the status names the one the stable revision serves."""
    if state.stable is None:
        return None
    return next(
        (r.artifact for r in obs.release.revisions if r.artifact and
         r.artifact.digest == state.stable.digest),
        None,
    )  # fmt: skip


def changed(previous: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Whether writing ``current`` would change anything (kopf's own field is not ours)."""
    previous = previous or {}
    return any(previous.get(k) != v for k, v in current.items())
