"""One reconcile of one ModelDeployment: observe, step the state machine, act, write the status.

It is the seam between the pure domain and :mod:`modelship.kube`; it knows nothing of kopf.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelship.api.timestamps import format_time, now
from modelship.api.v1alpha1 import ModelDeploymentSpec, Phase
from modelship.domain import desired, health, naming
from modelship.domain.lifecycle import (
    Action,
    AdoptBuild,
    Emit,
    EnsureServing,
    RecordArtifact,
    StartBuild,
    step,
)
from modelship.domain.observation import (
    Artifact,
    BuildObservation,
    Observation,
    parse_build,
    parse_rollout,
)
from modelship.domain.plan import BuildTarget, build_target
from modelship.domain.settings import Settings
from modelship.domain.status import (
    CONDITION_TYPES,
    changed,
    compute,
    merge_conditions,
    state_from_status,
)
from modelship.kube import Kube
from modelship.metrics import OperatorMetrics

log = logging.getLogger(__name__)

SERVING_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")


@dataclass
class Outcome:
    phase: Phase
    requeue_after: float
    writes: int = 0


@dataclass
class _Memory:
    """What this process last wrote, so unchanged state costs no API call (see docs)."""

    status: dict[str, Any] | None = None
    hashes: dict[str, str | None] = field(default_factory=dict)


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.store = settings.artifact_store()
        self._memory: dict[str, _Memory] = {}

    # -- memory of our own writes, invalidated by watch events on the children ------------

    def forget(self, uid: str, kind: str | None = None) -> None:
        """A child changed or vanished: next time, read it instead of trusting the memory."""
        memory = self._memory.get(uid)
        if memory is None:
            return
        if kind is None:
            self._memory.pop(uid, None)
        else:
            memory.hashes.pop(kind, None)

    def known_hash(self, uid: str, kind: str) -> str | None:
        memory = self._memory.get(uid)
        return memory.hashes.get(kind) if memory else None

    # -- the reconcile ----------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> Outcome:
        meta = body["metadata"]
        owner = naming.Owner(meta["name"], meta["namespace"], meta["uid"])
        memory = self._memory.setdefault(owner.uid, _Memory())
        generation = int(meta.get("generation", 1))
        previous = body.get("status") or {}
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            return self._invalid(owner, generation, previous, memory, e)
        target = build_target(spec, self.store)
        obs = self._observe(owner, generation, spec, target)
        state, actions = step(state_from_status(previous), obs)
        writes = self._act(owner, spec, target, obs, actions, memory)
        status = compute(state, obs, previous, owner, spec.serving.grpc, format_time(now()))
        writes += self._write_status(owner, previous, status, memory)
        busy = state.busy or state.phase is Phase.DEGRADED
        return Outcome(
            state.phase,
            self.settings.poll_seconds if busy else self.settings.resync_seconds,
            writes,
        )

    def _invalid(
        self,
        owner: naming.Owner,
        generation: int,
        previous: dict[str, Any],
        memory: _Memory,
        error: ValidationError,
    ) -> Outcome:
        message = "the spec is invalid, fix it and apply again: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in error.errors()
        )
        conds = [
            {
                "type": kind,
                "status": "True" if kind == "Degraded" else "False",
                "reason": "InvalidSpec",
                "message": message,
            }
            for kind in CONDITION_TYPES
        ]
        status = {
            "observedGeneration": generation,
            "phase": Phase.FAILED.value,
            "conditions": merge_conditions(
                previous.get("conditions") or [], conds, generation, format_time(now())
            ),
        }
        self._write_status(owner, previous, status, memory)
        return Outcome(Phase.FAILED, self.settings.resync_seconds)

    def _observe(
        self, owner: naming.Owner, generation: int, spec: ModelDeploymentSpec, target: BuildTarget
    ) -> Observation:
        ns = owner.namespace
        rollout = parse_rollout(self.kube.get("Deployment", ns, naming.serving_name(owner.name)))
        stored: Artifact | None = None
        build = BuildObservation()
        serves_target = rollout.artifact is not None and rollout.request_key == target.request_key
        if not serves_target:
            index = self.kube.get("ConfigMap", ns, naming.INDEX_CONFIGMAP) or {}
            entry = (index.get("data") or {}).get(target.index_key)
            stored = Artifact.from_json(entry) if entry else None
            if stored is None:
                build = self._observe_build(owner, target)
        problems = health.rollout_problems(rollout, naming.serving_name(owner.name))
        if health.needs_pod_check(rollout):
            pods = self.kube.list("Pod", ns, naming.selector_labels(owner.name))
            problems += health.pod_problems(pods, now(), self.settings.ready_grace_seconds)
        return Observation(generation, target, stored, build, rollout, tuple(problems))

    def _observe_build(self, owner: naming.Owner, target: BuildTarget) -> BuildObservation:
        job = self.kube.get("Job", owner.namespace, target.job_name)
        if job is None:
            return BuildObservation()
        # Finished: the result is in a pod's termination message. Running: a pod that cannot
        # start (unschedulable, image pull) says why, and the status must say it too.
        pods = self.kube.list(
            "Pod", owner.namespace, {naming.LABEL_BUILD: naming.build_key(target.key)}
        )
        pinned = None
        if target.pinned_digest:
            pinned = Artifact(
                target.pinned_digest,
                f"{self.store.uri.rstrip('/')}/{naming.hex_of(target.pinned_digest)}",
            )
        return parse_build(job, pods, owner.uid, pinned)

    # -- acting -----------------------------------------------------------------------------

    def _act(
        self,
        owner: naming.Owner,
        spec: ModelDeploymentSpec,
        target: BuildTarget,
        obs: Observation,
        actions: list[Action],
        memory: _Memory,
    ) -> int:
        writes = 0
        for action in actions:
            if isinstance(action, StartBuild):
                self.kube.create(desired.build_job(spec, target, owner, self.settings))
                writes += 1
            elif isinstance(action, AdoptBuild):
                self.kube.add_owner(
                    "Job", owner.namespace, target.job_name, owner.reference(controller=False)
                )
                writes += 1
            elif isinstance(action, RecordArtifact):
                writes += self._record(owner, target, action)
            elif isinstance(action, EnsureServing):
                request_key = action.request_key or target.request_key
                writes += self._ensure_serving(
                    owner, spec, request_key, obs, action.artifact, memory
                )
            elif isinstance(action, Emit):
                self.kube.post_event(owner, action.type, action.reason, action.message, "modelship")
                writes += 1
        return writes

    def _record(self, owner: naming.Owner, target: BuildTarget, action: RecordArtifact) -> int:
        entry = action.artifact.to_json()
        data = {
            naming.index_key_for_digest(action.artifact.digest): entry,
            target.index_key: entry,
        }
        self.kube.merge_data(owner.namespace, naming.INDEX_CONFIGMAP, data)
        self.metrics.observe_build("succeeded", action.duration_seconds)
        return 1

    def _ensure_serving(
        self,
        owner: naming.Owner,
        spec: ModelDeploymentSpec,
        request_key: str,
        obs: Observation,
        artifact: Artifact,
        memory: _Memory,
    ) -> int:
        """Apply each serving child whose desired content differs from what is there."""
        wanted = desired.serving_objects(spec, owner, artifact, request_key, self.settings)
        writes = 0
        ns, name = owner.namespace, naming.serving_name(owner.name)
        for kind in SERVING_KINDS:
            obj = wanted[kind]
            want = desired.applied_hash(obj)
            if kind in memory.hashes and memory.hashes[kind] == want:
                continue
            # The Deployment was read by _observe; the others only when memory cannot vouch.
            if kind == "Deployment":
                present, have = obs.rollout.exists, obs.rollout.applied_hash
            else:
                current = self.kube.get(kind, ns, name)
                present, have = current is not None, desired.applied_hash(current)
            if obj is None and present:
                self.kube.delete(kind, ns, name)
                writes += 1
            elif obj is not None and have != want:
                self.kube.apply(obj)
                writes += 1
            memory.hashes[kind] = want
        return writes

    def _write_status(
        self,
        owner: naming.Owner,
        previous: dict[str, Any],
        status: dict[str, Any],
        memory: _Memory,
    ) -> int:
        if not changed(previous, status) or (
            memory.status is not None and not changed(memory.status, status)
        ):
            return 0
        self.kube.patch_status(owner.namespace, owner.name, status)
        memory.status = status
        return 1
