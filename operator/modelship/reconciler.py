"""One reconcile of one ModelDeployment: observe, step the state machine, act, write the status.

It is the seam between the pure domain and :mod:`modelship.kube`; it knows nothing of kopf.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelship.api.timestamps import format_time, now, parse_time
from modelship.api.types import duration_seconds
from modelship.api.v1alpha1 import (
    AnalysisResult,
    AnalysisVerdict,
    CanaryStatus,
    ModelDeploymentSpec,
    Phase,
)
from modelship.domain import desired, health, naming, pod_faults
from modelship.domain.analysis import Accumulator, judge, parse_metrics
from modelship.domain.lifecycle import (
    Action,
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
    Observation,
    Problem,
    ReleaseObservation,
    RolloutObservation,
    legacy_template_hash,
    parse_build,
    parse_rollout,
)
from modelship.domain.plan import BuildTarget, build_target
from modelship.domain.release import RUNNING, ServingPlan, analysis_window
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
from modelship.scrape import MetricsReader, PodScraper, Target

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    phase: Phase
    requeue_after: float
    writes: int = 0


@dataclass
class _AnalysisWindow:
    """The analysis of one canary step in this process: pod baselines and what accumulated.
    Only in memory: after a restart the first scrape is a baseline (see docs/canary.md)."""

    key: tuple[str, int, int]
    """(canary revision, attempt, step)."""
    accumulator: Accumulator
    since: datetime
    """Start of the traffic the next verdict judges (moves on after a Pass or a Fail)."""
    last: datetime
    """The last scrape: the next verdict is due an interval later."""


@dataclass
class _Memory:
    """What this process last wrote, so unchanged state costs no API call (see docs)."""

    status: dict[str, Any] | None = None
    hashes: dict[str, str | None] = field(default_factory=dict)
    """Applied hash by ``Kind/name``."""
    analysis: _AnalysisWindow | None = None


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        metrics: OperatorMetrics,
        metrics_reader: MetricsReader | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.metrics_reader = metrics_reader or PodScraper()
        self.store = settings.artifact_store()
        self._memory: dict[str, _Memory] = {}

    # -- memory of our own writes, invalidated by watch events on the children ------------

    def forget(self, uid: str, kind: str | None = None, name: str = "") -> None:
        """A child changed or vanished: next time, read it instead of trusting the memory."""
        memory = self._memory.get(uid)
        if memory is None:
            return
        if kind is None:
            self._memory.pop(uid, None)
        else:
            memory.hashes.pop(f"{kind}/{name}", None)

    def known_hash(self, uid: str, kind: str, name: str) -> str | None:
        memory = self._memory.get(uid)
        return memory.hashes.get(f"{kind}/{name}") if memory else None

    # -- the reconcile ----------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> Outcome:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            # Being deleted (kubectl delete, Argo CD's cascade): the garbage collector removes
            # the children, and a foreground deletion waits for them; recreating one would hold
            # the deletion forever. Nothing is created, changed or written from now on.
            return Outcome(state_from_status(body.get("status") or {}).phase, 3600.0)
        owner = naming.Owner(meta["name"], meta["namespace"], meta["uid"])
        memory = self._memory.setdefault(owner.uid, _Memory())
        generation = int(meta.get("generation", 1))
        # Only this process writes the status while it leads, so what it last wrote is at least
        # as new as the body, which may predate our own last write (its watch event in flight):
        # a release must never step back to a state it already left.
        previous = memory.status or body.get("status") or {}
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            return self._invalid(owner, generation, previous, memory, e)
        target = build_target(spec, self.store)
        before = state_from_status(previous)
        annotations = meta.get("annotations") or {}
        obs = self._observe(owner, generation, spec, target, before, annotations, memory)
        state, actions = step(before, obs, spec)
        writes = self._act(owner, spec, target, obs, actions, memory)
        status = compute(state, obs, previous, owner, spec.serving.grpc, format_time(now()))
        writes += self._write_status(owner, previous, status, memory)
        return Outcome(state.phase, self._requeue_after(state, spec), writes)

    def _requeue_after(self, state: State, spec: ModelDeploymentSpec) -> float:
        canary = state.canary
        if canary is not None and canary.phase in RUNNING:
            # Verdicts are due every interval; come back in time for the next one.
            interval = duration_seconds(spec.rollout.analysis.interval)
            return max(1.0, min(self.settings.poll_seconds, interval / 2))
        busy = state.busy or state.phase is Phase.DEGRADED
        return self.settings.poll_seconds if busy else self.settings.resync_seconds

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
        self,
        owner: naming.Owner,
        generation: int,
        spec: ModelDeploymentSpec,
        target: BuildTarget,
        before: State,
        annotations: dict[str, str],
        memory: _Memory,
    ) -> Observation:
        ns, moment = owner.namespace, now()
        deployments = self.kube.list("Deployment", ns, {naming.LABEL_DEPLOYMENT: owner.name})
        revisions = [parse_rollout(d) for d in deployments]
        stored: Artifact | None = None
        build = BuildObservation()
        if not any(r.artifact is not None and r.request_key == target.request_key
                   for r in revisions):  # fmt: skip
            index = self.kube.get("ConfigMap", ns, naming.INDEX_CONFIGMAP) or {}
            entry = (index.get("data") or {}).get(target.index_key)
            stored = Artifact.from_json(entry) if entry else None
            if stored is None:
                build = self._observe_build(owner, target)
        problems: list[Problem] = []
        for r in revisions:
            problems += health.rollout_problems(r, r.name)
        pods: list[dict[str, Any]] | None = None
        canary = before.canary
        legacy = any(r.legacy for r in revisions)
        analysing = self._analysis_window(spec, canary, revisions, moment)
        if legacy or analysing or any(health.needs_pod_check(r) for r in revisions):
            pods = self.kube.list("Pod", ns, naming.selector_labels(owner.name))
            problems += health.pod_problems(pods, moment, self.settings.ready_grace_seconds)
        if legacy and pods is not None:
            template = legacy_template_hash(pods)
            revisions = [replace(r, template_hash=template) if r.legacy else r for r in revisions]
        verdict = None
        if analysing and canary is not None and before.stable is not None and pods is not None:
            cpu = time.process_time()
            verdict = self._analyse(spec, canary, before.stable.revision, pods, memory, moment)
            if verdict is not None:
                self.metrics.observe_analysis(verdict.verdict.value, time.process_time() - cpu)
        manual = {
            key: value
            for key, value in annotations.items()
            if key in naming.MANUAL_ANNOTATIONS.values()
        }
        release = ReleaseObservation(
            now=moment,
            image=self.settings.runtime_image,
            revisions=tuple(revisions),
            stable=before.stable,
            canary=canary,
            annotations=manual,
            analysis=verdict,
        )
        return Observation(generation, target, stored, build, release, tuple(problems))

    @staticmethod
    def _analysis_window(
        spec: ModelDeploymentSpec,
        canary: CanaryStatus | None,
        revisions: list[RolloutObservation],
        moment: datetime,
    ) -> bool:
        if canary is None:
            return False
        seen = next((r for r in revisions if r.revision == canary.revision), None)
        if seen is None:
            return False
        return analysis_window(spec, canary, seen.ready, seen.desired, moment)

    def _analyse(
        self,
        spec: ModelDeploymentSpec,
        canary: CanaryStatus,
        stable: str,
        pods: list[dict[str, Any]],
        memory: _Memory,
        moment: datetime,
    ) -> AnalysisResult | None:
        """Scrape both revisions' ready pods; a verdict when an interval of traffic is in."""
        key = (canary.revision, canary.attempt, canary.step)
        window = memory.analysis
        interval = duration_seconds(spec.rollout.analysis.interval)
        targets = _targets(pods, canary.revision, stable)
        if window is not None and window.key == key and (
            (moment - window.last).total_seconds() < interval
        ):
            return None
        texts = self.metrics_reader.read(targets)
        if window is None or window.key != key:
            accumulator = window.accumulator if window is not None else Accumulator()
            accumulator.reset()
            restarted = window is None and _analysed_this_step(canary)
            window = _AnalysisWindow(key, accumulator, moment, moment)
            memory.analysis = window
            _observe_all(accumulator, targets, texts)
            if not restarted:
                return None
            return AnalysisResult(
                time=format_time(moment),
                verdict=AnalysisVerdict.INCONCLUSIVE,
                message=f"the operator restarted: this interval only takes a baseline of "
                f"{len(texts)} pods",
            )
        baseline_only = _observe_all(window.accumulator, targets, texts)
        accumulator = window.accumulator
        result = judge(
            accumulator.sample(canary.revision),
            accumulator.sample(stable),
            spec.rollout.analysis,
            format_time(moment),
            (moment - window.since).total_seconds(),
        )
        if baseline_only:
            result = result.model_copy(
                update={"message": f"{result.message} ({baseline_only} new pods: baseline only)"}
            )
        window.last = moment
        if result.verdict is not AnalysisVerdict.INCONCLUSIVE:
            accumulator.reset()
            window.since = moment
        return result

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
                writes += self._ensure_serving(owner, spec, obs, action.plan, memory)
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
        obs: Observation,
        plan: ServingPlan,
        memory: _Memory,
    ) -> int:
        """Apply each serving child whose desired content differs from what is there."""
        wanted = desired.serving_objects(spec, owner, plan, self.settings, format_time(now()))
        ns = owner.namespace
        seen = {r.name: r for r in obs.release.revisions if r.exists}
        writes = 0
        for obj in wanted.apply:
            kind, name = obj["kind"], obj["metadata"]["name"]
            key, want = f"{kind}/{name}", desired.applied_hash(obj)
            if memory.hashes.get(key) == want:
                continue
            if kind == "Deployment":  # every revision's Deployment was read by _observe
                have = seen[name].applied_hash if name in seen else None
            else:
                have = desired.applied_hash(self.kube.get(kind, ns, name))
            if have != want:
                self.kube.apply(obj)
                writes += 1
            memory.hashes[key] = want
        for scale in wanted.scale:
            current = seen.get(scale.name)
            if current is None:
                continue
            stamp = scale.annotations.get(naming.ANNOTATION_RETIRED_AT)
            if current.desired != scale.replicas or current.retired_at != stamp:
                self.kube.scale(ns, scale.name, scale.replicas, scale.annotations)
                # Not what its applied hash says any more: a later apply must write it again.
                memory.hashes.pop(f"Deployment/{scale.name}", None)
                writes += 1
        for kind, name in wanted.delete:
            key = f"{kind}/{name}"
            if kind == "Deployment":
                present = name in seen
            elif key in memory.hashes and memory.hashes[key] is None:
                present = False
            else:
                present = self.kube.get(kind, ns, name) is not None
            if present:
                self.kube.delete(kind, ns, name)
                writes += 1
            memory.hashes[key] = None
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


