"""Releases: which revisions run with how many pods, and the canary that moves between them.

``release(...)`` is one pure tick, like :func:`modelship.domain.lifecycle.step` of which it is the
serving half: from the revisions observed, what the status remembers (``status.stable``,
``status.canary``), the manual-control annotations and a verdict of the analysis (when one was
reached this tick) it decides the pods of each revision, the next canary status and the Events.
Its state lives in the status alone, so an operator restarted in the middle of a release carries
on from where the status says it was.

Canary phases (``status.canary.phase``)::

    Progressing ─▶ (next step) ─▶ ... ─▶ Promoting ─▶ Succeeded
        │  ▲  a step without a pause
        ▼  │  waits for a promote
      Paused
    any of them ─▶ Aborted   (failureLimit failed intervals, progressDeadline, abort, or
                              onInconclusive: rollback); Aborted ─▶ Progressing on retry

The first revision of a ModelDeployment is deployed directly; ``strategy: rolling`` replaces
the stable revision as soon as the new one's pods are ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from modelship.api.timestamps import format_time, parse_time
from modelship.api.types import duration_seconds
from modelship.api.v1alpha1 import (
    AnalysisResult,
    AnalysisVerdict,
    CanaryPhase,
    CanaryStatus,
    CanaryStep,
    InconclusiveAction,
    MismatchExample,
    ModelDeploymentSpec,
    Phase,
    RevisionStatus,
    RolloutStrategy,
)
from modelship.domain import naming, routes
from modelship.domain.observation import Artifact, ReleaseObservation, RolloutObservation
from modelship.domain.revisions import ReplicaRouter, Router, revision_of

LEGACY_REVISION = "legacy"
"""The revision name of an adopted Deployment whose artifact is not the spec's."""
RUNNING = (CanaryPhase.PROGRESSING, CanaryPhase.PAUSED, CanaryPhase.PROMOTING)


# --- what a tick decides --------------------------------------------------------------------


@dataclass(frozen=True)
class RevisionPlan:
    """One revision's Deployment as it should be."""

    revision: str
    artifact: Artifact
    replicas: int
    request_key: str | None = None
    legacy_name: str | None = None
    """Set for the adopted legacy Deployment: only its replica count is ever written."""
    template_hash: str | None = None
    render: bool = False
    """Whether its Deployment is rendered from the spec: only the revision the spec asks for.
    Any other keeps the template it has and gets only its replica count patched."""


@dataclass(frozen=True)
class ServingPlan:
    stable: RevisionPlan
    canary: RevisionPlan | None = None
    retire: tuple[RolloutObservation, ...] = ()
    """Revisions to scale to zero and stamp with the time (unless already retired)."""
    delete: tuple[str, ...] = ()
    """Deployments retired longer than scaleDownDelay."""
    route_weight: int = 0
    """router: gatewayAPI: the canary's weight to put on the routes now (0 without a canary,
    and until it has a ready pod)."""
    mirror: Mirroring | None = None
    """What the stable's pods mirror to the canary now (None: nothing)."""
    shadow: bool = False
    """A step of weight 0: the client Service selects the stable's pods only."""


@dataclass(frozen=True)
class Mirroring:
    """The stable revision's pods send copies of requests to the canary and compare answers."""

    stable: str
    canary: str
    share: float
    """Of the client requests each stable pod serves (0-1)."""
    replay_interval_s: float | None = None
    replay_samples: int = 32


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Release:
    plan: ServingPlan | None
    stable: RevisionStatus | None
    canary: CanaryStatus | None
    phase: Phase
    reason: str
    message: str
    events: tuple[Event, ...] = ()


# --- inputs derived from the observation ---------------------------------------------------


def _by_revision(
    obs: ReleaseObservation, desired: str | None, digest: str | None
) -> dict[str, RolloutObservation]:
    """Observed Deployments by revision name; the legacy one gets the stable's name if the
    status has one, else the desired revision when it serves the same artifact."""
    out: dict[str, RolloutObservation] = {}
    for r in obs.revisions:
        if not r.exists:
            continue
        if r.legacy:
            if desired and r.artifact is not None and r.artifact.digest == digest:
                name = desired  # it already serves what the spec asks for
            elif obs.stable is not None and obs.stable.revision not in {
                x.revision for x in obs.revisions if not x.legacy
            }:
                name = obs.stable.revision
            else:
                name = LEGACY_REVISION
            out[name] = replace(r, revision=name)
        elif r.revision:
            out[r.revision] = r
    return out


