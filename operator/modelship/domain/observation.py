"""What the operator sees of the world, parsed from plain object dicts into small facts.

The Kubernetes layer hands over objects as JSON-shaped dicts; everything here is pure so that the
state machine can be driven tick by tick in tests without a cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from modelship.api.timestamps import seconds_between
from modelship.api.v1alpha1 import (
    GROUP,
    KIND,
    AnalysisResult,
    CanaryStatus,
    MismatchExample,
    RevisionStatus,
)
from modelship.domain import naming, pod_faults
from modelship.domain.plan import BuildTarget

MAX_MESSAGE = 1024
_SHA256 = re.compile(r"[a-f0-9]{64}")
"""Builder messages are cut here: conditions and Events are for people, logs for details."""


@dataclass(frozen=True)
class Artifact:
    """A published artifact, as the builder reported it."""

    digest: str
    uri: str
    variant: str | None = None
    size_bytes: int | None = None
    model_sha256: str | None = None
    """sha256 of the model file as the builder published it: serving pods check it."""

    def to_json(self) -> str:
        return json.dumps(self.to_status(), sort_keys=True, separators=(",", ":"))

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "uri": self.uri}
        if self.variant:
            out["variant"] = self.variant
        if self.size_bytes is not None:
            out["sizeBytes"] = self.size_bytes
        if self.model_sha256:
            out["modelSha256"] = self.model_sha256
        return out

    @classmethod
    def from_json(cls, text: str) -> Artifact | None:
        """Parse a builder result or an index entry; None when it is not one."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return cls.from_dict(data) if isinstance(data, dict) else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact | None:
        digest, uri = data.get("digest"), data.get("uri")
        if not isinstance(digest, str) or not isinstance(uri, str):
            return None
        variant = data.get("variant")
        size = data.get("sizeBytes", data.get("size_bytes"))
        model_sha256 = data.get("modelSha256")
        return cls(
            digest=digest if digest.startswith("sha256:") else f"sha256:{digest}",
            uri=uri,
            variant=variant if isinstance(variant, str) else None,
            size_bytes=size if isinstance(size, int) else None,
            model_sha256=model_sha256
            if isinstance(model_sha256, str) and _SHA256.fullmatch(model_sha256)
            else None,
        )


class BuildState(StrEnum):
    ABSENT = "Absent"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class BuildObservation:
    """The build Job of the target, if any."""

    state: BuildState = BuildState.ABSENT
    job_name: str = ""
    result: Artifact | None = None
    reason: str = ""
    message: str = ""
    owned: bool = True
    """Whether this ModelDeployment is among the Job's owners (another one may have created it)."""
    duration_seconds: float | None = None


@dataclass(frozen=True)
class RolloutObservation:
    """One serving Deployment: a revision's, or (``legacy``) the one an operator from before
    revisions created, named like the ModelDeployment."""

    exists: bool = False
    name: str = ""
    revision: str | None = None
    """The revision label; None on the legacy Deployment."""
    legacy: bool = False
    retired_at: str | None = None
    """When a release scaled it to zero (it is deleted after spec.rollout.scaleDownDelay)."""
    template_hash: str | None = None
    """pod-template-hash of the legacy Deployment's ready pods (how its Service selects them)."""
    applied_hash: str | None = None
    artifact: Artifact | None = None
    request_key: str | None = None
    desired: int = 0
    replicas: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    complete: bool = False
    deadline_exceeded: bool = False
    message: str = ""


@dataclass(frozen=True)
class Problem:
    """Something wrong with a serving pod (or the rollout), said so a person can act on it."""

    reason: str
    message: str
    pod: str | None = None


class Scope(StrEnum):
    """What a fault stops the operator from doing (everything else goes on)."""

    BUILD = "build"
    """Creating or adopting the build Job."""
    INDEX = "index"
    """Recording the artifact in the index ConfigMap."""
    SERVING = "serving"
    """Writing any serving child (Deployments, Services, HPA, PDB): none is written while one
    cannot be, so a release is never half applied."""


