"""Output-aware canaries, operator side: shadow steps, what the stable's pods are told to mirror,
the agreement and replay checks on what they compared, and the mismatching examples."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from modelship.api.v1alpha1 import (
    AccuracyMetric,
    AnalysisSpec,
    AnalysisVerdict,
    CanaryPhase,
    CanaryStep,
    MismatchExample,
)
from modelship.domain import desired, naming, promql
from modelship.domain.analysis import (
    LIVE,
    REPLAY,
    Accumulator,
    Agreements,
    Drift,
    Sample,
    judge,
    judge_answers,
    mismatches,
    parse_metrics,
)
from modelship.domain.promql import Answer, Target
from modelship.domain.revisions import revision_of
from release_world import IMAGE, OWNER, World, artifact, respec, spec, verdict

OLD, NEW = artifact(1), artifact(2, "int8-dynamic")
PASS, FAIL, INCONCLUSIVE = AnalysisVerdict.PASS, AnalysisVerdict.FAIL, AnalysisVerdict.INCONCLUSIVE


def releasing(steps: list[dict[str, Any]], **analysis: Any) -> World:
    world = World(
        spec=spec(replicas=4, scaling={"maxReplicas": 8},
                  rollout={"steps": steps, "analysis": {"interval": "10s"} | analysis}),
        stored=OLD,
    )  # fmt: skip
    world.tick()
    world.settle()
    world.tick()
    world.stored = NEW
    world.spec = respec(world.spec, optimization={"precision": "fp16"})
    world.tick()
    world.settle()
    world.tick()
    return world


def test_a_step_of_weight_zero_must_mirror() -> None:
    with pytest.raises(ValidationError, match="shadow step and needs mirror"):
        CanaryStep.model_validate({"weight": 0})
    assert CanaryStep.model_validate({"weight": 0, "mirror": 50}).mirror == 50


def test_a_shadow_step_serves_no_client_from_the_canary_and_mirrors_its_share() -> None:
    world = releasing([{"weight": 0, "mirror": 50, "pause": "60s"}, {"weight": 50}])
    plan = world.plan()
    assert plan.shadow
    assert plan.canary is not None
    assert plan.canary.replicas >= 1
    assert plan.mirror is not None
    assert (plan.mirror.share, plan.mirror.replay_interval_s) == (0.5, None)
    stable = revision_of(world.spec, OLD.digest, IMAGE)
    assert (plan.mirror.stable, plan.mirror.canary) == (stable, revision_of(world.spec, NEW.digest,
                                                                           IMAGE))  # fmt: skip
    state = world.state
    assert state.canary is not None
    assert state.canary.weight == 0, "no client share"
    clients = next(
        o for o in desired.services(world.spec, OWNER, plan)
        if o["metadata"]["name"] == naming.serving_name(OWNER.name)
    )  # fmt: skip
    assert clients["spec"]["selector"] == naming.revision_selector(OWNER.name, stable)


def test_after_the_shadow_step_clients_reach_both_and_mirroring_follows_the_step() -> None:
    world = releasing([{"weight": 0, "mirror": 50, "pause": "10s"}, {"weight": 50}],
                      agreement={"mirror": 20}, replay={"samples": 8})  # fmt: skip
    assert world.plan().mirror.replay_interval_s == 10.0  # type: ignore[union-attr]
    world.advance(11)
    world.tick(verdict(PASS, world.now))
    world.settle()
    state = world.tick()
    assert state.canary is not None
    assert state.canary.step == 1
    plan = world.plan()
    assert not plan.shadow
    assert plan.mirror is not None
    assert plan.mirror.share == 0.2, "agreement's mirror share"
    assert plan.mirror.replay_samples == 8
    clients = desired.services(world.spec, OWNER, plan)[0]
    assert clients["spec"]["selector"] == naming.selector_labels(OWNER.name)


def test_without_output_checks_or_step_mirror_nothing_is_mirrored() -> None:
    world = releasing([{"weight": 20, "pause": "60s"}])
    assert world.plan().mirror is None
    assert desired.mirror_entry(world.spec, OWNER, world.plan().mirror) is None


def test_an_agreement_failure_rolls_back_with_the_mismatching_requests_in_the_event() -> None:
    world = releasing([{"weight": 20, "pause": "60s"}], agreement={}, failureLimit=1)
    world.mismatches = (
        MismatchExample(id="req-7", source="live", pod="p", cosine=0.91, max_abs_error=0.3,
                        top1_agreement=0.0),
    )  # fmt: skip
    world.advance(11)
    state = world.tick(verdict(FAIL, world.now, "agreement: cosine 0.9100 < 0.9900"))
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.ABORTED
    assert [m.id for m in state.canary.mismatches] == ["req-7"]
    warning = next(w for w in world.warnings() if "failed analysis" in w)
    assert "mismatching requests: req-7 (live, cosine 0.9100, top-1 0.00)" in warning


# --- the checks ---------------------------------------------------------------------------------


def analysis(**extra: Any) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"minRequests": 20} | extra)


CLIENTS = Sample(requests=100, buckets=((0.05, 100.0), (float("inf"), 100.0)))
NO_CLIENTS = Sample()


def compared(cosines: list[float], failed: int = 0, rows: tuple[int, int] = (0, 0)) -> Agreements:
    return Agreements(len(cosines), failed, float(np.sum(cosines)), *map(float, rows))


def test_agreement_is_the_mean_cosine_of_the_compared_requests() -> None:
    rng = np.random.default_rng(7)
    cosines = list(rng.uniform(0.85, 0.95, 60))
    result = judge(CLIENTS, CLIENTS, analysis(agreement={}), "t", 30,
                   outputs={LIVE: compared(cosines)})  # fmt: skip
    check = next(c for c in result.checks if c.name == "agreement")
    assert check.value == pytest.approx(float(np.mean(cosines)))
    assert (check.verdict, check.samples, result.verdict) == (FAIL, 60, FAIL)
    assert result.message == (
        f"agreement: cosine {np.mean(cosines):.4f} < 0.9900 on 60 mirrored requests"
    )


def test_top1_agreement_reads_the_row_counters() -> None:
    spec_ = analysis(agreement={"metric": "top1", "min": 0.9, "minSamples": 10})
    result = judge(CLIENTS, CLIENTS, spec_, "t", 30,
                   outputs={LIVE: compared([1.0] * 10, rows=(19, 20))})  # fmt: skip
    check = next(c for c in result.checks if c.name == "agreement")
    assert (check.value, check.verdict) == (0.95, PASS)


def test_too_few_compared_requests_is_inconclusive_never_a_failure() -> None:
    result = judge(CLIENTS, CLIENTS, analysis(agreement={"minSamples": 50}), "t", 30,
                   outputs={LIVE: compared([0.5] * 49)})  # fmt: skip
    assert result.verdict is INCONCLUSIVE
    assert "49 mirrored requests compared < minSamples 50" in result.message


def test_a_canary_failing_mirrored_requests_fails_agreement() -> None:
    result = judge(CLIENTS, CLIENTS, analysis(agreement={"minSamples": 10}), "t", 30,
                   outputs={LIVE: compared([1.0] * 10, failed=5)})  # fmt: skip
    assert result.verdict is FAIL
    assert "the canary failed 5 of 15 mirrored requests" in result.message


def test_without_client_traffic_replay_alone_passes_or_fails_the_canary() -> None:
    spec_ = analysis(replay={"minSamples": 16})
    good = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: compared([0.999] * 32)})
    assert good.verdict is PASS, good.message
    assert good.message.startswith("judged on outputs alone (0 client requests < minRequests 20)")
    bad = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: compared([0.9] * 32)})
    assert bad.verdict is FAIL
    thin = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: compared([0.999] * 3)})
    assert thin.verdict is INCONCLUSIVE


def test_client_checks_still_count_when_traffic_is_there() -> None:
    slow = Sample(requests=100, buckets=((0.05, 0.0), (1.0, 100.0), (float("inf"), 100.0)))
    result = judge(slow, CLIENTS, analysis(replay={}), "t", 30,
                   outputs={REPLAY: compared([1.0] * 32)})  # fmt: skip
    assert result.verdict is FAIL, "a fast wrong answer and a slow right one both fail"
    assert "p99" in result.message


METRICS = """\
# TYPE modelship_mirror_requests counter
modelship_mirror_requests_total{{revision="s",canary="c",source="live",outcome="compared"}} {n}
modelship_mirror_requests_total{{revision="s",canary="c",source="live",outcome="dropped"}} 9
modelship_mirror_requests_total{{revision="s",canary="c",source="live",outcome="failed"}} 1
modelship_mirror_requests_total{{revision="s",canary="old",source="live",outcome="compared"}} 50
# TYPE modelship_mirror_cosine histogram
modelship_mirror_cosine_bucket{{revision="s",canary="c",source="live",le="+Inf"}} {n}
modelship_mirror_cosine_sum{{revision="s",canary="c",source="live"}} {s}
modelship_mirror_cosine_count{{revision="s",canary="c",source="live"}} {n}
# TYPE modelship_mirror_top1_agreements counter
modelship_mirror_top1_agreements_total{{revision="s",canary="c",source="replay"}} {n}
# TYPE modelship_mirror_top1_rows counter
modelship_mirror_top1_rows_total{{revision="s",canary="c",source="replay"}} {n}
"""


def test_what_a_stable_pod_compared_is_read_per_canary_and_source_between_scrapes() -> None:
    acc = Accumulator()
    assert not acc.observe("s", "pod-1", parse_metrics(METRICS.format(n=10, s=9.5)))
    assert acc.observe("s", "pod-1", parse_metrics(METRICS.format(n=30, s=29.0)))
    live = acc.sample("s").agreements("c", LIVE)
    assert (live.compared, live.failed, live.cosine_sum) == (20, 0, 19.5)
    assert acc.sample("s").agreements("c", REPLAY).value(AccuracyMetric.TOP1) == 1.0
    assert acc.sample("s").agreements("old", LIVE).compared == 0, "another canary's figures"
    # The pod restarted: its counters start again, and what they hold is the interval's.
    acc.reset()
    assert acc.observe("s", "pod-1", parse_metrics(METRICS.format(n=4, s=3.0)))
    assert acc.sample("s").agreements("c", LIVE).compared == 4


def test_prometheus_source_asks_for_what_the_stable_compared() -> None:
    spec_ = analysis(source="prometheus", agreement={"minSamples": 10})
    target = Target("ml", "m", "c", "s", 30.0)
    queries = promql.analysis_queries(spec_, target)
    compared_query = next(q for q in queries if q.name == "output.live.compared")
    assert compared_query.promql == (
        'sum(increase(modelship_mirror_requests_total{namespace="ml",model="m",revision="s",'
        'canary="c",source="live",outcome="compared"}[30s]))'
    )
    assert not [q for q in queries if q.name.startswith("output.replay")]
    answers = {q.name: Answer(value=None) for q in queries}
    answers |= {promql.CANARY_REQUESTS: Answer(value=0.0),
                "output.live.compared": Answer(value=20.0),
                "output.live.cosine_sum": Answer(value=19.0)}  # fmt: skip
    result = judge_answers(queries, answers, spec_, "t", 30)
    assert result.verdict is FAIL
    assert "cosine 0.9500 < 0.9900 on 20 mirrored" in result.message
    broken = answers | {"output.live.cosine_sum": Answer(error="timeout")}
    result = judge_answers(queries, broken, spec_, "t", 30)
    check = next(c for c in result.checks if c.name == "agreement")
    assert check.verdict is INCONCLUSIVE
    assert "timeout" in check.message


def test_mismatching_examples_are_the_newest_of_this_canary_from_every_stable_pod() -> None:
    def report(canary: str, *examples: tuple[str, float]) -> str:
        return json.dumps({"canary": canary, "mismatches": [
            {"id": i, "time": t, "source": "live", "cosine": 0.5, "max_abs_error": 1.0,
             "top1_agreement": None, "input_sha256": "ab"} for i, t in examples]})  # fmt: skip

    reports = {"pod-a": report("c", ("a1", 1.0), ("a2", 4.0)), "pod-b": report("c", ("b1", 3.0)),
               "pod-c": report("other", ("x", 9.0)), "pod-d": "not json"}  # fmt: skip
    found = mismatches(reports, "c", 2)
    assert [(m.id, m.pod) for m in found] == [("a2", "pod-a"), ("b1", "pod-b")]


DRIFT = """\
# TYPE modelship_mirror_output_psi gauge
modelship_mirror_output_psi{{revision="s",canary="c",source="live"}} {psi}
# TYPE modelship_mirror_output_values gauge
modelship_mirror_output_values{{revision="s",canary="c",source="live"}} {values}
"""


def test_output_drift_is_the_largest_psi_of_the_stable_pods_on_the_fewest_values() -> None:
    acc = Accumulator()
    acc.observe("s", "pod-1", parse_metrics(DRIFT.format(psi=0.05, values=5000)))
    acc.observe("s", "pod-2", parse_metrics(DRIFT.format(psi=0.4, values=3000)))
    acc.observe("c", "pod-3", parse_metrics(DRIFT.format(psi=9, values=9000)))  # not the stable
    drift = acc.drift("s", "c", LIVE)
    assert drift is not None
    assert (drift.psi, drift.values) == (0.4, 3000)
    assert acc.drift("s", "c", REPLAY) is None
    acc.forget_missing({"pod-1"})
    assert acc.drift("s", "c", LIVE) == type(drift)(0.05, 5000)


def test_output_drift_fails_above_max_and_waits_for_enough_values() -> None:
    spec_ = analysis(outputDrift={"max": 0.25, "minValues": 1000})
    result = judge(CLIENTS, CLIENTS, spec_, "t", 30, drift=Drift(0.61, 4000))
    check = next(c for c in result.checks if c.name == "outputDrift")
    assert (check.verdict, check.value, result.verdict) == (FAIL, 0.61, FAIL)
    assert "outputDrift: PSI 0.610 > 0.250" in result.message
    thin = judge(CLIENTS, CLIENTS, spec_, "t", 30, drift=Drift(0.61, 400))
    assert thin.verdict is INCONCLUSIVE
    assert "400 output values < minValues 1 000" in thin.message
    assert judge(CLIENTS, CLIENTS, spec_, "t", 30, drift=None).verdict is INCONCLUSIVE


def test_a_live_output_drift_check_turns_mirroring_on_and_a_replay_one_replays() -> None:
    live = releasing([{"weight": 20, "pause": "60s"}], outputDrift={})
    assert live.plan().mirror is not None
    assert live.plan().mirror.share == 0.1  # type: ignore[union-attr]
    replay = releasing([{"weight": 20, "pause": "60s"}], outputDrift={"source": "replay"})
    mirror = replay.plan().mirror
    assert mirror is not None
    assert (mirror.share, mirror.replay_interval_s) == (0.0, 10.0)


def test_prometheus_reads_the_drift_gauges_of_the_stable_pods() -> None:
    spec_ = analysis(source="prometheus", outputDrift={"source": "replay"})
    queries = {
        q.name: q.promql for q in promql.analysis_queries(spec_, Target("ml", "m", "c", "s", 30))
    }
    assert queries[promql.OUTPUT_PSI] == (
        'max(modelship_mirror_output_psi{namespace="ml",model="m",revision="s",canary="c",'
        'source="replay"})'
    )
    answers = {name: Answer(value=None) for name in queries}
    answers |= {promql.OUTPUT_PSI: Answer(value=0.5), promql.OUTPUT_VALUES: Answer(value=2000.0)}
    result = judge_answers(
        promql.analysis_queries(spec_, Target("ml", "m", "c", "s", 30)), answers, spec_, "t", 30
    )
    assert result.verdict is FAIL
    assert "outputDrift: PSI 0.500 > 0.250" in result.message


def test_nothing_is_mirrored_before_the_canary_has_a_ready_pod() -> None:
    world = releasing([{"weight": 20, "pause": "60s"}], agreement={})
    assert world.plan().mirror is not None
    world.stored = artifact(3, "int8-dynamic")
    world.spec = respec(world.spec, optimization={"precision": "int8-dynamic"})
    world.tick()  # a newer canary replaces it: its pods are not ready yet
    assert world.plan().mirror is None, "its Service has no endpoint to answer copies"
    world.settle()
    world.tick()
    assert world.plan().mirror is not None


def labelled(rows: int, stable: int, canary: int) -> Agreements:
    return Agreements(rows, 0, float(rows), 0.0, 0.0, rows, stable, canary)


def test_a_labelled_golden_set_judges_accuracy_absolute_and_against_the_stable() -> None:
    spec_ = analysis(replay={"minSamples": 16, "minAccuracy": 0.8, "maxAccuracyDrop": 0.05})
    ok = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: labelled(32, 30, 29)})
    assert ok.verdict is PASS, ok.message
    assert "replay: accuracy 90.62% (stable 93.75%) on 32 labelled rows" in ok.message
    dropped = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: labelled(32, 32, 28)})
    assert dropped.verdict is FAIL
    assert "12.5 points below the stable > maxAccuracyDrop 5.0" in dropped.message
    low = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: labelled(32, 25, 24)})
    assert low.verdict is FAIL
    assert "below minAccuracy 80.00%" in low.message
    few = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: labelled(8, 8, 8)})
    assert few.verdict is INCONCLUSIVE


def test_without_labels_an_accuracy_replay_check_judges_agreement_and_says_so() -> None:
    spec_ = analysis(replay={"minAccuracy": 0.8})
    result = judge(NO_CLIENTS, CLIENTS, spec_, "t", 30, outputs={REPLAY: compared([0.9] * 32)})
    assert result.verdict is FAIL
    assert "(the golden set has no labels: agreement judged)" in result.message


def test_labelled_rows_and_correct_rows_are_read_per_side() -> None:
    text = """\
# TYPE modelship_mirror_labelled_rows counter
modelship_mirror_labelled_rows_total{revision="s",canary="c",source="replay"} 32
# TYPE modelship_mirror_correct_rows counter
modelship_mirror_correct_rows_total{revision="s",canary="c",source="replay",side="stable"} 31
modelship_mirror_correct_rows_total{revision="s",canary="c",source="replay",side="canary"} 27
"""
    seen = parse_metrics(text).mirrors[("c", REPLAY)]
    assert (seen.labelled, seen.stable_correct, seen.canary_correct) == (32, 31, 27)
    spec_ = analysis(source="prometheus", replay={"maxAccuracyDrop": 0.05})
    names = {q.name for q in promql.analysis_queries(spec_, Target("ml", "m", "c", "s", 30))}
    assert {"output.replay.labelled", "output.replay.canary_correct"} <= names