def _find_stable(obs: ReleaseObservation, revisions: dict[str, RolloutObservation]) -> str | None:
    if obs.stable is not None and obs.stable.revision in revisions:
        return obs.stable.revision
    # No record (a new object, or a status lost): whatever serves is the stable revision.
    canary = obs.canary.revision if obs.canary else None
    serving = [r for r in revisions.values() if r.retired_at is None and r.artifact is not None]
    legacy = [r for r in serving if r.legacy]
    if legacy:
        return legacy[0].revision
    serving.sort(key=lambda r: (r.revision == canary, -r.ready))
    return serving[0].revision if serving else None


def _age(since: str | None, now: datetime) -> float:
    then = parse_time(since)
    return 0.0 if then is None else (now - then).total_seconds()


def _manual(obs: ReleaseObservation, canary: CanaryStatus, action: str) -> str | None:
    """The annotation's value if it names this canary and has not been acted on yet."""
    value = obs.annotations.get(naming.MANUAL_ANNOTATIONS[action])
    if not value or value.split("@", 1)[0] != canary.revision:
        return None
    return None if canary.handled.get(action) == value else value


def _handled(canary: CanaryStatus, action: str, value: str) -> CanaryStatus:
    return canary.model_copy(update={"handled": {**canary.handled, action: value}})


# --- the tick ------------------------------------------------------------------------------


@dataclass
class _Tick:
    """The working state of one tick (the function below is split along its phases)."""

    spec: ModelDeploymentSpec
    obs: ReleaseObservation
    total: int
    router: Router
    revisions: dict[str, RolloutObservation]
    stable: str
    desired: str
    artifact: Artifact
    request_key: str
    events: list[Event] = field(default_factory=list)

    @property
    def now(self) -> str:
        return format_time(self.obs.now)

    def stable_plan(self, replicas: int) -> RevisionPlan:
        seen = self.revisions[self.stable]
        assert seen.artifact is not None
        return RevisionPlan(
            self.stable,
            seen.artifact,
            replicas,
            seen.request_key,
            legacy_name=seen.name if seen.legacy else None,
            template_hash=seen.template_hash,
            render=self.stable == self.desired and not seen.legacy,
        )

    def desired_plan(self, replicas: int) -> RevisionPlan:
        return RevisionPlan(self.desired, self.artifact, replicas, self.request_key, render=True)

    def others(self, *keep: str) -> tuple[tuple[RolloutObservation, ...], tuple[str, ...]]:
        """(retire, delete) for every revision not kept."""
        delay = duration_seconds(self.spec.rollout.scale_down_delay)
        retire, delete = [], []
        for name, seen in self.revisions.items():
            if name in keep:
                continue
            if seen.retired_at is not None and _age(seen.retired_at, self.obs.now) >= delay:
                delete.append(seen.name)
            else:
                retire.append(seen)
        return tuple(retire), tuple(delete)

    def ready(self, revision: str) -> int:
        seen = self.revisions.get(revision)
        return seen.ready if seen is not None else 0


def release(
    spec: ModelDeploymentSpec,
    artifact: Artifact | None,
    request_key: str,
    total: int,
    obs: ReleaseObservation,
    router: Router | None = None,
) -> Release:
    """One tick of the serving half; ``artifact`` is None while the spec's artifact builds."""
    router = router or ReplicaRouter()
    desired = revision_of(spec, artifact.digest, obs.image) if artifact else None
    revisions = _by_revision(obs, desired, artifact.digest if artifact else None)
    stable = _find_stable(obs, revisions)
    if artifact is None or desired is None:
        return _hold(obs, revisions, stable)
    if stable is None:
        stable = desired
        revisions.setdefault(desired, RolloutObservation())
    tick = _Tick(spec, obs, total, router, revisions, stable, desired, artifact, request_key)
    if stable == desired:
        return _steady(tick)
    if spec.rollout.strategy is RolloutStrategy.ROLLING:
        return _rolling(tick)
    return _canary(tick)