@dataclass(frozen=True)
class Fault:
    """Something the operator cannot do until a person acts: a name taken by an object it does
    not own, a request the API server refused (403, 422, ...), an impossible artifact location,
    a full index. It becomes the Degraded condition and a Warning Event."""

    scope: Scope
    reason: str
    message: str


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid of the object's controller (the ownerReference with ``controller: true``)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def owned_by_model_deployment(obj: dict[str, Any]) -> bool:
    """Whether a build Job belongs to ModelDeployments: our label and at least one of them
    among its owners (a Job is shared, so none of them is its controller)."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(naming.LABEL_MANAGED_BY) != naming.MANAGER:
        return False
    return any(
        ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
        for ref in meta.get("ownerReferences") or []
    )


def _holder(obj: dict[str, Any]) -> str:
    """Who an object belongs to, as far as its metadata tells."""
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is not None:
        return f"its controller is {controller.get('kind')}/{controller.get('name')}"
    if refs:
        owners = ", ".join(f"{r.get('kind')}/{r.get('name')}" for r in refs)
        return f"owned by {owners}"
    managers = sorted({m.get("manager", "") for m in meta.get("managedFields") or []} - {""})
    return "no owner" + (f", written by {', '.join(managers)}" if managers else "")


def name_conflict(scope: Scope, obj: dict[str, Any], fix: str) -> Fault:
    """The fault of a name we need that an object we do not own already has."""
    meta = obj.get("metadata") or {}
    where = f"{obj.get('kind', 'object')} {meta.get('namespace', '')}/{meta.get('name', '')}"
    return Fault(
        scope,
        "NameConflict",
        _shorten(
            f"{where} already exists and is not owned by this ModelDeployment ({_holder(obj)}); "
            f"the operator never takes over or deletes objects it does not own: {fix}"
        ),
    )


@dataclass(frozen=True)
class ReleaseObservation:
    """What a release decides from: the revisions there are and what the status remembers."""

    now: datetime
    image: str
    """The runtime image new revisions run (part of the revision hash)."""
    revisions: tuple[RolloutObservation, ...] = ()
    stable: RevisionStatus | None = None
    canary: CanaryStatus | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    """The manual-control annotations present (promote, promote-full, abort, retry)."""
    analysis: AnalysisResult | None = None
    """A verdict reached this tick (the reconciler scrapes only when one is due)."""
    route_weight: int | None = None
    """router: gatewayAPI: the canary's weight the live routes carry (the lowest of them)."""
    mismatches: tuple[MismatchExample, ...] | None = None
    """The stable pods' newest mismatching examples for this canary, read with a verdict
    (None: not read this tick)."""


