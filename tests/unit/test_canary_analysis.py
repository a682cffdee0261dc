"""Canary analysis arithmetic on /metrics texts recorded with the runtime's own metrics class."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from modelship.api.v1alpha1 import AnalysisSpec, AnalysisVerdict
from modelship.domain.analysis import (
    Accumulator,
    PodSnapshot,
    Sample,
    delta,
    judge,
    parse_metrics,
)
from modelship_runtime.serve.metrics import LATENCY_BUCKETS, RequestMetrics

MODEL = "iris"
INF = math.inf
NOW = "2025-01-01T12:00:00Z"
# Latencies well inside their buckets, so the few microseconds of measuring do not move them.
FAST = 0.003  # (0.002, 0.005]
MEDIUM = 0.07  # (0.05, 0.1]
SLOW = 0.15  # (0.1, 0.2]
SLOWER = 0.3  # (0.2, 0.5]
TIMEOUT = 12.0  # above the highest finite bound, 10 s


class Pod:
    """One runtime process: its metrics live as long as it does."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = RequestMetrics(self.registry, MODEL)

    def serve(
        self, n: int, latency: float, code: int = 200, protocol: str = "rest", model: str = MODEL
    ) -> Pod:
        for _ in range(n):
            self.metrics.started()
            self.metrics.finished(protocol, model, code, time.perf_counter() - latency)
        return self

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()


def expected_buckets(latencies: list[tuple[int, float]]) -> tuple[tuple[float, float], ...]:
    """Cumulative counts of ``(count, latency)`` groups at the runtime's bounds and +Inf."""
    bounds = [*LATENCY_BUCKETS, INF]
    return tuple((le, float(sum(n for n, s in latencies if s <= le))) for le in bounds)


def reference_quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float:
    """histogram_quantile's definition with numpy: find the bucket holding rank q*n, then
    interpolate linearly between its bounds (from 0 for the lowest), the highest finite bound
    for a rank in +Inf."""
    bounds = np.array([le for le, _ in buckets])
    counts = np.array([c for _, c in buckets])
    rank = q * counts[-1]
    b = int(np.searchsorted(counts[:-1], rank, side="left"))
    if b == len(counts) - 1:
        return float(bounds[-2])
    lower = (0.0, 0.0) if b == 0 else (counts[b - 1], bounds[b - 1])
    return float(np.interp(rank, [lower[0], counts[b]], [lower[1], bounds[b]]))


def spec(**fields: float | None) -> AnalysisSpec:
    values: dict[str, float | None] = {
        "min_success_rate": 0.99,
        "max_p99_latency_ms": 250,
        "min_requests": 20,
    }
    values.update(fields)
    return AnalysisSpec.model_validate(values)


# --- parsing -----------------------------------------------------------------------------


def test_parse_sums_every_model_protocol_and_code() -> None:
    pod = Pod()
    pod.serve(40, FAST).serve(7, MEDIUM, protocol="grpc").serve(3, SLOWER, code=503)
    pod.serve(2, FAST, code=500, protocol="grpc").serve(5, FAST, code=404, model="other")
    pod.serve(1, TIMEOUT, code=499)

    snapshot = parse_metrics(pod.scrape())

    assert snapshot.requests == 58
    assert snapshot.errors == 5
    assert snapshot.buckets == expected_buckets(
        [(40, FAST), (7, MEDIUM), (3, SLOWER), (2, FAST), (5, FAST), (1, TIMEOUT)]
    )


def test_a_pod_without_requests_gives_an_empty_snapshot() -> None:
    assert parse_metrics(Pod().scrape()) == PodSnapshot(0, 0, ())
    assert parse_metrics("") == PodSnapshot(0, 0, ())
    other = CollectorRegistry()
    Counter("other_requests", "Not ours.", registry=other).inc(5)
    assert parse_metrics(generate_latest(other).decode()) == PodSnapshot(0, 0, ())


