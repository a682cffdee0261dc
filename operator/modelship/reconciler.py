"""One reconcile of one ModelDeployment: observe, step the state machine, act, write the status.

It is the seam between the pure domain and :mod:`modelship.kube`; it knows nothing of kopf.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelship.api.serving import GRPC_PORT, REST_PORT
from modelship.api.timestamps import format_time, now, parse_time
from modelship.api.types import duration_seconds
from modelship.api.v1alpha1 import (
    MAX_MISMATCHES,
    AnalysisResult,
    AnalysisVerdict,
    CanaryStatus,
    MetricsSource,
    MismatchExample,
    ModelDeploymentSpec,
    Phase,
    Router,
)
from modelship.domain import artifact_index, desired, health, naming, pod_faults, promql, routes
from modelship.domain.analysis import (
    LIVE,
    REPLAY,
    Accumulator,
    Drift,
    judge,
    judge_answers,
    parse_metrics,
)
from modelship.domain.analysis import mismatches as analysis_mismatches
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
    BuildState,
    Fault,
    Observation,
    Problem,
    ReleaseObservation,
    RolloutObservation,
    Scope,
    controller_uid,
    legacy_template_hash,
    name_conflict,
    owned_by_model_deployment,
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
    faulted,
    merge_conditions,
    state_from_status,
)
from modelship.kube import Kube, KubeError
from modelship.metrics import OperatorMetrics
from modelship.prometheus import PrometheusClient, QueryRunner
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


RETRY_NOTE = "retried with backoff, and at once when the spec changes"


@dataclass
class _Backoff:
    """Faults of requests that failed for good at one generation: they are not sent again
    before ``due`` (doubling from POLL_SECONDS to RESYNC_SECONDS), unless the spec changes."""

    generation: int = 0
    attempts: int = 0
    due: float = 0.0
    faults: tuple[Fault, ...] = ()

    def waiting(self, generation: int, moment: float) -> tuple[Fault, ...]:
        if self.faults and generation == self.generation and moment < self.due:
            return self.faults
        return ()

    def settle(
        self, generation: int, faults: list[Fault], moment: float, settings: Settings
    ) -> None:
        """Record the outcome of an attempt; a successful one (or a new spec) starts over."""
        if not faults:
            if not self.waiting(generation, moment):
                self.attempts, self.faults = 0, ()
            return
        self.attempts = self.attempts + 1 if generation == self.generation else 1
        delay = settings.poll_seconds * 2 ** (self.attempts - 1)
        self.generation, self.faults = generation, tuple(faults)
        self.due = moment + min(delay, max(settings.resync_seconds, settings.poll_seconds))


@dataclass
class _Memory:
    """What this process last wrote, so unchanged state costs no API call (see docs)."""

    status: dict[str, Any] | None = None
    hashes: dict[str, str | None] = field(default_factory=dict)
    """Applied hash by ``Kind/name``."""
    analysis: _AnalysisWindow | None = None
    acting: _Backoff = field(default_factory=_Backoff)
    """Writes the API server refused for good (see :class:`Fault`)."""
    reading: _Backoff = field(default_factory=_Backoff)
    """Reads it refused for good: then nothing can be decided, so nothing is done."""
    status_error: str | None = None
    """The last refused status write, reported once as an Event."""
    finalizer: bool = False
    """router: gatewayAPI: the route finalizer is known to be on the ModelDeployment."""


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        metrics: OperatorMetrics,
        metrics_reader: MetricsReader | None = None,
        clock: Callable[[], float] = time.monotonic,
        prometheus: QueryRunner | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.metrics_reader = metrics_reader or PodScraper()
        self.mirror_reader: MetricsReader = PodScraper(REST_PORT, path="/v2/mirror")
        self.prometheus = prometheus or (
            PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
        )
        """analysis.source: prometheus; None where the operator was not given a Prometheus."""
        self.clock = clock
        """Monotonic seconds, for the backoff of refused requests."""
        self.store = settings.artifact_store()
        self.build_policy = settings.build_policy()
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
            # the deletion forever. Nothing is created or changed from now on, but the routes
            # of the gatewayAPI router are given back first.
            if ROUTE_FINALIZER in (meta.get("finalizers") or []):
                self._give_routes_back(body)
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
        # Each namespace builds into, and serves from, its own part of the store.
        store = self.store.for_namespace(owner.namespace)
        target = build_target(spec, store, self.build_policy)
        before = state_from_status(previous)
        annotations = meta.get("annotations") or {}
        if memory.reading.waiting(generation, self.clock()):
            return Outcome(before.phase, max(1.0, memory.reading.due - self.clock()))
        try:
            obs = self._observe(owner, generation, spec, target, before, annotations, memory)
        except KubeError as e:
            if not e.permanent:
                raise
            return self._unobservable(owner, generation, previous, before, memory, e)
        memory.reading.settle(generation, [], self.clock(), self.settings)
        state, writes = self._decide_and_act(owner, spec, target, before, obs, memory)
        status = compute(state, obs, previous, owner, spec.serving.grpc, format_time(now()))
        writes += self._write_status(owner, previous, status, memory)
        return Outcome(state.phase, self._requeue_after(state, spec), writes)

    def _decide_and_act(
        self,
        owner: naming.Owner,
        spec: ModelDeploymentSpec,
        target: BuildTarget,
        before: State,
        obs: Observation,
        memory: _Memory,
    ) -> tuple[State, int]:
        """Step, act, and when acting failed for good, step again knowing it: the status and
        the Events then say what failed, and nothing in its scope is claimed done."""
        waiting = memory.acting.waiting(obs.generation, self.clock())
        obs = replace(obs, faults=obs.faults + waiting)
        state, actions = step(before, obs, spec)
        writes, faults = self._act(owner, spec, target, obs, actions, memory)
        memory.acting.settle(obs.generation, faults, self.clock(), self.settings)
        if faults:
            state, actions = step(before, replace(obs, faults=obs.faults + tuple(faults)), spec)
        self.metrics.observe_step(owner.namespace, owner.name, before, state)
        for action in actions:
            if isinstance(action, Emit):
                self.kube.post_event(owner, action.type, action.reason, action.message, "modelship")
                writes += 1
        return state, writes

    def _unobservable(
        self,
        owner: naming.Owner,
        generation: int,
        previous: dict[str, Any],
        before: State,
        memory: _Memory,
        error: KubeError,
    ) -> Outcome:
        """A read refused for good (403, ...): nothing can be decided; say so and back off."""
        message = f"{error}; {RETRY_NOTE}"
        memory.reading.settle(
            generation, [Fault(Scope.SERVING, error.reason, message)], self.clock(),
            self.settings,
        )  # fmt: skip
        if (before.phase, before.reason, before.message) != (Phase.DEGRADED, error.reason, message):
            self.kube.post_event(owner, "Warning", error.reason, message, "modelship")
        status = faulted(previous, generation, error.reason, message, format_time(now()))
        self._write_status(owner, previous, status, memory)
        return Outcome(Phase.DEGRADED, max(1.0, memory.reading.due - self.clock()))

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
        # One with our labels that we do not control is not ours to scale or delete.
        revisions = [parse_rollout(d) for d in deployments if controller_uid(d) == owner.uid]
        stored: Artifact | None = None
        build = BuildObservation()
        faults: list[Fault] = []
        if not any(r.artifact is not None and r.request_key == target.request_key
                   for r in revisions):  # fmt: skip
            index = self.kube.get("ConfigMap", ns, naming.INDEX_CONFIGMAP) or {}
            if index and not artifact_index.is_ours(index):
                faults.append(name_conflict(Scope.INDEX, index, INDEX_FIX))
                index = {}
            entry = (index.get("data") or {}).get(target.index_key)
            stored = Artifact.from_json(entry) if entry else None
            if stored is not None and not target.in_store(stored.digest, stored.uri):
                stored = None  # not in this namespace's part of the store: build it here
            if stored is None:
                build = self._observe_build(owner, target, faults)
        problems: list[Problem] = []
        for r in revisions:
            problems += health.rollout_problems(r, r.name)
        route_weight = self._observe_routes(owner, spec, problems)
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
        mismatches = None
        analysis = spec.rollout.analysis
        if analysing and canary is not None and before.stable is not None and pods is not None:
            cpu = time.process_time()
            stable = before.stable.revision
            verdict = self._analyse(owner, spec, canary, stable, pods, memory, moment)
            if verdict is not None and (
                analysis.agreement or analysis.replay or analysis.output_drift
            ):
                mismatches = self._mismatches(canary.revision, stable, pods)
            if verdict is not None:
                self.metrics.observe_analysis(
                    ns, owner.name, verdict.verdict.value, time.process_time() - cpu
                )
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
            mismatches=mismatches,
            route_weight=route_weight,
        )
        return Observation(
            generation, target, stored, build, release, tuple(problems), tuple(faults)
        )

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

    @staticmethod
    def _drift(
        accumulator: Accumulator, spec: ModelDeploymentSpec, canary: str, stable: str
    ) -> Drift | None:
        check = spec.rollout.analysis.output_drift
        if check is None:
            return None
        return accumulator.drift(stable, canary, check.source.value)

    def _mismatches(
        self, canary: str, stable: str, pods: list[dict[str, Any]]
    ) -> tuple[MismatchExample, ...]:
        """The stable pods' newest mismatching examples of this canary (GET /v2/mirror)."""
        targets = [t for t in _targets(pods, canary, stable) if t.revision == stable]
        texts = self.mirror_reader.read(targets)
        names = {t.pod: t.name for t in targets}
        by_name = {names[pod]: text for pod, text in texts.items()}
        return analysis_mismatches(by_name, canary, MAX_MISMATCHES)

    def _analyse(
        self,
        owner: naming.Owner,
        spec: ModelDeploymentSpec,
        canary: CanaryStatus,
        stable: str,
        pods: list[dict[str, Any]],
        memory: _Memory,
        moment: datetime,
    ) -> AnalysisResult | None:
        """A verdict when an interval of traffic is in: from both revisions' ready pods, or,
        with source: prometheus, from Prometheus."""
        if spec.rollout.analysis.source is MetricsSource.PROMETHEUS:
            return self._ask_prometheus(owner, spec, canary, stable, memory, moment)
        key = (canary.revision, canary.attempt, canary.step)
        window = memory.analysis
        interval = duration_seconds(spec.rollout.analysis.interval)
        targets = _targets(pods, canary.revision, stable)
        if (
            window is not None
            and window.key == key
            and ((moment - window.last).total_seconds() < interval)
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
        stable_sample = accumulator.sample(stable)
        result = judge(
            accumulator.sample(canary.revision),
            stable_sample,
            spec.rollout.analysis,
            format_time(moment),
            (moment - window.since).total_seconds(),
            outputs={
                source: stable_sample.agreements(canary.revision, source)
                for source in (LIVE, REPLAY)
            },
            drift=self._drift(accumulator, spec, canary.revision, stable),
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

    def _ask_prometheus(
        self,
        owner: naming.Owner,
        spec: ModelDeploymentSpec,
        canary: CanaryStatus,
        stable: str,
        memory: _Memory,
        moment: datetime,
    ) -> AnalysisResult | None:
        """Query Prometheus over the traffic since the last verdict, once an interval is in.

        Prometheus keeps the history, so no baseline is needed: after an operator restart the
        step's last verdict marks where the traffic to judge starts.
        """
        key = (canary.revision, canary.attempt, canary.step)
        interval = duration_seconds(spec.rollout.analysis.interval)
        window = memory.analysis
        if window is None or window.key != key:
            last = canary.last_analysis
            since = parse_time(last.time) if last and _analysed_this_step(canary) else None
            since = min(since or moment, moment)
            window = _AnalysisWindow(key, Accumulator(), since, since)
            memory.analysis = window
        if (moment - window.last).total_seconds() < interval:
            return None
        window.last = moment
        seconds = (moment - window.since).total_seconds()
        if self.prometheus is None:
            return AnalysisResult(
                time=format_time(moment),
                verdict=AnalysisVerdict.INCONCLUSIVE,
                interval_seconds=seconds,
                message="analysis source: prometheus, but this operator was given no "
                "Prometheus: install it with the chart value analysis.prometheus.url (the "
                "MODELSHIP_PROMETHEUS_URL setting), or use source: pods",
                errors=1,
            )
        analysis = spec.rollout.analysis
        target = promql.Target(owner.namespace, owner.name, canary.revision, stable, seconds)
        queries = promql.analysis_queries(analysis, target)
        answers = self.prometheus.ask(queries, moment)
        result = judge_answers(queries, answers, analysis, format_time(moment), seconds)
        if result.verdict is not AnalysisVerdict.INCONCLUSIVE:
            window.since = moment
        return result

    def _observe_build(
        self, owner: naming.Owner, target: BuildTarget, faults: list[Fault]
    ) -> BuildObservation:
        if target.refusal is not None:  # the operator's settings forbid this build
            return BuildObservation(BuildState.FAILED, target.job_name, message=target.refusal)
        job = self.kube.get("Job", owner.namespace, target.job_name)
        if job is None:
            return BuildObservation()
        if not owned_by_model_deployment(job):
            faults.append(name_conflict(Scope.BUILD, job, JOB_FIX))
            return BuildObservation()
        # Finished: the result is in a pod's termination message. Running: a pod that cannot
        # start (unschedulable, image pull) says why, and the status must say it too.
        pods = self.kube.list(
            "Pod", owner.namespace, {naming.LABEL_BUILD: naming.build_key(target.key)}
        )
        pinned = None
        if target.pinned_digest:
            pinned = Artifact(target.pinned_digest, target.artifact_uri(target.pinned_digest))
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
    ) -> tuple[int, list[Fault]]:
        """Carry out every action but the Events (posted once the outcome is known); what the
        API server refuses for good becomes a fault, what may pass later is raised."""
        writes, faults = 0, []
        for action in actions:
            fault: Fault | None = None
            try:
                if isinstance(action, StartBuild | AdoptBuild):
                    # Before its pod can start: the build pod's NetworkPolicy.
                    policy = desired.build_network_policy(spec, target, owner, self.settings)
                    fault = self._not_ours(owner, policy, Scope.BUILD)
                    if fault is None:
                        self.kube.apply(policy)
                        writes += 1
                if fault is not None:
                    pass  # no build pod without the policy that bounds it
                elif isinstance(action, StartBuild):
                    self.kube.create(desired.build_job(spec, target, owner, self.settings))
                    writes += 1
                elif isinstance(action, AdoptBuild):
                    self.kube.add_owner(
                        "Job", owner.namespace, target.job_name, owner.reference(controller=False)
                    )
                    writes += 1
                elif isinstance(action, RecordArtifact):
                    done, fault = self._record(owner, target, action)
                    writes += done
                elif isinstance(action, EnsureServing):
                    done, fault = self._ensure_serving(owner, spec, obs, action.plan, memory)
                    writes += done
            except KubeError as e:
                if not e.permanent:
                    raise
                fault = Fault(_scope_of(action), e.reason, f"{e}; {RETRY_NOTE}")
            if fault is not None:
                log.warning("%s/%s: %s", owner.namespace, owner.name, fault.message)
                faults.append(fault)
        return writes, faults

    # -- router: gatewayAPI -----------------------------------------------------------------

    @staticmethod
    def _route_refs(spec: ModelDeploymentSpec) -> list[routes.RouteRef]:
        gateway = spec.rollout.gateway
        if spec.rollout.router is not Router.GATEWAY_API or gateway is None:
            return []
        refs = []
        if gateway.http_route:
            refs.append(routes.RouteRef(routes.HTTP_ROUTE, gateway.http_route, REST_PORT))
        if gateway.grpc_route:
            refs.append(routes.RouteRef(routes.GRPC_ROUTE, gateway.grpc_route, GRPC_PORT))
        return refs

    def _observe_routes(
        self, owner: naming.Owner, spec: ModelDeploymentSpec, problems: list[Problem]
    ) -> int | None:
        """The canary weight the routes carry (the lowest); what is wrong with them goes to
        ``problems`` (a route that is missing, not ours or rejected by its Gateway)."""
        weights: list[int | None] = []
        for ref in self._route_refs(spec):
            route = self.kube.get(ref.kind, owner.namespace, ref.name)
            wrong = routes.problem(route, ref, owner.name, owner.namespace)
            if wrong is not None:
                problems.append(Problem("RouteNotReady", wrong))
                continue
            assert route is not None
            weights.append(routes.live_weight(route, owner.name))
        if not weights or None in weights:
            return None  # a Gateway has not taken the latest weights yet: none achieved
        return min(w for w in weights if w is not None)

    def _set_route_weights(
        self, owner: naming.Owner, spec: ModelDeploymentSpec, weight: int, memory: _Memory
    ) -> int:
        """Put ``weight`` on the routes' rule that points at us; the rest stays as it is."""
        refs = self._route_refs(spec)
        if refs and not memory.finalizer:
            self.kube.set_finalizer(owner.namespace, owner.name, ROUTE_FINALIZER, True)
            memory.finalizer = True
        writes = 0
        for ref in refs:
            route = self.kube.get(ref.kind, owner.namespace, ref.name)
            if route is None or routes.problem(route, ref, owner.name, owner.namespace):
                continue  # reported by _observe_routes
            rule = routes.our_rule(route, owner.name)
            assert rule is not None
            current = route["spec"]["rules"][rule].get("backendRefs") or []
            wanted = routes.weighted_backends(
                current, owner.name, owner.namespace, ref.port, weight
            )
            ops = routes.patch(route, rule, wanted)
            if ops:
                if self.kube.json_patch(ref.kind, owner.namespace, ref.name, ops):
                    log.info("%s %s/%s: canary weight %d%%", ref.kind, owner.namespace,
                             ref.name, weight)  # fmt: skip
                writes += 1
        return writes

    def _give_routes_back(self, body: dict[str, Any]) -> None:
        """Before the ModelDeployment goes: its routes' rule points at ``<name>`` alone again
        (as before the operator took it), then the finalizer is removed."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
            refs = self._route_refs(spec)
        except ValidationError:
            refs = []
        for ref in refs:
            route = self.kube.get(ref.kind, namespace, ref.name)
            rule = routes.our_rule(route, name) if route is not None else None
            if route is None or rule is None:
                continue
            current = route["spec"]["rules"][rule].get("backendRefs") or []
            ops = routes.patch(route, rule, routes.given_back(current, name, namespace, ref.port))
            if ops:
                self.kube.json_patch(ref.kind, namespace, ref.name, ops)
                log.info("%s %s/%s given back to Service %s", ref.kind, namespace, ref.name,
                         name)  # fmt: skip
        self.kube.set_finalizer(namespace, name, ROUTE_FINALIZER, False)

    def _not_ours(self, owner: naming.Owner, obj: dict[str, Any], scope: Scope) -> Fault | None:
        """The conflict when an object of ``obj``'s name exists that we do not control."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        current = self.kube.get(kind, owner.namespace, name)
        if current is None or controller_uid(current) == owner.uid:
            return None
        return name_conflict(
            scope, current, f"delete that {kind}, or give the ModelDeployment another name"
        )

    def _record(
        self, owner: naming.Owner, target: BuildTarget, action: RecordArtifact
    ) -> tuple[int, Fault | None]:
        """Add the artifact to the index, evicting the oldest unused records to keep it bounded."""
        ns, name = owner.namespace, naming.INDEX_CONFIGMAP
        adding = artifact_index.record(action.artifact, target.index_key, format_time(now()))
        current = self.kube.get("ConfigMap", ns, name)
        if current is not None and not artifact_index.is_ours(current):
            return 0, name_conflict(Scope.INDEX, current, INDEX_FIX)
        data: dict[str, str] = (current or {}).get("data") or {}
        patch: dict[str, str | None] = dict(adding)
        if artifact_index.needs_room(data, adding):
            ours = self.kube.list("Deployment", ns, {naming.LABEL_MANAGED_BY: naming.MANAGER})
            served = {a.digest for d in ours if (a := parse_rollout(d).artifact) is not None}
            evict = artifact_index.evictions(data, adding, served)
            if evict is None:
                return 0, Fault(
                    Scope.INDEX,
                    "ArtifactIndexFull",
                    f"the artifact index ConfigMap {ns}/{name} is full ({len(data)} keys) and "
                    "every artifact in it is served: delete ModelDeployments (or their old "
                    f"revisions) you no longer need; {RETRY_NOTE}",
                )
            log.info("evicting %d old records from the index %s/%s", len(evict), ns, name)
            patch |= dict.fromkeys(evict)
        try:
            self.kube.merge_data(ns, name, patch)
        except KubeError as e:
            if e.status not in (413, 422):
                raise
            return 0, Fault(
                Scope.INDEX,
                "ArtifactIndexFull",
                f"the API server refused to grow the artifact index ConfigMap {ns}/{name}: "
                f"{e.detail}; delete keys of artifacts you no longer need from it; {RETRY_NOTE}",
            )
        self.metrics.observe_build("succeeded", action.duration_seconds)
        return 1, None

    def _ensure_serving(
        self,
        owner: naming.Owner,
        spec: ModelDeploymentSpec,
        obs: Observation,
        plan: ServingPlan,
        memory: _Memory,
    ) -> tuple[int, Fault | None]:
        """Apply each serving child whose desired content differs from what is there; nothing
        at all while a name it needs belongs to someone else (first conflict reported)."""
        try:
            wanted = desired.serving_objects(spec, owner, plan, self.settings, format_time(now()))
        except desired.ArtifactLocationError as e:
            return 0, Fault(Scope.SERVING, "ArtifactLocationInvalid", str(e))
        ns = owner.namespace
        seen = {r.name: r for r in obs.release.revisions if r.exists}
        changes: list[dict[str, Any]] = []
        for obj in wanted.apply:
            kind, name = obj["kind"], obj["metadata"]["name"]
            key, want = f"{kind}/{name}", desired.applied_hash(obj)
            if memory.hashes.get(key) == want:
                continue
            if kind == "Deployment" and name in seen:  # ours, read by _observe
                have = seen[name].applied_hash
            else:
                current = self.kube.get(kind, ns, name)
                if current is not None and controller_uid(current) != owner.uid:
                    fix = f"delete that {kind}, or give the ModelDeployment another name"
                    return 0, name_conflict(Scope.SERVING, current, fix)
                have = desired.applied_hash(current)
            if have == want:
                memory.hashes[key] = want
            else:
                changes.append(obj)
        writes = 0
        for obj in changes:
            self.kube.apply(obj)
            memory.hashes[f"{obj['kind']}/{obj['metadata']['name']}"] = desired.applied_hash(obj)
            writes += 1
        for scale in wanted.scale:
            current_rollout = seen.get(scale.name)
            if current_rollout is None:
                continue
            stamp = scale.annotations.get(naming.ANNOTATION_RETIRED_AT)
            if current_rollout.desired != scale.replicas or current_rollout.retired_at != stamp:
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
            else:  # one we do not control is not ours to delete (nor in our way)
                found = self.kube.get(kind, ns, name)
                present = found is not None and controller_uid(found) == owner.uid
            if present:
                self.kube.delete(kind, ns, name)
                writes += 1
            memory.hashes[key] = None
        writes += self._set_route_weights(owner, spec, plan.route_weight, memory)
        mirrored, fault = self._set_mirror_plan(owner, spec, plan, memory)
        return writes + mirrored, fault

    def _set_mirror_plan(
        self, owner: naming.Owner, spec: ModelDeploymentSpec, plan: ServingPlan, memory: _Memory
    ) -> tuple[int, Fault | None]:
        """This ModelDeployment's key of the namespace's mirror ConfigMap (the stable's pods
        read it while they run); only that key is ever written."""
        ns, name = owner.namespace, naming.MIRROR_CONFIGMAP
        key, text = naming.mirror_key(owner.name), desired.mirror_entry(spec, owner, plan.mirror)
        memo = f"ConfigMap/{name}/{key}"
        if memory.hashes.get(memo, "") == (text or ""):
            return 0, None
        current = self.kube.get("ConfigMap", ns, name)
        if current is not None and not artifact_index.is_ours(current):
            return 0, name_conflict(Scope.SERVING, current, MIRROR_FIX)
        if ((current or {}).get("data") or {}).get(key) != text:
            self.kube.merge_data(ns, name, {key: text})
            written = 1
        else:
            written = 0
        memory.hashes[memo] = text or ""
        return written, None

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
        try:
            self.kube.patch_status(owner.namespace, owner.name, status)
        except KubeError as e:
            # The status cannot say it; an Event can (once), and the controller backs off.
            if e.permanent and memory.status_error != str(e):
                memory.status_error = str(e)
                self.kube.post_event(owner, "Warning", "StatusRejected", str(e), "modelship")
            raise
        memory.status, memory.status_error = status, None
        return 1


ROUTE_FINALIZER = f"{naming.PREFIX}/routes"
"""router: gatewayAPI: set while the operator holds weights on the user's routes, so that they
are given back (pointing at ``<name>``) before the ModelDeployment is gone."""

MIRROR_FIX = (
    "the operator keeps the mirror plans of a namespace's canaries under this name: rename or "
    "delete that ConfigMap"
)
INDEX_FIX = "the operator keeps its artifact index under this name: rename or delete that ConfigMap"
JOB_FIX = (
    "its name is the build's (from the artifact digest): delete that Job, or change "
    "spec.model or spec.optimization so the build gets another name"
)


def _scope_of(action: Action) -> Scope:
    if isinstance(action, StartBuild | AdoptBuild):
        return Scope.BUILD
    if isinstance(action, RecordArtifact):
        return Scope.INDEX
    return Scope.SERVING


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
            uid = meta.get("uid", meta.get("name", ""))
            out.append(Target(uid, status["podIP"], revision, meta.get("name", "")))
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
