"""The arithmetic of canary analysis: from scraped /metrics texts, or from Prometheus' answers,
to a verdict. No I/O.

A pod's /metrics holds counters cumulative since the pod started, so what a revision did in an
interval is the sum over its pods of the difference between two scrapes of each pod. The runtime
exports ``modelship_requests_total{model,revision,protocol,code}`` and the histogram
``modelship_request_duration_seconds{model,revision,protocol}`` (see
modelship_runtime.serve.metrics); a pod's own series are summed over every label but ``le``.
Both sources end in :func:`judge`, which holds every threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PrometheusSample

from modelship.api.v1alpha1 import (
    AnalysisMetric,
    AnalysisResult,
    AnalysisSpec,
    AnalysisVerdict,
    CheckResult,
)
from modelship.domain import promql
from modelship.domain.promql import Answer, Query

REQUESTS_SAMPLE = "modelship_requests_total"
DURATION_BUCKET_SAMPLE = "modelship_request_duration_seconds_bucket"

Buckets = tuple[tuple[float, float], ...]
"""Cumulative histogram buckets: (upper bound ``le`` in seconds, count), ascending bounds."""


def _count_at(buckets: Buckets, le: float) -> float:
    # A cumulative count holds at every bound up to the next one: nothing is known in between.
    count = 0.0
    for bound, value in sorted(buckets):
        if bound > le:
            break
        count = value
    return count


def _aligned(a: Buckets, b: Buckets) -> list[tuple[float, float, float]]:
    """(le, count in a, count in b) on the union of both sides' bounds, ascending."""
    bounds = sorted({le for le, _ in a} | {le for le, _ in b})
    return [(le, _count_at(a, le), _count_at(b, le)) for le in bounds]


@dataclass(frozen=True)
class PodSnapshot:
    """Cumulative values of one scrape of one pod, summed over every model and protocol."""

    requests: float = 0.0
    errors: float = 0.0
    """Requests answered with a code >= 500."""
    buckets: Buckets = ()


@dataclass(frozen=True)
class Sample:
    """What happened in an interval: request and error counts, latency bucket increases."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: Buckets = ()

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple((le, a + b) for le, a, b in _aligned(self.buckets, other.buckets)),
        )

    @property
    def success_rate(self) -> float | None:
        """Share of responses that were not 5xx; None without requests."""
        if self.requests <= 0:
            return None
        return (self.requests - self.errors) / self.requests

    @property
    def error_rate(self) -> float | None:
        """Share of 5xx responses; None without requests."""
        if self.requests <= 0:
            return None
        return self.errors / self.requests

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the latency in seconds, as PromQL's ``histogram_quantile``.

        None where PromQL yields NaN for want of data: no observations, fewer than two buckets
        or no +Inf bucket.
        """
        if math.isnan(q):
            return math.nan
        if q < 0:
            return -math.inf
        if q > 1:
            return math.inf
        buckets = sorted(self.buckets)
        if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
            return None
        bounds = [le for le, _ in buckets]
        # A bucket below its predecessor (a race between increments) is read as its predecessor.
        counts = list(accumulate((count for _, count in buckets), max))
        observations = counts[-1]
        if observations == 0:
            return None
        rank = q * observations
        b = next((i for i, count in enumerate(counts[:-1]) if count >= rank), len(counts) - 1)
        if b == len(counts) - 1:
            return bounds[-2]
        if b == 0 and bounds[0] <= 0:
            return bounds[0]
        start, end, count = 0.0, bounds[b], counts[b]
        if b > 0:
            start = bounds[b - 1]
            count -= counts[b - 1]
            rank -= counts[b - 1]
        if count == 0:
            # Only q == 0 over an empty lowest bucket gets here; PromQL divides 0 by 0.
            return math.nan
        return start + (end - start) * (rank / count)

    @property
    def p99_ms(self) -> float | None:
        p99 = self.quantile(0.99)
        return None if p99 is None else p99 * 1000


def _series(sample: PrometheusSample) -> str:
    labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}"