def test_series_with_different_bounds_are_summed_aligned_by_le() -> None:
    text = (
        "# TYPE modelship_request_duration_seconds histogram\n"
        'modelship_request_duration_seconds_bucket{le="0.1",protocol="rest"} 2\n'
        'modelship_request_duration_seconds_bucket{le="+Inf",protocol="rest"} 3\n'
        'modelship_request_duration_seconds_bucket{le="0.2",protocol="grpc"} 5\n'
        'modelship_request_duration_seconds_bucket{le="+Inf",protocol="grpc"} 6\n'
    )
    assert parse_metrics(text).buckets == ((0.1, 2.0), (0.2, 7.0), (INF, 9.0))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('modelship_requests_total{code="200"', "malformed /metrics text"),
        ("# TYPE\n", "malformed /metrics text"),
        ('modelship_requests_total{code="ok",model="m"} 1', r'code="ok".*HTTP status'),
        ('modelship_requests_total{model="m"} 1', "code label"),
        ('modelship_requests_total{code="200"} NaN', "not a count"),
        ('modelship_requests_total{code="200"} -1', "not a count"),
        ('modelship_request_duration_seconds_bucket{le="fast"} 1', "le label"),
        ('modelship_request_duration_seconds_bucket{le="0.1",model="m"} 1', r"\+Inf bucket"),
    ],
)
def test_malformed_text_says_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_metrics(text)


# --- deltas ------------------------------------------------------------------------------


def test_a_new_pods_first_scrape_is_only_a_baseline() -> None:
    pod = Pod().serve(100, FAST, code=500)
    assert delta(None, parse_metrics(pod.scrape())) == Sample()


def test_delta_is_what_happened_between_two_scrapes() -> None:
    pod = Pod().serve(100, FAST).serve(10, SLOWER, code=502)
    before = parse_metrics(pod.scrape())
    pod.serve(30, MEDIUM, protocol="grpc").serve(4, FAST, code=503)

    sample = delta(before, parse_metrics(pod.scrape()))

    assert sample == Sample(34, 4, expected_buckets([(30, MEDIUM), (4, FAST)]))


def test_the_first_request_after_the_baseline_is_not_a_reset() -> None:
    # The histogram has no series before a pod's first request.
    pod = Pod()
    before = parse_metrics(pod.scrape())
    pod.serve(3, SLOW)
    assert delta(before, parse_metrics(pod.scrape())) == Sample(3, 0, expected_buckets([(3, SLOW)]))


def test_a_restarted_pod_counts_from_zero() -> None:
    before = parse_metrics(Pod().serve(500, FAST).serve(20, SLOW, code=500).scrape())
    restarted = Pod().serve(12, SLOWER).serve(2, FAST, code=503)

    sample = delta(before, parse_metrics(restarted.scrape()))

    assert sample == Sample(14, 2, expected_buckets([(12, SLOWER), (2, FAST)]))


def test_a_reset_seen_in_one_bucket_alone_is_a_reset() -> None:
    before = PodSnapshot(10, 0, ((0.1, 8.0), (INF, 10.0)))
    current = PodSnapshot(12, 0, ((0.1, 3.0), (INF, 12.0)))
    assert delta(before, current) == Sample(12, 0, ((0.1, 3.0), (INF, 12.0)))
    assert delta(before, PodSnapshot(9, 0, before.buckets)).requests == 9
    assert delta(PodSnapshot(10, 4), PodSnapshot(10, 1)).errors == 1


# --- accumulation ------------------------------------------------------------------------


def test_accumulator_sums_deltas_over_the_pods_of_a_revision() -> None:
    canary_a, canary_b, stable = Pod(), Pod().serve(50, TIMEOUT), Pod().serve(900, FAST)
    acc = Accumulator()
    assert not acc.baselined({"a", "b", "s"})
    for revision, name, pod in (("c", "a", canary_a), ("c", "b", canary_b), ("s", "s", stable)):
        assert not acc.observe(revision, name, parse_metrics(pod.scrape()))
    assert acc.baselined({"a", "b", "s"})
    assert acc.sample("c") == Sample()

    canary_a.serve(10, FAST).serve(2, SLOW, code=500, protocol="grpc")
    canary_b.serve(5, SLOWER, protocol="grpc")
    stable.serve(40, MEDIUM).serve(1, FAST, code=503)
    for revision, name, pod in (("c", "a", canary_a), ("c", "b", canary_b), ("s", "s", stable)):
        assert acc.observe(revision, name, parse_metrics(pod.scrape()))

    assert acc.sample("c") == Sample(17, 2, expected_buckets([(10, FAST), (2, SLOW), (5, SLOWER)]))
    assert acc.sample("s") == Sample(41, 1, expected_buckets([(40, MEDIUM), (1, FAST)]))
    assert acc.sample("unknown") == Sample()