@dataclass(frozen=True)
class Observation:
    generation: int
    target: BuildTarget
    stored: Artifact | None = None
    """The target's artifact according to the index (or the Deployment that already serves it)."""
    build: BuildObservation = field(default_factory=BuildObservation)
    release: ReleaseObservation = field(
        default_factory=lambda: ReleaseObservation(datetime.fromtimestamp(0, UTC), "")
    )
    problems: tuple[Problem, ...] = ()
    faults: tuple[Fault, ...] = ()
    """What the operator cannot do (see :class:`Fault`): found while observing or acting, or
    still backing off from an earlier attempt at this generation."""

    def blocked(self, scope: Scope) -> bool:
        return any(f.scope is scope for f in self.faults)

    @property
    def rollout(self) -> RolloutObservation:
        """Every serving Deployment added up (the pods clients may reach)."""
        live = [r for r in self.release.revisions if r.exists]
        if not live:
            return RolloutObservation()
        return RolloutObservation(
            exists=True,
            desired=sum(r.desired for r in live),
            replicas=sum(r.replicas for r in live),
            updated=sum(r.updated for r in live),
            ready=sum(r.ready for r in live),
            available=sum(r.available for r in live),
            complete=all(r.complete for r in live),
            deadline_exceeded=any(r.deadline_exceeded for r in live),
            message="; ".join(r.message for r in live if r.message),
        )

    def serving(self, request_key: str) -> RolloutObservation | None:
        """A Deployment already serving the artifact of this build request, if any."""
        return next(
            (
                r
                for r in self.release.revisions
                if r.artifact is not None and r.request_key == request_key
            ),
            None,
        )


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def termination_messages(pods: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(pod phase, reason, message) of each terminated builder container, newest first."""
    found: list[tuple[str, str, str, str]] = []
    for pod in pods:
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            state = cs.get("state") or {}
            terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if terminated:
                found.append(
                    (
                        terminated.get("finishedAt") or "",
                        status.get("phase", ""),
                        terminated.get("reason") or "",
                        (terminated.get("message") or "").strip(),
                    )
                )
    found.sort(reverse=True)
    return [(phase, reason, message) for _, phase, reason, message in found]


def _builder_error(message: str) -> str:
    """The builder writes JSON; show its error text, else the raw message (logs on error)."""
    try:
        data = json.loads(message)
    except ValueError:
        return message
    if isinstance(data, dict):
        for key in ("error", "message", "reason"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return message


def parse_build(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    owner_uid: str,
    pinned: Artifact | None = None,
) -> BuildObservation:
    """A build Job (and its pods' termination messages) as a BuildObservation.

    ``pinned`` is where the artifact of a pinned source must be: it stands in for the result when
    the builder pod (and so its termination message) is already gone.
    """
    if job is None:
        return BuildObservation()
    name = job.get("metadata", {}).get("name", "")
    owned = any(
        ref.get("uid") == owner_uid for ref in job.get("metadata", {}).get("ownerReferences") or []
    )
    conditions = _conditions(job)
    status = job.get("status") or {}
    messages = termination_messages(pods)
    if conditions.get("Complete", {}).get("status") == "True":
        duration = seconds_between(status.get("startTime"), status.get("completionTime"))
        return _completed(name, messages, pinned, owned, duration)
    failed = conditions.get("Failed", {})
    if failed.get("status") == "True":
        duration = seconds_between(status.get("startTime"), failed.get("lastTransitionTime"))
        return _failed(name, failed, messages, owned, duration)
    stuck = _stuck_builder(pods)
    if stuck is not None:
        return BuildObservation(
            BuildState.RUNNING, name, reason=stuck[0], message=stuck[1], owned=owned
        )
    return BuildObservation(BuildState.RUNNING, name, owned=owned)


def _completed(
    name: str,
    messages: list[tuple[str, str, str]],
    pinned: Artifact | None,
    owned: bool,
    duration: float | None,
) -> BuildObservation:
    """A complete Job: its result is the succeeded pod's termination message."""
    for phase, _reason, message in messages:
        result = Artifact.from_json(message) if phase == "Succeeded" else None
        if result is not None:
            return BuildObservation(
                BuildState.SUCCEEDED, name, result, owned=owned, duration_seconds=duration
            )
    if pinned is not None:
        return BuildObservation(
            BuildState.SUCCEEDED, name, pinned, owned=owned, duration_seconds=duration
        )
    return BuildObservation(
        BuildState.FAILED,
        name,
        reason="BuildResultMissing",
        message=f"build Job {name} completed but no builder pod holds its result "
        "(termination message); delete the Job to build again",
        owned=owned,
    )


def _failed(
    name: str,
    failed: dict[str, Any],
    messages: list[tuple[str, str, str]],
    owned: bool,
    duration: float | None,
) -> BuildObservation:
    """A failed Job: the Job's reason, and what the builder said about it."""
    detail = next((_builder_error(m) for _, _, m in messages if m), "")
    job_reason = failed.get("reason") or "BuildFailed"
    job_message = failed.get("message") or ""
    parts = [f"build Job {name} failed ({job_reason}: {job_message})".replace(" ()", "")]
    if detail:
        parts.append(f"builder said: {detail}")
    parts.append(f"fix the spec, or delete Job {name} to retry")
    return BuildObservation(
        BuildState.FAILED,
        name,
        reason=job_reason,
        message=_shorten("; ".join(parts)),
        owned=owned,
        duration_seconds=duration,
    )


STUCK_BUILD_REASONS = frozenset({"BuildUnschedulable", "BuildPodWaiting"})
"""The reasons a running build gets when its pod cannot start (see _stuck_builder)."""


def _stuck_builder(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) when a pending builder pod cannot start, as Kubernetes reports it."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        name = pod_faults.pod_name(pod)
        namespace = (pod.get("metadata") or {}).get("namespace", "")
        scheduler_says = pod_faults.unschedulable(pod)
        if scheduler_says is not None:
            missing_claim = "persistentvolumeclaim" in scheduler_says.lower()
            return "BuildUnschedulable", _shorten(
                f"builder pod {name} cannot be scheduled: {scheduler_says}; "
                + (
                    f"a pvc:// source names a claim that is not in namespace {namespace}: a "
                    "ModelDeployment reads only claims of its own namespace (and the store's "
                    "claim, MODELSHIP_STORE_PVC, must be there too)"
                    if missing_claim
                    else "lower the build resources (operator MODELSHIP_BUILD_CPU/MODELSHIP_"
                    "BUILD_MEMORY, chart values build.cpu/build.memory) or add node capacity"
                )
            )
        for cs in pod_faults.container_statuses(pod):
            fault = pod_faults.start_fault(cs)
            if fault is not None:
                return "BuildPodWaiting", _shorten(
                    f"builder pod {name} cannot start: {fault.reason}: {fault.message}; check "
                    + (
                        f"the image {fault.image or 'of the build'} (MODELSHIP_RUNTIME_IMAGE, "
                        "chart values runtimeImage; for framework formats the converter images, "
                        "MODELSHIP_*_CONVERTER_IMAGE, chart values converterImages)"
                        if fault.image_pull
                        else f"the Secrets and volumes the spec names: they must be in namespace "
                        f"{namespace}, a ModelDeployment can use no other namespace's"
                    )
                )
    return None


def parse_rollout(deployment: dict[str, Any] | None) -> RolloutObservation:
    if deployment is None:
        return RolloutObservation()
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    replicas = int(status.get("replicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    ready = int(status.get("readyReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    observed = int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
    progressing = _conditions(deployment).get("Progressing", {})
    deadline = (
        progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
    )
    artifact_json = annotations.get(naming.ANNOTATION_ARTIFACT)
    revision = labels.get(naming.LABEL_REVISION)
    return RolloutObservation(
        exists=True,
        name=meta.get("name", ""),
        revision=revision,
        legacy=revision is None,
        retired_at=annotations.get(naming.ANNOTATION_RETIRED_AT),
        applied_hash=annotations.get(naming.ANNOTATION_APPLIED_HASH),
        artifact=Artifact.from_json(artifact_json) if artifact_json else None,
        request_key=annotations.get(naming.ANNOTATION_REQUEST_KEY),
        desired=desired,
        replicas=replicas,
        updated=updated,
        ready=ready,
        available=available,
        complete=observed and updated == desired and replicas == desired and available == desired,
        deadline_exceeded=deadline,
        message=_shorten(progressing.get("message", "")) if deadline else "",
    )


def legacy_template_hash(pods: list[dict[str, Any]]) -> str | None:
    """The pod-template-hash most ready pods of the legacy Deployment carry."""
    counts: dict[str, int] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if naming.LABEL_REVISION in labels or naming.LABEL_POD_TEMPLATE_HASH not in labels:
            continue
        ready = pod_faults.is_ready(pod)
        if ready:
            key = labels[naming.LABEL_POD_TEMPLATE_HASH]
            counts[key] = counts.get(key, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None