def _count(sample: PrometheusSample) -> float:
    value = float(sample.value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{_series(sample)} is {value}, not a count")
    return value


def _code(sample: PrometheusSample) -> int:
    try:
        return int(sample.labels["code"])
    except (KeyError, ValueError):
        raise ValueError(f"{_series(sample)} has no HTTP status in its code label") from None


def _le(sample: PrometheusSample) -> float:
    try:
        le = float(sample.labels["le"])
    except (KeyError, ValueError):
        raise ValueError(f"{_series(sample)} has no numeric le label") from None
    if math.isnan(le):
        raise ValueError(f"{_series(sample)} has no numeric le label")
    return le


def parse_metrics(text: str) -> PodSnapshot:
    """The request counts and latency buckets in one /metrics text (Prometheus text format).

    Raises ValueError, saying what is wrong, for text that does not parse or whose request
    metrics are not counts.
    """
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as error:
        raise ValueError(f"malformed /metrics text: {error or 'unparsable line'}") from None
    requests = errors = 0.0
    series: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for sample in samples:
        if sample.name == REQUESTS_SAMPLE:
            value = _count(sample)
            requests += value
            if _code(sample) >= 500:
                errors += value
        elif sample.name == DURATION_BUCKET_SAMPLE:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            series.setdefault(key, {})[_le(sample)] = _count(sample)
    total = Sample()
    for key, buckets in series.items():
        if math.inf not in buckets:
            labels = ",".join(f'{k}="{v}"' for k, v in key)
            raise ValueError(f"{DURATION_BUCKET_SAMPLE}{{{labels}}} has no +Inf bucket")
        total += Sample(buckets=tuple(sorted(buckets.items())))
    return PodSnapshot(requests, errors, total.buckets)


def delta(previous: PodSnapshot | None, current: PodSnapshot) -> Sample:
    """What a pod did between two scrapes.

    A pod's first scrape (no previous) is only a baseline: its counters hold traffic from before
    the interval. A counter that went down means the pod restarted, and, as Prometheus'
    ``increase()`` reads a reset, everything counted since is the current value.
    """
    if previous is None:
        return Sample()
    buckets = _aligned(current.buckets, previous.buckets)
    if (
        current.requests < previous.requests
        or current.errors < previous.errors
        or any(now < before for _, now, before in buckets)
    ):
        return Sample(current.requests, current.errors, current.buckets)
    return Sample(
        current.requests - previous.requests,
        current.errors - previous.errors,
        tuple((le, now - before) for le, now, before in buckets),
    )


class Accumulator:
    """The last snapshot of each pod, and each revision's traffic since :meth:`reset`."""

    def __init__(self) -> None:
        self._snapshots: dict[str, PodSnapshot] = {}
        self._samples: dict[str, Sample] = {}

    def observe(self, revision: str, pod: str, snapshot: PodSnapshot) -> bool:
        """Add what the pod did since its last snapshot; False when this was only its baseline."""
        previous = self._snapshots.get(pod)
        self._snapshots[pod] = snapshot
        if previous is None:
            return False
        self._samples[revision] = self.sample(revision) + delta(previous, snapshot)
        return True

    def forget_missing(self, pods: set[str]) -> None:
        """Drop the snapshots of pods not in ``pods``: were one to return, it needs a baseline."""
        for pod in self._snapshots.keys() - pods:
            del self._snapshots[pod]

    def sample(self, revision: str) -> Sample:
        return self._samples.get(revision, Sample())

    def reset(self) -> None:
        """Start a new interval; the snapshots stay as the baselines of the next deltas."""
        self._samples.clear()

    def baselined(self, pods: Iterable[str]) -> bool:
        return all(pod in self._snapshots for pod in pods)


class Traffic(Protocol):
    """What the checks read of one revision's traffic in an interval, from either source."""

    @property
    def requests(self) -> float: ...
    @property
    def success_rate(self) -> float | None: ...
    @property
    def error_rate(self) -> float | None: ...
    @property
    def p99_ms(self) -> float | None: ...


@dataclass(frozen=True)
class Measured:
    """A revision's traffic as Prometheus measured it (None: no data)."""

    requests: float = 0.0
    success_rate: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return None if self.success_rate is None else 1 - self.success_rate


def _number(value: float, decimals: int = 0) -> str:
    text = f"{value:,.{decimals}f}".replace(",", " ")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _ms(value: float) -> str:
    decimals = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{_number(value, decimals)} ms"


def _on(requests: float, interval_seconds: float) -> str:
    return f"on {_number(requests)} requests in {_number(interval_seconds, 1)} s"


def _check(
    name: str, value: float, threshold: float, failed: bool, samples: float, message: str
) -> CheckResult:
    return CheckResult(
        name=name,
        verdict=AnalysisVerdict.FAIL if failed else AnalysisVerdict.PASS,
        value=value,
        threshold=threshold,
        samples=round(samples),
        message=message,
    )


def _inconclusive(name: str, threshold: float, samples: float, message: str) -> CheckResult:
    return CheckResult(
        name=name,
        verdict=AnalysisVerdict.INCONCLUSIVE,
        threshold=threshold,
        samples=round(samples),
        message=message,
    )


def _absolute_checks(
    canary: Traffic, analysis: AnalysisSpec, on: str, failed: Mapping[str, str]
) -> list[CheckResult]:
    checks = []
    name, success_rate, limit = "successRate", canary.success_rate, analysis.min_success_rate
    if name in failed or success_rate is None:
        message = failed.get(name) or f"no success rate {on}"
        checks.append(_inconclusive(name, limit, canary.requests, message))
    else:
        below = success_rate < limit
        message = f"success rate {success_rate:.2%} {'<' if below else '>='} {limit:.2%} {on}"
        checks.append(_check(name, success_rate, limit, below, canary.requests, message))
    name, p99, p99_limit = "p99LatencyMs", canary.p99_ms, analysis.max_p99_latency_ms
    if name in failed or p99 is None:
        message = failed.get(name) or f"no p99 latency {on}"
        checks.append(_inconclusive(name, p99_limit, canary.requests, message))
    else:
        above = p99 > p99_limit
        message = f"p99 {_ms(p99)} {'>' if above else '<='} {_ms(p99_limit)} {on}"
        checks.append(_check(name, p99, p99_limit, above, canary.requests, message))
    return checks


def _relative_checks(
    canary: Traffic,
    stable: Traffic,
    analysis: AnalysisSpec,
    interval_seconds: float,
    failed: Mapping[str, str],
) -> list[CheckResult]:
    both = canary.requests + stable.requests
    thin = stable.requests < analysis.min_requests
    thin_message = (
        f"stable has {_number(stable.requests)} requests < minRequests "
        f"{_number(analysis.min_requests)} in {_number(interval_seconds, 1)} s"
    )
    checks = []
    ratio_limit = analysis.max_p99_latency_ratio
    if ratio_limit is not None:
        name = "p99LatencyRatio"
        canary_p99, stable_p99 = canary.p99_ms, stable.p99_ms
        if name in failed:
            checks.append(_inconclusive(name, ratio_limit, both, failed[name]))
        elif thin:
            checks.append(_inconclusive(name, ratio_limit, both, f"p99 ratio: {thin_message}"))
        elif canary_p99 is None or stable_p99 is None or stable_p99 <= 0:
            side = "canary" if canary_p99 is None else "stable"
            message = f"p99 ratio: no {side} p99 {_on(both, interval_seconds)}"
            checks.append(_inconclusive(name, ratio_limit, both, message))
        else:
            ratio = canary_p99 / stable_p99
            above = ratio > ratio_limit
            message = (
                f"p99 {ratio:.2f}x stable ({_ms(canary_p99)} vs {_ms(stable_p99)}) "
                f"{'>' if above else '<='} {ratio_limit:.2f}x"
            )
            checks.append(_check(name, ratio, ratio_limit, above, both, message))
    increase_limit = analysis.max_error_rate_increase
    if increase_limit is not None:
        name = "errorRateIncrease"
        canary_rate, stable_rate = canary.error_rate, stable.error_rate
        if name in failed:
            checks.append(_inconclusive(name, increase_limit, both, failed[name]))
        elif thin or canary_rate is None or stable_rate is None:
            message = f"error rate increase: {thin_message}"
            checks.append(_inconclusive(name, increase_limit, both, message))
        else:
            increase = canary_rate - stable_rate
            above = increase > increase_limit
            message = (
                f"error rate {increase * 100:+.2f} pp over stable "
                f"({canary_rate:.2%} vs {stable_rate:.2%}) {'>' if above else '<='} "
                f"{increase_limit * 100:.2f} pp"
            )
            checks.append(_check(name, increase, increase_limit, above, both, message))
    return checks


def _range(metric: AnalysisMetric) -> str:
    if metric.min is not None and metric.max is not None:
        return f"within {metric.min:.4g}..{metric.max:.4g}"
    return f">= {metric.min:.4g}" if metric.min is not None else f"<= {metric.max:.4g}"


def _metric_check(
    metric: AnalysisMetric, value: float | None, failure: str | None, requests: float
) -> CheckResult:
    name = metric.name
    # The API's rules ask for min or max: the one set is the threshold while the value is in.
    threshold = next((b for b in (metric.min, metric.max) if b is not None), 0.0)
    if failure is not None or value is None:
        message = failure or f"prometheus query {name} returned no data"
        return _inconclusive(name, threshold, requests, message)
    if metric.min is not None and value < metric.min:
        message = f"{name} {value:.4g} < {metric.min:.4g} (must be {_range(metric)})"
        return _check(name, value, metric.min, True, requests, message)
    if metric.max is not None and value > metric.max:
        message = f"{name} {value:.4g} > {metric.max:.4g} (must be {_range(metric)})"
        return _check(name, value, metric.max, True, requests, message)
    return _check(name, value, threshold, False, requests, f"{name} {value:.4g} {_range(metric)}")


def judge(
    canary: Traffic,
    stable: Traffic,
    analysis: AnalysisSpec,
    time: str,
    interval_seconds: float,
    values: Mapping[str, float | None] | None = None,
    failed: Mapping[str, str] | None = None,
) -> AnalysisResult:
    """The verdict on the canary's traffic in an interval, beside the stable's in the same one.

    Too little canary traffic is Inconclusive, never a failure. A relative check whose stable
    side has too little traffic (or no latency data) is Inconclusive too. The samples of a
    relative check count the requests of both revisions. ``values`` holds the value of each of
    ``analysis.metrics`` (None: no data); ``failed`` says, by check name, why a check could not
    be measured (a query that failed): such a check is Inconclusive with that message, so a
    failure to measure never passes.
    """
    failed = failed or {}
    on = _on(canary.requests, interval_seconds)
    checks: list[CheckResult] = []
    if "requests" in failed or canary.requests < analysis.min_requests:
        verdict = AnalysisVerdict.INCONCLUSIVE
        message = failed.get("requests") or (
            f"{_number(canary.requests)} requests < minRequests {_number(analysis.min_requests)} "
            f"in {_number(interval_seconds, 1)} s"
        )
        if "requests" in failed:
            checks = [_inconclusive("requests", analysis.min_requests, 0, message)]
        # Nothing is judged, but a query that failed is said all the same.
        message = "; ".join(dict.fromkeys([message, *failed.values()]))
    else:
        checks = _absolute_checks(canary, analysis, on, failed)
        checks += _relative_checks(canary, stable, analysis, interval_seconds, failed)
        checks += [
            _metric_check(m, (values or {}).get(m.name), failed.get(m.name), canary.requests)
            for m in analysis.metrics or ()
        ]
        verdict, message = AnalysisVerdict.PASS, f"all {len(checks)} checks passed {on}"
        for worst in (AnalysisVerdict.FAIL, AnalysisVerdict.INCONCLUSIVE):
            matching = [check.message for check in checks if check.verdict == worst]
            if matching:
                verdict, message = worst, "; ".join(dict.fromkeys(matching))
                break
    return AnalysisResult(
        time=time,
        verdict=verdict,
        interval_seconds=interval_seconds,
        requests=round(canary.requests),
        stable_requests=round(stable.requests),
        checks=checks,
        message=message,
    )


def judge_answers(
    queries: Sequence[Query],
    answers: Mapping[str, Answer],
    analysis: AnalysisSpec,
    time: str,
    interval_seconds: float,
) -> AnalysisResult:
    """The verdict from Prometheus' answers to :func:`~modelship.domain.promql.analysis_queries`.

    A query without an answer, or whose answer is an error, leaves the checks that read it
    Inconclusive with "prometheus query <name> failed: <error>"; no data is Inconclusive too.
    """
    failed: dict[str, list[str]] = {}
    for query in queries:
        error = answers.get(query.name, Answer(error="no answer")).error
        if error is not None:
            for check in query.checks:
                failed.setdefault(check, []).append(
                    f"prometheus query {query.name} failed: {error}"
                )

    def value(name: str) -> float | None:
        answer = answers.get(name)
        return None if answer is None else answer.value

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000

    canary = Measured(
        value(promql.CANARY_REQUESTS) or 0.0,
        value(promql.CANARY_SUCCESS_RATE),
        ms(value(promql.CANARY_P99)),
    )
    stable = Measured(
        value(promql.STABLE_REQUESTS) or 0.0,
        value(promql.STABLE_SUCCESS_RATE),
        ms(value(promql.STABLE_P99)),
    )
    result = judge(
        canary,
        stable,
        analysis,
        time,
        interval_seconds,
        values={m.name: value(m.name) for m in analysis.metrics or ()},
        failed={check: "; ".join(messages) for check, messages in failed.items()},
    )
    errors = sum(1 for q in queries if answers.get(q.name, Answer(error="x")).error is not None)
    result = result.model_copy(update={"errors": errors})
    no_series = value(promql.CANARY_REQUESTS) is None and "requests" not in failed
    if no_series:
        note = " (Prometheus has no modelship_requests_total series of the canary in that time)"
        result = result.model_copy(update={"message": result.message + note})
    return result