def _revision_status(tick: _Tick, revision: str, artifact: Artifact) -> RevisionStatus:
    seen = tick.revisions.get(revision) or RolloutObservation()
    return RevisionStatus(
        revision=revision, digest=artifact.digest, replicas=seen.replicas, ready_replicas=seen.ready
    )


def _hold(
    obs: ReleaseObservation, revisions: dict[str, RolloutObservation], stable: str | None
) -> Release:
    """The spec's artifact is being built: every revision keeps what it has, the canary too."""
    if stable is None:
        return Release(None, None, obs.canary, Phase.BUILDING, "", "")
    seen = revisions[stable]
    assert seen.artifact is not None
    plan_stable = RevisionPlan(
        stable,
        seen.artifact,
        seen.desired,
        seen.request_key,
        legacy_name=seen.name if seen.legacy else None,
        template_hash=seen.template_hash,
    )
    canary_plan = None
    canary = obs.canary
    if canary is not None and canary.phase in RUNNING and canary.revision in revisions:
        c = revisions[canary.revision]
        if c.artifact is not None:
            canary_plan = RevisionPlan(canary.revision, c.artifact, c.desired, c.request_key)
    status = RevisionStatus(
        revision=stable, digest=seen.artifact.digest, replicas=seen.replicas,
        ready_replicas=seen.ready,
    )  # fmt: skip
    plan = ServingPlan(plan_stable, canary_plan, route_weight=obs.route_weight or 0)
    return Release(plan, status, canary, Phase.BUILDING, "", "")


def _steady(tick: _Tick, promoted: CanaryStatus | None = None) -> Release:
    """The stable revision is what the spec asks for: it gets every pod. ``promoted`` is the
    canary that just became the stable revision (its release ended well, not superseded)."""
    retire, delete = tick.others(tick.stable)
    stable = tick.revisions.get(tick.stable)
    if stable is None or not stable.exists:
        plan_stable = tick.desired_plan(tick.total)
    else:
        plan_stable = tick.stable_plan(tick.total)
    plan = ServingPlan(plan_stable, None, retire, delete)
    canary = promoted or tick.obs.canary
    if promoted is None and canary is not None and canary.phase in RUNNING:
        # The spec went back to the stable revision: the release ends, and nothing failed.
        tick.events.append(
            Event(
                "Normal",
                "CanarySuperseded",
                f"the spec is back at the stable revision {tick.stable}: the release of "
                f"{canary.revision} ended",
            )
        )
        canary = None
    seen = tick.revisions[tick.stable]
    digest = tick.artifact.digest
    if seen.exists and seen.complete and seen.ready >= tick.total:
        phase, reason = Phase.READY, "Ready"
        message = f"{seen.ready}/{tick.total} pods serve revision {tick.stable} ({digest})"
    elif not seen.exists:
        phase, reason = Phase.DEPLOYING, "Deploying"
        message = f"deploying revision {tick.stable} ({digest})"
    elif seen.available == 0:
        phase, reason = Phase.DEPLOYING, "WaitingForPods"
        message = f"revision {tick.stable}: {seen.ready}/{tick.total} pods ready"
    else:
        phase, reason = Phase.PROGRESSING, "Scaling"
        message = f"{seen.ready}/{tick.total} pods of revision {tick.stable} ready"
    return Release(
        plan,
        _revision_status(tick, tick.stable, tick.artifact),
        canary,
        phase,
        reason,
        message,
        tuple(tick.events),
    )