def test_reset_starts_a_new_interval_from_the_last_snapshots() -> None:
    pod = Pod().serve(10, FAST)
    acc = Accumulator()
    acc.observe("c", "a", parse_metrics(pod.scrape()))
    acc.observe("c", "a", parse_metrics(pod.serve(5, FAST).scrape()))
    assert acc.sample("c").requests == 5

    acc.reset()

    assert acc.sample("c") == Sample()
    assert acc.baselined({"a"})
    assert acc.observe("c", "a", parse_metrics(pod.serve(3, SLOW).scrape()))
    assert acc.sample("c") == Sample(3, 0, expected_buckets([(3, SLOW)]))


def test_intervals_add_up_across_a_restart() -> None:
    acc = Accumulator()
    pod = Pod().serve(100, FAST)
    acc.observe("c", "a", parse_metrics(pod.scrape()))
    acc.observe("c", "a", parse_metrics(pod.serve(8, FAST).scrape()))
    restarted = Pod().serve(4, SLOWER, code=500)
    assert acc.observe("c", "a", parse_metrics(restarted.scrape()))
    assert acc.sample("c") == Sample(12, 4, expected_buckets([(8, FAST), (4, SLOWER)]))


def test_a_pod_that_went_away_needs_a_new_baseline() -> None:
    acc = Accumulator()
    pod = Pod().serve(10, FAST)
    acc.observe("c", "a", parse_metrics(pod.scrape()))
    acc.observe("c", "b", parse_metrics(Pod().scrape()))

    acc.forget_missing({"b"})

    assert not acc.baselined({"a"})
    assert acc.baselined({"b"})
    assert not acc.observe("c", "a", parse_metrics(pod.serve(7, FAST).scrape()))
    assert acc.sample("c") == Sample()


# --- samples and quantiles ---------------------------------------------------------------


def test_samples_add_aligned_by_le() -> None:
    a = Sample(3, 1, ((0.1, 2.0), (INF, 3.0)))
    b = Sample(5, 0, ((0.2, 5.0), (INF, 5.0)))
    assert a + b == Sample(8, 1, ((0.1, 2.0), (0.2, 7.0), (INF, 8.0)))
    assert a + Sample() == a
    assert Sample() + Sample() == Sample()


def test_rates() -> None:
    sample = Sample(200, 3)
    assert sample.success_rate == pytest.approx(0.985)
    assert sample.error_rate == pytest.approx(0.015)
    assert Sample().success_rate is None
    assert Sample().error_rate is None


@pytest.mark.parametrize(
    "groups",
    [
        [(970, FAST), (30, SLOWER)],
        [(400, FAST), (300, MEDIUM), (250, SLOW), (49, SLOWER), (1, TIMEOUT)],
        [(1, SLOW)],
        [(13, MEDIUM), (7, SLOW), (2, 1.5), (1, 7.0)],
    ],
)
@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_quantile_matches_histogram_quantile(groups: list[tuple[int, float]], q: float) -> None:
    pod = Pod()
    for n, latency in groups:
        pod.serve(n, latency)
    sample = delta(PodSnapshot(), parse_metrics(pod.scrape()))
    if q == 0:
        # Rank 0 falls in the lowest bucket, which is empty here: PromQL computes 0/0.
        assert math.isnan(sample.quantile(q) or 0.0)
        return
    assert sample.quantile(q) == pytest.approx(reference_quantile(q, sample.buckets), rel=1e-12)