def _targets(pods: list[dict[str, Any]], canary: str, stable: str) -> list[Target]:
    """The ready pods of the two revisions (a pod without a revision label is the adopted
    legacy Deployment's, which is the stable revision)."""
    out = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or not status.get("podIP"):
            continue
        ready = pod_faults.is_ready(pod)
        revision = (meta.get("labels") or {}).get(naming.LABEL_REVISION, stable)
        if ready and revision in (canary, stable):
            out.append(Target(meta.get("uid", meta.get("name", "")), status["podIP"], revision))
    return out


def _observe_all(accumulator: Accumulator, targets: list[Target], texts: dict[str, str]) -> int:
    """Feed every answer to the accumulator; returns how many pods were only a baseline."""
    baseline = 0
    for target in targets:
        text = texts.get(target.pod)
        if text is None:
            continue
        try:
            snapshot = parse_metrics(text)
        except ValueError as e:
            log.warning("metrics of pod %s are unreadable: %s", target.pod, e)
            continue
        if not accumulator.observe(target.revision, target.pod, snapshot):
            baseline += 1
    accumulator.forget_missing({t.pod for t in targets})
    return baseline


def _analysed_this_step(canary: CanaryStatus) -> bool:
    last = canary.last_analysis
    if last is None:
        return False
    when, started = parse_time(last.time), parse_time(canary.step_started_at)
    return when is not None and started is not None and when >= started