def _rolling(tick: _Tick) -> Release:
    """strategy: rolling: the new revision gets every pod; once they are ready it is stable."""
    new = tick.revisions.get(tick.desired)
    if new is not None and new.exists and new.ready >= tick.total and new.complete:
        tick.events.append(
            Event("Normal", "RolledOut", f"revision {tick.desired} replaced {tick.stable}")
        )
        tick.stable = tick.desired
        return _steady(tick)
    retire, delete = tick.others(tick.stable, tick.desired)
    share = ReplicaRouter().actual_weight(tick.ready(tick.stable), tick.ready(tick.desired))
    plan = ServingPlan(
        tick.stable_plan(tick.total), tick.desired_plan(tick.total), retire, delete, share
    )
    return Release(
        plan,
        _revision_status(tick, tick.stable, tick.stable_plan(0).artifact),
        tick.obs.canary,
        Phase.PROGRESSING,
        "RollingOut",
        f"replacing revision {tick.stable} with {tick.desired}: {tick.ready(tick.desired)}/"
        f"{tick.total} new pods ready",
        tuple(tick.events),
    )


# --- the canary ----------------------------------------------------------------------------


def _steps(tick: _Tick) -> list[CanaryStep]:
    return tick.spec.rollout.effective_steps


def analysis_window(
    spec: ModelDeploymentSpec, canary: CanaryStatus | None, canary_ready: int, canary_wanted: int,
    now: datetime,
) -> bool:  # fmt: skip
    """Whether the canary may be analysed now: running, its pods at the step's count and past
    the step's initialDelay. The reconciler decides from this whether to scrape."""
    if canary is None or canary.phase not in (CanaryPhase.PROGRESSING, CanaryPhase.PAUSED):
        return False
    if canary_wanted == 0 or canary_ready < canary_wanted:
        return False
    delay = duration_seconds(spec.rollout.analysis.initial_delay)
    return _age(canary.step_started_at, now) >= delay


def _start(tick: _Tick, attempt: int, handled: dict[str, str]) -> CanaryStatus:
    first = _steps(tick)[0]
    return CanaryStatus(
        revision=tick.desired,
        digest=tick.artifact.digest,
        phase=CanaryPhase.PROGRESSING,
        reason="StepStarted",
        message=f"step 1/{len(_steps(tick))}: weight {first.weight}%",
        step=0,
        desired_weight=first.weight,
        attempt=attempt,
        started_at=tick.now,
        step_started_at=tick.now,
        handled=handled,
    )


def _canary(tick: _Tick) -> Release:
    obs = tick.obs
    canary = obs.canary
    if canary is None or canary.revision != tick.desired:
        if canary is not None and canary.phase in RUNNING:
            tick.events.append(
                Event(
                    "Normal",
                    "CanaryReplaced",
                    f"revision {tick.desired} replaces the canary {canary.revision}",
                )
            )
        canary = _start(tick, 1, {})
        tick.events.append(
            Event(
                "Normal",
                "CanaryStarted",
                f"releasing revision {tick.desired} ({tick.artifact.digest}) against stable "
                f"{tick.stable}: {canary.message}",
            )
        )
    elif canary.phase is CanaryPhase.ABORTED:
        retry = _manual(obs, canary, "retry")
        if retry is None:
            return _rolled_back(tick, canary)
        canary = _start(tick, canary.attempt + 1, {**canary.handled, "retry": retry})
        tick.events.append(
            Event("Normal", "CanaryRetried", f"retrying revision {tick.desired}: {canary.message}")
        )
    elif canary.phase is CanaryPhase.SUCCEEDED:
        tick.stable = tick.desired  # promoted, but the status lost the new stable revision
        return _steady(tick)
    return _running(tick, canary)