def test_p99_by_hand() -> None:
    sample = Sample(100, 0, ((0.005, 50.0), (0.01, 90.0), (0.02, 100.0), (INF, 100.0)))
    # rank 99 is the 9th of the 10 observations in (10 ms, 20 ms]
    assert sample.p99_ms == pytest.approx(19.0)
    assert sample.quantile(0.5) == pytest.approx(0.005)
    assert sample.quantile(0.7) == pytest.approx(0.0075)


def test_the_lowest_bucket_starts_at_zero() -> None:
    sample = delta(PodSnapshot(), parse_metrics(Pod().serve(10, 0.0001).scrape()))
    assert sample.quantile(0.5) == pytest.approx(0.00025)


def test_a_lowest_bucket_at_or_below_zero_gives_its_bound() -> None:
    assert Sample(10, 0, ((0.0, 5.0), (1.0, 10.0), (INF, 10.0))).quantile(0.2) == 0.0
    assert Sample(10, 0, ((-1.0, 5.0), (1.0, 10.0), (INF, 10.0))).quantile(0.2) == -1.0


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    pod = Pod().serve(90, FAST).serve(10, TIMEOUT)
    sample = delta(PodSnapshot(), parse_metrics(pod.scrape()))
    assert sample.quantile(0.99) == LATENCY_BUCKETS[-1]
    assert sample.p99_ms == LATENCY_BUCKETS[-1] * 1000
    assert sample.quantile(0.5) == pytest.approx(reference_quantile(0.5, sample.buckets))


def test_quantile_without_data() -> None:
    assert Sample().quantile(0.99) is None
    assert Sample().p99_ms is None
    assert Sample(0, 0, ((0.1, 0.0), (INF, 0.0))).quantile(0.5) is None
    assert Sample(5, 0, ((INF, 5.0),)).quantile(0.5) is None
    assert Sample(5, 0, ((0.1, 2.0), (1.0, 5.0))).quantile(0.5) is None


def test_quantile_edge_cases_as_promql() -> None:
    sample = Sample(10, 0, ((0.1, 5.0), (0.2, 3.0), (0.4, 8.0), (INF, 10.0)))
    # The non-monotonic 0.2 bucket is read as 5: rank 6 is the 1st of 3 in (0.2, 0.4].
    assert sample.quantile(0.6) == pytest.approx(0.2 + 0.2 / 3)
    assert sample.quantile(-0.1) == -INF
    assert sample.quantile(1.1) == INF
    assert math.isnan(sample.quantile(math.nan) or 0.0)


# --- judging -----------------------------------------------------------------------------


def recorded_interval(*groups: tuple[int, float, int]) -> Sample:
    """A revision's sample from two scrapes of one pod around ``(count, latency, code)`` groups."""
    pod = Pod().serve(1000, FAST)  # served before the interval: in the baseline only
    acc = Accumulator()
    acc.observe("r", "pod", parse_metrics(pod.scrape()))
    for n, latency, code in groups:
        pod.serve(n, latency, code)
    acc.observe("r", "pod", parse_metrics(pod.scrape()))
    return acc.sample("r")


# 1 000 requests: rank 990 is the 20th of the 30 in (200 ms, 500 ms]: p99 = 400 ms.
CANARY_SLOW = ((970, FAST, 200), (30, SLOWER, 200))
# 1 000 requests: rank 990 is the 10th of the 20 in (100 ms, 200 ms]: p99 = 150 ms.
STABLE = ((980, MEDIUM, 200), (20, SLOW, 200))


def test_too_few_canary_requests_is_inconclusive() -> None:
    canary = recorded_interval((12, SLOWER, 500))
    result = judge(canary, recorded_interval(*STABLE), spec(), NOW, 30)

    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert result.checks == []
    assert result.message == "12 requests < minRequests 20 in 30 s"
    assert (result.requests, result.stable_requests) == (12, 1000)
    assert (result.time, result.interval_seconds) == (NOW, 30)