def _running(tick: _Tick, canary: CanaryStatus) -> Release:
    obs, rollout = tick.obs, tick.spec.rollout
    deadline = duration_seconds(rollout.progress_deadline)
    if _age(canary.started_at, obs.now) > deadline:
        return _abort(
            tick,
            canary,
            "ProgressDeadlineExceeded",
            f"the release took longer than progressDeadline {rollout.progress_deadline}",
        )
    abort = _manual(obs, canary, "abort")
    if abort is not None:
        return _abort(tick, _handled(canary, "abort", abort), "Aborted", f"aborted by {abort!r}")
    full = _manual(obs, canary, "promote-full")
    if full is not None and canary.phase is not CanaryPhase.PROMOTING:
        canary = _handled(canary, "promote-full", full)
        canary = _promoting_status(tick, canary, f"promoted in full by {full!r}")
    if canary.phase is CanaryPhase.PROMOTING:
        return _promoting(tick, canary)

    canary = _record_verdict(tick, canary, obs.analysis)
    analysis = rollout.analysis
    if canary.failed_intervals >= analysis.failure_limit:
        last = canary.last_analysis.message if canary.last_analysis else ""
        return _abort(
            tick,
            canary,
            "AnalysisFailed",
            f"{canary.failed_intervals} failed analyses (failureLimit {analysis.failure_limit}): "
            f"{last}",
        )
    inconclusive_out = canary.inconclusive_intervals >= analysis.inconclusive_limit
    if inconclusive_out and analysis.on_inconclusive is InconclusiveAction.ROLLBACK:
        return _abort(
            tick,
            canary,
            "Inconclusive",
            f"{canary.inconclusive_intervals} inconclusive analyses (inconclusiveLimit "
            f"{analysis.inconclusive_limit}, onInconclusive rollback)",
        )
    canary = _advance(tick, canary)
    if canary.phase is CanaryPhase.PROMOTING:
        return _promoting(tick, canary)
    return _at_weight(tick, canary)


def _record_verdict(
    tick: _Tick, canary: CanaryStatus, result: AnalysisResult | None
) -> CanaryStatus:
    if result is None:
        return canary
    analysis = tick.spec.rollout.analysis
    update: dict[str, object] = {"last_analysis": result}
    mismatches = tick.obs.mismatches
    if mismatches is not None:
        update["mismatches"] = list(mismatches)
    else:
        mismatches = tuple(canary.mismatches)
    if result.verdict is AnalysisVerdict.PASS:
        update |= {"successful_intervals": canary.successful_intervals + 1}
        update |= {"inconclusive_intervals": 0}
    elif result.verdict is AnalysisVerdict.FAIL:
        failed = canary.failed_intervals + 1
        update |= {"failed_intervals": failed, "inconclusive_intervals": 0}
        tick.events.append(
            Event(
                "Warning",
                "AnalysisFailed",
                f"revision {canary.revision} failed analysis {failed}/{analysis.failure_limit}: "
                f"{result.message}{_examples(mismatches)}",
            )
        )
    elif result.errors:
        # A failed query says nothing about the canary: it holds the step (progressDeadline
        # still bounds it) and never counts towards onInconclusive, so it cannot promote.
        update |= {"inconclusive_intervals": canary.inconclusive_intervals}
    else:
        inconclusive = canary.inconclusive_intervals + 1
        update |= {"inconclusive_intervals": inconclusive}
        if inconclusive == analysis.inconclusive_limit:
            tick.events.append(
                Event(
                    "Warning",
                    "AnalysisInconclusive",
                    f"revision {canary.revision}: {inconclusive} inconclusive analyses in a row "
                    f"({result.message}); onInconclusive: {analysis.on_inconclusive.value}",
                )
            )
    return canary.model_copy(update=update)


def _examples(mismatches: tuple[MismatchExample, ...]) -> str:
    """A few mismatching requests, for an Event: their ids and scores."""
    if not mismatches:
        return ""
    shown = [
        f"{m.id} ({m.source}, cosine {m.cosine:.4f}"
        + (f", top-1 {m.top1_agreement:.2f}" if m.top1_agreement is not None else "")
        + ")"
        for m in mismatches[:3]
    ]
    return "; mismatching requests: " + ", ".join(shown)


def _step_passed(tick: _Tick, canary: CanaryStatus) -> bool:
    """The current step has a verdict that lets it end: a pass in this step, or, with
    onInconclusive: promote, the inconclusive limit reached."""
    analysis = tick.spec.rollout.analysis
    if (
        canary.inconclusive_intervals >= analysis.inconclusive_limit
        and analysis.on_inconclusive is InconclusiveAction.PROMOTE
    ):
        return True
    last = canary.last_analysis
    if last is None or last.verdict is not AnalysisVerdict.PASS:
        return False
    when, started = parse_time(last.time), parse_time(canary.step_started_at)
    return when is not None and started is not None and when >= started


def _advance(tick: _Tick, canary: CanaryStatus) -> CanaryStatus:
    steps = _steps(tick)
    step = steps[canary.step]
    promote = _manual(tick.obs, canary, "promote")
    if promote is not None:
        canary = _handled(canary, "promote", promote)
        why = f"promoted by {promote!r}"
    elif step.pause is None:
        if not _weight_reached(tick, step.weight):
            # A person is asked once the canary serves its step's share (as an Argo Rollouts
            # pause starts once the weight is set); until then it is still on its way.
            return canary.model_copy(
                update={"phase": CanaryPhase.PROGRESSING, "reason": "StepInProgress"}
            )
        return canary.model_copy(
            update={
                "phase": CanaryPhase.PAUSED,
                "reason": "WaitingForPromotion",
                "message": f"step {canary.step + 1}/{len(steps)} at weight {step.weight}% "
                "waits for a promote (kubectl modelship promote, or the modelship.io/promote "
                "annotation)",
            }
        )
    elif _age(canary.step_started_at, tick.obs.now) >= duration_seconds(
        step.pause
    ) and _step_passed(tick, canary):
        why = f"paused {step.pause} with a passing analysis"
    else:
        return canary.model_copy(
            update={"phase": CanaryPhase.PROGRESSING, "reason": "StepInProgress"}
        )
    if canary.step + 1 >= len(steps):
        return _promoting_status(tick, canary, why)
    nxt = canary.step + 1
    message = f"step {nxt + 1}/{len(steps)}: weight {steps[nxt].weight}% ({why})"
    tick.events.append(Event("Normal", "StepAdvanced", f"revision {canary.revision}: {message}"))
    return canary.model_copy(
        update={
            "phase": CanaryPhase.PROGRESSING,
            "reason": "StepStarted",
            "message": message,
            "step": nxt,
            "desired_weight": steps[nxt].weight,
            "step_started_at": tick.now,
            "inconclusive_intervals": 0,
        }
    )


def _promoting_status(tick: _Tick, canary: CanaryStatus, why: str) -> CanaryStatus:
    message = f"promoting revision {canary.revision} ({why}): it gets every pod"
    tick.events.append(Event("Normal", "Promoting", message))
    return canary.model_copy(
        update={
            "phase": CanaryPhase.PROMOTING,
            "reason": "Promoting",
            "message": message,
            "desired_weight": 100,
        }
    )


def _weight_reached(tick: _Tick, weight: int) -> bool:
    """The canary serves the step's share (its router says when)."""
    return tick.router.serves(tick.total, weight, tick.ready(tick.stable), tick.ready(tick.desired))


def _at_weight(tick: _Tick, canary: CanaryStatus) -> Release:
    """The canary at its step's weight: pods split by the router, the status says how far."""
    steps = _steps(tick)
    weight = steps[canary.step].weight
    split = tick.router.split(tick.total, weight)
    retire, delete = tick.others(tick.stable, tick.desired)
    route_weight = routes.canary_weight(
        weight, False, tick.ready(tick.stable), tick.ready(tick.desired)
    )
    plan = ServingPlan(
        tick.stable_plan(split.stable), tick.desired_plan(split.canary), retire, delete,
        route_weight, _mirroring(tick, steps[canary.step]), shadow=weight == 0,
    )  # fmt: skip
    canary = _with_pods(tick, canary, weight)
    last = canary.last_analysis
    verdict = f"; last analysis {last.verdict.value}: {last.message}" if last else ""
    if canary.phase is CanaryPhase.PAUSED:
        reason, message = "CanaryPaused", canary.message + verdict
    else:
        reason = "CanaryProgressing"
        message = (
            f"revision {canary.revision} at step {canary.step + 1}/{len(steps)}: weight "
            f"{canary.weight}% of {weight}% asked ({canary.ready_replicas}/{split.canary} canary "
            f"pods ready){verdict}"
        )
    return Release(
        plan,
        _revision_status(tick, tick.stable, tick.stable_plan(0).artifact),
        canary,
        Phase.PROGRESSING,
        reason,
        message,
        tuple(tick.events),
    )