def test_thousands_are_separated_by_a_space() -> None:
    canary = Sample(999_999, 0)
    result = judge(canary, Sample(), spec(min_requests=1_000_000), NOW, 45.5)
    assert result.message == "999 999 requests < minRequests 1 000 000 in 45.5 s"


def test_a_healthy_canary_passes() -> None:
    canary = recorded_interval((1825, FAST, 200), (5, FAST, 503))
    result = judge(canary, recorded_interval(*STABLE), spec(), NOW, 30)

    assert result.verdict == AnalysisVerdict.PASS
    assert [c.name for c in result.checks] == ["successRate", "p99LatencyMs"]
    assert all(c.verdict == AnalysisVerdict.PASS for c in result.checks)
    success, p99 = result.checks
    assert success.value == pytest.approx(1825 / 1830)
    assert (success.threshold, success.samples) == (0.99, 1830)
    assert success.message == "success rate 99.73% >= 99.00% on 1 830 requests in 30 s"
    # rank 1811.7 in (2 ms, 5 ms], which holds all 1 830: 2 + 3 * 1811.7 / 1830 ms
    assert p99.value == pytest.approx(2 + 3 * 1811.7 / 1830)
    assert (p99.threshold, p99.samples) == (250, 1830)
    assert p99.message == "p99 4.97 ms <= 250 ms on 1 830 requests in 30 s"
    assert result.message == "all 2 checks passed on 1 830 requests in 30 s"
    assert (result.requests, result.stable_requests) == (1830, 1000)


def test_a_low_success_rate_fails() -> None:
    canary = recorded_interval((1777, FAST, 200), (50, FAST, 500), (3, FAST, 504))
    result = judge(canary, Sample(), spec(), NOW, 30)

    assert result.verdict == AnalysisVerdict.FAIL
    check = result.checks[0]
    assert (check.name, check.verdict) == ("successRate", AnalysisVerdict.FAIL)
    assert check.value == pytest.approx(1777 / 1830)
    assert check.message == "success rate 97.10% < 99.00% on 1 830 requests in 30 s"
    assert result.message == check.message


def test_client_errors_are_not_failures_and_the_threshold_itself_passes() -> None:
    canary = recorded_interval((90, FAST, 200), (9, FAST, 404), (1, FAST, 500))
    result = judge(canary, Sample(), spec(), NOW, 30)
    assert result.checks[0].value == pytest.approx(0.99)
    assert result.verdict == AnalysisVerdict.PASS


def test_a_slow_canary_fails() -> None:
    result = judge(recorded_interval(*CANARY_SLOW), Sample(), spec(), NOW, 30)

    assert result.verdict == AnalysisVerdict.FAIL
    check = result.checks[1]
    assert (check.name, check.verdict) == ("p99LatencyMs", AnalysisVerdict.FAIL)
    assert check.value == pytest.approx(400)
    assert check.message == "p99 400 ms > 250 ms on 1 000 requests in 30 s"
    assert result.message == check.message


def test_a_canary_without_latency_data_has_an_inconclusive_p99() -> None:
    result = judge(Sample(100, 0), Sample(), spec(), NOW, 30)
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    check = result.checks[1]
    assert (check.name, check.verdict, check.value) == (
        "p99LatencyMs",
        AnalysisVerdict.INCONCLUSIVE,
        None,
    )
    assert result.message == check.message == "no p99 latency on 100 requests in 30 s"


def test_relative_latency() -> None:
    canary, stable = recorded_interval(*CANARY_SLOW), recorded_interval(*STABLE)

    failing = judge(
        canary, stable, spec(max_p99_latency_ms=1000, max_p99_latency_ratio=1.2), NOW, 30
    )
    passing = judge(canary, stable, spec(max_p99_latency_ms=1000, max_p99_latency_ratio=3), NOW, 30)

    assert failing.verdict == AnalysisVerdict.FAIL
    ratio = failing.checks[2]
    assert (ratio.name, ratio.verdict, ratio.threshold) == (
        "p99LatencyRatio",
        AnalysisVerdict.FAIL,
        1.2,
    )
    assert ratio.value == pytest.approx(400 / 150)
    assert ratio.samples == 2000
    assert ratio.message == "p99 2.67x stable (400 ms vs 150 ms) > 1.20x"
    assert failing.message == ratio.message
    assert passing.verdict == AnalysisVerdict.PASS
    assert passing.checks[2].message == "p99 2.67x stable (400 ms vs 150 ms) <= 3.00x"