def _mirroring(tick: _Tick, step: CanaryStep) -> Mirroring | None:
    """The step's mirror share (or the output checks'), and replay when a check reads it."""
    analysis = tick.spec.rollout.analysis
    percent = step.mirror if step.mirror is not None else analysis.live_mirror_percent
    replay = analysis.replays
    if tick.ready(tick.desired) == 0:
        # Copies sent before the canary has a ready pod would only fail (its Service has no
        # endpoint), and count against it.
        return None
    if not percent and replay is None:
        return None
    return Mirroring(
        tick.stable,
        tick.desired,
        (percent or 0) / 100,
        duration_seconds(analysis.interval) if replay else None,
        replay.samples if replay else 32,
    )


def _with_pods(tick: _Tick, canary: CanaryStatus, desired_weight: int) -> CanaryStatus:
    seen = tick.revisions.get(tick.desired) or RolloutObservation()
    weight = (
        0 if desired_weight == 0 else tick.router.actual_weight(tick.ready(tick.stable), seen.ready)
    )
    return canary.model_copy(
        update={
            "weight": weight,
            "desired_weight": desired_weight,
            "replicas": seen.replicas,
            "ready_replicas": seen.ready,
        }
    )


def _promoting(tick: _Tick, canary: CanaryStatus) -> Release:
    """Every pod for the canary; once they are ready it is the stable revision."""
    new = tick.revisions.get(tick.desired)
    if new is not None and new.exists and new.complete and new.ready >= tick.total:
        old = tick.stable
        canary = _with_pods(tick, canary, 100).model_copy(
            update={
                "phase": CanaryPhase.SUCCEEDED,
                "reason": "Promoted",
                "message": f"revision {canary.revision} replaced {old}",
                "weight": 100,
                "finished_at": tick.now,
            }
        )
        tick.events.append(Event("Normal", "Promoted", canary.message))
        tick.stable = tick.desired
        return _steady(tick, promoted=canary)
    held = tick.revisions[tick.stable].desired
    retire, delete = tick.others(tick.stable, tick.desired)
    weight = routes.canary_weight(100, True, tick.ready(tick.stable), tick.ready(tick.desired))
    plan = ServingPlan(
        tick.stable_plan(max(held, 1)), tick.desired_plan(tick.total), retire, delete, weight
    )
    canary = _with_pods(tick, canary, 100)
    return Release(
        plan,
        _revision_status(tick, tick.stable, tick.stable_plan(0).artifact),
        canary,
        Phase.PROGRESSING,
        "CanaryPromoting",
        f"promoting revision {canary.revision}: {canary.ready_replicas}/{tick.total} pods ready",
        tuple(tick.events),
    )


def _abort(tick: _Tick, canary: CanaryStatus, reason: str, why: str) -> Release:
    message = f"revision {canary.revision} rolled back to stable {tick.stable}: {why}"
    canary = canary.model_copy(
        update={
            "phase": CanaryPhase.ABORTED,
            "reason": reason,
            "message": message,
            "finished_at": tick.now,
            "weight": 0,
            "desired_weight": 0,
        }
    )
    tick.events.append(Event("Warning", "RolledBack", message))
    return _rolled_back(tick, canary)


def _rolled_back(tick: _Tick, canary: CanaryStatus) -> Release:
    """After a rollback every pod is the stable's, until the spec changes or a retry."""
    retire, delete = tick.others(tick.stable)
    plan = ServingPlan(tick.stable_plan(tick.total), None, retire, delete)
    hint = (
        f"; the revision is not tried again until the spec changes or a retry "
        f"(kubectl modelship retry, or modelship.io/retry: {canary.revision})"
    )
    return Release(
        plan,
        _revision_status(tick, tick.stable, tick.stable_plan(0).artifact),
        canary.model_copy(update={"replicas": 0, "ready_replicas": 0}),
        Phase.DEGRADED,
        canary.reason if canary.reason == "ProgressDeadlineExceeded" else "RolledBack",
        canary.message + hint,
        tuple(tick.events),
    )