def test_relative_error_rate() -> None:
    canary = recorded_interval((975, FAST, 200), (25, FAST, 500))
    stable = recorded_interval((996, FAST, 200), (4, FAST, 503))
    analysis = spec(min_success_rate=0.9, max_error_rate_increase=0.01)

    result = judge(canary, stable, analysis, NOW, 30)

    assert result.verdict == AnalysisVerdict.FAIL
    assert [c.name for c in result.checks] == ["successRate", "p99LatencyMs", "errorRateIncrease"]
    check = result.checks[2]
    assert check.verdict == AnalysisVerdict.FAIL
    assert check.value == pytest.approx(0.025 - 0.004)
    assert (check.threshold, check.samples) == (0.01, 2000)
    assert check.message == "error rate +2.10 pp over stable (2.50% vs 0.40%) > 1.00 pp"
    assert result.message == check.message

    tolerant = judge(
        canary, stable, spec(min_success_rate=0.9, max_error_rate_increase=0.03), NOW, 30
    )
    assert tolerant.verdict == AnalysisVerdict.PASS
    assert tolerant.checks[2].message.endswith("<= 3.00 pp")


def test_a_thin_stable_side_makes_relative_checks_inconclusive() -> None:
    canary = recorded_interval(*CANARY_SLOW)
    stable = recorded_interval((5, FAST, 200))
    analysis = spec(max_p99_latency_ms=1000, max_p99_latency_ratio=1.2, max_error_rate_increase=0)

    result = judge(canary, stable, analysis, NOW, 30)

    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    relative = result.checks[2:]
    assert [(c.name, c.verdict, c.value) for c in relative] == [
        ("p99LatencyRatio", AnalysisVerdict.INCONCLUSIVE, None),
        ("errorRateIncrease", AnalysisVerdict.INCONCLUSIVE, None),
    ]
    assert all("stable has 5 requests < minRequests 20 in 30 s" in c.message for c in relative)
    assert result.message == "; ".join(c.message for c in relative)
    assert result.stable_requests == 5


def test_a_stable_side_without_latency_data_makes_the_ratio_inconclusive() -> None:
    canary = recorded_interval(*CANARY_SLOW)
    analysis = spec(max_p99_latency_ms=1000, max_p99_latency_ratio=1.2)
    result = judge(canary, Sample(500, 0), analysis, NOW, 30)
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert result.checks[2].verdict == AnalysisVerdict.INCONCLUSIVE
    assert "no stable p99" in result.checks[2].message


def test_any_failure_outweighs_inconclusive_checks_and_all_failures_are_said() -> None:
    canary = recorded_interval((950, FAST, 200), (20, FAST, 500), (30, SLOWER, 200))
    analysis = spec(max_p99_latency_ratio=1.2)

    result = judge(canary, Sample(3, 0), analysis, NOW, 30)

    assert [c.verdict for c in result.checks] == [
        AnalysisVerdict.FAIL,
        AnalysisVerdict.FAIL,
        AnalysisVerdict.INCONCLUSIVE,
    ]
    assert result.verdict == AnalysisVerdict.FAIL
    assert result.message == (
        "success rate 98.00% < 99.00% on 1 000 requests in 30 s; "
        "p99 400 ms > 250 ms on 1 000 requests in 30 s"
    )


def test_relative_checks_are_off_unless_configured() -> None:
    result = judge(recorded_interval(*CANARY_SLOW), Sample(), spec(max_p99_latency_ms=500), NOW, 30)
    assert [c.name for c in result.checks] == ["successRate", "p99LatencyMs"]
    assert result.verdict == AnalysisVerdict.PASS
