"""The arithmetic of canary analysis: from scraped /metrics texts, or from Prometheus' answers,
to a verdict. No I/O.

A pod's /metrics holds counters cumulative since the pod started, so what a revision did in an
interval is the sum over its pods of the difference between two scrapes of each pod. The runtime
exports ``modelship_requests_total{model,revision,protocol,code}`` and the histogram
``modelship_request_duration_seconds{model,revision,protocol}`` (see
modelship_runtime.serve.metrics); a pod's own series are summed over every label but ``le``.
Both sources end in :func:`judge`, which holds every threshold.

Output-aware checks read what the stable's pods say about the canary's answers (they mirror
requests to it and replay their golden set; modelship_runtime.serve.mirror):
``modelship_mirror_requests_total{canary,source,outcome}``, the ``modelship_mirror_cosine``
histogram's sum and count and ``modelship_mirror_top1_{agreements,rows}_total``, each by the
canary's revision and the source (live or replay).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PrometheusSample
from pydantic import ValidationError

from modelship.api.v1alpha1 import (
    AccuracyMetric,
    AgreementCheck,
    AnalysisMetric,
    AnalysisResult,
    AnalysisSpec,
    AnalysisVerdict,
    CheckResult,
    MismatchExample,
    OutputDriftCheck,
    ReplayCheck,
)
from modelship.domain import promql
from modelship.domain.promql import Answer, Query

REQUESTS_SAMPLE = "modelship_requests_total"
DURATION_BUCKET_SAMPLE = "modelship_request_duration_seconds_bucket"
MIRROR_REQUESTS_SAMPLE = "modelship_mirror_requests_total"
MIRROR_COSINE_SUM_SAMPLE = "modelship_mirror_cosine_sum"
MIRROR_TOP1_AGREEMENTS_SAMPLE = "modelship_mirror_top1_agreements_total"
MIRROR_TOP1_ROWS_SAMPLE = "modelship_mirror_top1_rows_total"
MIRROR_LABELLED_SAMPLE = "modelship_mirror_labelled_rows_total"
MIRROR_CORRECT_SAMPLE = "modelship_mirror_correct_rows_total"
CORRECT_FIELDS = ("stable_correct", "canary_correct")
OUTPUT_PSI_SAMPLE = "modelship_mirror_output_psi"
OUTPUT_VALUES_SAMPLE = "modelship_mirror_output_values"
LIVE, REPLAY = "live", "replay"
"""The sources of compared requests: mirrored client requests, and the replayed golden set."""

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
class Agreements:
    """What the stable's pods compared of the canary's answers (cumulative, or an interval's)."""

    compared: float = 0.0
    failed: float = 0.0
    """Mirrored requests the canary did not answer comparably (error, timeout, bad reply)."""
    cosine_sum: float = 0.0
    top1_agreements: float = 0.0
    top1_rows: float = 0.0
    labelled: float = 0.0
    """Replayed rows with a label (a labelled golden set)."""
    stable_correct: float = 0.0
    canary_correct: float = 0.0

    def __add__(self, other: Agreements) -> Agreements:
        return Agreements(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def __sub__(self, other: Agreements) -> Agreements:
        return Agreements(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[float, ...]:
        return (
            self.compared, self.failed, self.cosine_sum, self.top1_agreements, self.top1_rows,
            self.labelled, self.stable_correct, self.canary_correct,
        )  # fmt: skip

    def accuracy(self, side: str) -> float | None:
        """Top-1 accuracy of one side (stable or canary) on the labelled rows; None without."""
        if self.labelled <= 0:
            return None
        correct = self.stable_correct if side == "stable" else self.canary_correct
        return correct / self.labelled

    @property
    def reset(self) -> bool:
        """A counter went down: the pod restarted."""
        return any(v < 0 for v in self._values())

    def value(self, metric: AccuracyMetric) -> float | None:
        """Mean cosine, or the top-1 agreement; None without samples."""
        if metric is AccuracyMetric.TOP1:
            return self.top1_agreements / self.top1_rows if self.top1_rows > 0 else None
        return self.cosine_sum / self.compared if self.compared > 0 else None


MirrorKey = tuple[str, str]
"""(canary revision, source)."""


def _add_mirrors(
    a: Mapping[MirrorKey, Agreements], b: Mapping[MirrorKey, Agreements]
) -> dict[MirrorKey, Agreements]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, Agreements()) + value
    return out


@dataclass(frozen=True)
class PodSnapshot:
    """Cumulative values of one scrape of one pod, summed over every model and protocol."""

    requests: float = 0.0
    errors: float = 0.0
    """Requests answered with a code >= 500."""
    buckets: Buckets = ()
    mirrors: Mapping[MirrorKey, Agreements] = field(default_factory=dict)
    drift: Mapping[MirrorKey, Drift] = field(default_factory=dict)
    """Gauges, read as they are now (not as deltas)."""


@dataclass(frozen=True)
class Drift:
    """A stable pod's output-drift gauges for one canary and source."""

    psi: float
    values: float
    """Output values per revision the PSI rests on."""


@dataclass(frozen=True)
class Sample:
    """What happened in an interval: request and error counts, latency bucket increases, and
    (stable pods) what they compared of a canary's answers."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: Buckets = ()
    mirrors: Mapping[MirrorKey, Agreements] = field(default_factory=dict)

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple((le, a + b) for le, a, b in _aligned(self.buckets, other.buckets)),
            _add_mirrors(self.mirrors, other.mirrors),
        )

    def agreements(self, canary: str, source: str) -> Agreements:
        return self.mirrors.get((canary, source), Agreements())

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
    mirrors: dict[MirrorKey, dict[str, float]] = {}
    gauges: dict[MirrorKey, dict[str, float]] = {}
    for sample in samples:
        if sample.name in _MIRROR_FIELDS:
            _add_mirror_sample(mirrors, sample)
        elif sample.name in (OUTPUT_PSI_SAMPLE, OUTPUT_VALUES_SAMPLE):
            pair = (sample.labels.get("canary", ""), sample.labels.get("source", LIVE))
            value = float(sample.value)
            if math.isfinite(value) and value >= 0:
                gauges.setdefault(pair, {})[sample.name] = value
        elif sample.name == REQUESTS_SAMPLE:
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
    agreements = {key: Agreements(**values) for key, values in mirrors.items()}
    drift = {
        key: Drift(g[OUTPUT_PSI_SAMPLE], g.get(OUTPUT_VALUES_SAMPLE, 0.0))
        for key, g in gauges.items()
        if OUTPUT_PSI_SAMPLE in g
    }
    return PodSnapshot(requests, errors, total.buckets, agreements, drift)


_MIRROR_FIELDS = {
    MIRROR_REQUESTS_SAMPLE: "",
    MIRROR_COSINE_SUM_SAMPLE: "cosine_sum",
    MIRROR_TOP1_AGREEMENTS_SAMPLE: "top1_agreements",
    MIRROR_TOP1_ROWS_SAMPLE: "top1_rows",
    MIRROR_LABELLED_SAMPLE: "labelled",
    MIRROR_CORRECT_SAMPLE: "",
}


def _add_mirror_sample(
    mirrors: dict[MirrorKey, dict[str, float]], sample: PrometheusSample
) -> None:
    key = (sample.labels.get("canary", ""), sample.labels.get("source", LIVE))
    name = _MIRROR_FIELDS[sample.name]
    if sample.name == MIRROR_CORRECT_SAMPLE:
        side = sample.labels.get("side", "")
        if side not in ("stable", "canary"):
            return
        name = f"{side}_correct"
    elif not name:
        name = sample.labels.get("outcome", "")
        if name not in ("compared", "failed"):
            return  # dropped: the stable's own queue was full, nothing about the canary
    values = mirrors.setdefault(key, {})
    values[name] = values.get(name, 0.0) + _count(sample)


def delta(previous: PodSnapshot | None, current: PodSnapshot) -> Sample:
    """What a pod did between two scrapes.

    A pod's first scrape (no previous) is only a baseline: its counters hold traffic from before
    the interval. A counter that went down means the pod restarted, and, as Prometheus'
    ``increase()`` reads a reset, everything counted since is the current value.
    """
    if previous is None:
        return Sample()
    mirrors = {
        key: now - previous.mirrors.get(key, Agreements()) for key, now in current.mirrors.items()
    }
    buckets = _aligned(current.buckets, previous.buckets)
    if (
        current.requests < previous.requests
        or current.errors < previous.errors
        or any(now < before for _, now, before in buckets)
        or any(m.reset for m in mirrors.values())
    ):
        return Sample(current.requests, current.errors, current.buckets, current.mirrors)
    return Sample(
        current.requests - previous.requests,
        current.errors - previous.errors,
        tuple((le, now - before) for le, now, before in buckets),
        mirrors,
    )


class Accumulator:
    """The last snapshot of each pod, and each revision's traffic since :meth:`reset`."""

    def __init__(self) -> None:
        self._snapshots: dict[str, PodSnapshot] = {}
        self._samples: dict[str, Sample] = {}
        self._revisions: dict[str, str] = {}

    def observe(self, revision: str, pod: str, snapshot: PodSnapshot) -> bool:
        """Add what the pod did since its last snapshot; False when this was only its baseline."""
        previous = self._snapshots.get(pod)
        self._snapshots[pod] = snapshot
        self._revisions[pod] = revision
        if previous is None:
            return False
        self._samples[revision] = self.sample(revision) + delta(previous, snapshot)
        return True

    def forget_missing(self, pods: set[str]) -> None:
        """Drop the snapshots of pods not in ``pods``: were one to return, it needs a baseline."""
        for pod in self._snapshots.keys() - pods:
            del self._snapshots[pod]
            self._revisions.pop(pod, None)

    def drift(self, revision: str, canary: str, source: str) -> Drift | None:
        """The output drift of ``canary`` the pods of ``revision`` report now: the largest PSI
        any of them sees, resting on the fewest values any of them holds (a verdict waits until
        every pod has enough; the Prometheus source asks the same)."""
        found = [
            snapshot.drift[(canary, source)]
            for pod, snapshot in self._snapshots.items()
            if self._revisions.get(pod) == revision and (canary, source) in snapshot.drift
        ]
        if not found:
            return None
        return Drift(max(d.psi for d in found), min(d.values for d in found))

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


_OUTPUT_WHAT = {LIVE: "mirrored", REPLAY: "replayed"}


def _output_check(
    name: str,
    check: AgreementCheck | ReplayCheck,
    seen: Agreements,
    analysis: AnalysisSpec,
    source: str,
    interval_seconds: float,
) -> CheckResult:
    """Agreement of the canary's answers with the stable's on one source of compared requests.

    The canary failing to answer copies (errors, timeouts) fails the check past the share
    minSuccessRate allows; too few compared requests is Inconclusive."""
    what = _OUTPUT_WHAT[source]
    metric = check.metric.value
    tried = seen.compared + seen.failed
    failures_allowed = 1 - analysis.min_success_rate
    if tried >= check.min_samples and seen.failed / tried > failures_allowed:
        message = (
            f"{name}: the canary failed {_number(seen.failed)} of {_number(tried)} {what} "
            f"requests ({seen.failed / tried:.2%} > {failures_allowed:.2%})"
        )
        return _check(name, seen.failed / tried, failures_allowed, True, tried, message)
    if isinstance(check, ReplayCheck) and check.judges_accuracy and seen.labelled > 0:
        return _accuracy_check(name, check, seen)
    value = seen.value(check.metric)
    if seen.compared < check.min_samples or value is None:
        message = (
            f"{name}: {_number(seen.compared)} {what} requests compared < minSamples "
            f"{_number(check.min_samples)} in {_number(interval_seconds, 1)} s"
        )
        return _inconclusive(name, check.min, seen.compared, message)
    below = value < check.min
    unlabelled = (
        " (the golden set has no labels: agreement judged)"
        if isinstance(check, ReplayCheck) and check.judges_accuracy
        else ""
    )
    message = (
        f"{name}: {metric} {value:.4f} {'<' if below else '>='} {check.min:.4f} on "
        f"{_number(seen.compared)} {what} requests{unlabelled}"
    )
    return _check(name, value, check.min, below, seen.compared, message)


def _accuracy_check(name: str, check: ReplayCheck, seen: Agreements) -> CheckResult:
    """A labelled golden set: the canary's top-1 accuracy, absolute and against the stable's
    on the same rows."""
    canary, stable = seen.accuracy("canary"), seen.accuracy("stable")
    if seen.labelled < check.min_samples or canary is None or stable is None:
        message = (
            f"{name}: {_number(seen.labelled)} labelled rows replayed < minSamples "
            f"{_number(check.min_samples)}"
        )
        return _inconclusive(name, check.min_accuracy or 0.0, seen.labelled, message)
    said = (
        f"{name}: accuracy {canary:.2%} (stable {stable:.2%}) on {_number(seen.labelled)} "
        "labelled rows"
    )
    if check.min_accuracy is not None and canary < check.min_accuracy:
        message = f"{said}: below minAccuracy {check.min_accuracy:.2%}"
        return _check(name, canary, check.min_accuracy, True, seen.labelled, message)
    drop = stable - canary
    if check.max_accuracy_drop is not None and drop > check.max_accuracy_drop:
        message = (
            f"{said}: {drop * 100:.1f} points below the stable > maxAccuracyDrop "
            f"{check.max_accuracy_drop * 100:.1f}"
        )
        return _check(name, canary, check.max_accuracy_drop, True, seen.labelled, message)
    threshold = check.min_accuracy if check.min_accuracy is not None else stable
    return _check(name, canary, threshold, False, seen.labelled, said)


def _drift_check(check: OutputDriftCheck, drift: Drift | None) -> CheckResult:
    name, what = "outputDrift", _OUTPUT_WHAT[check.source.value]
    if drift is None or drift.values < check.min_values:
        values = 0 if drift is None else drift.values
        message = (
            f"{name}: the PSI rests on {_number(values)} output values < minValues "
            f"{_number(check.min_values)} of {what} requests"
        )
        return _inconclusive(name, check.max, values, message)
    above = drift.psi > check.max
    message = (
        f"{name}: PSI {drift.psi:.3f} {'>' if above else '<='} {check.max:.3f} of the canary's "
        f"output against the stable's on {_number(drift.values)} values of {what} requests"
    )
    return _check(name, drift.psi, check.max, above, drift.values, message)


def output_checks(
    analysis: AnalysisSpec,
    outputs: Mapping[str, Agreements],
    interval_seconds: float,
    failed: Mapping[str, str] | None = None,
    drift: Drift | None = None,
) -> list[CheckResult]:
    """The agreement and replay checks the analysis asks for, on what the stable compared;
    one whose figures could not be read (``failed``) is Inconclusive, saying why."""
    checks = []
    for name, check, source in (
        ("agreement", analysis.agreement, LIVE),
        ("replay", analysis.replay, REPLAY),
    ):
        if check is None:
            continue
        if failed and name in failed:
            checks.append(_inconclusive(name, check.min, 0, failed[name]))
            continue
        seen = outputs.get(source, Agreements())
        checks.append(_output_check(name, check, seen, analysis, source, interval_seconds))
    if analysis.output_drift is not None:
        if failed and "outputDrift" in failed:
            checks.append(_inconclusive("outputDrift", analysis.output_drift.max, 0,
                                        failed["outputDrift"]))  # fmt: skip
        else:
            checks.append(_drift_check(analysis.output_drift, drift))
    return checks


def judge(
    canary: Traffic,
    stable: Traffic,
    analysis: AnalysisSpec,
    time: str,
    interval_seconds: float,
    values: Mapping[str, float | None] | None = None,
    failed: Mapping[str, str] | None = None,
    outputs: Mapping[str, Agreements] | None = None,
    drift: Drift | None = None,
) -> AnalysisResult:
    """The verdict on the canary's traffic in an interval, beside the stable's in the same one.

    Too little canary traffic is Inconclusive, never a failure. A relative check whose stable
    side has too little traffic (or no latency data) is Inconclusive too. The samples of a
    relative check count the requests of both revisions. ``values`` holds the value of each of
    ``analysis.metrics`` (None: no data); ``failed`` says, by check name, why a check could not
    be measured (a query that failed): such a check is Inconclusive with that message, so a
    failure to measure never passes.

    ``outputs`` is what the stable's pods compared of this canary's answers, by source (live,
    replay), and ``drift`` their output-drift gauges for the source outputDrift reads. The
    output checks are judged even when client traffic is too thin
    for the others (a shadow step has none): one failing fails the interval, and when every
    output check passes they alone make it a pass.
    """
    failed = failed or {}
    on = _on(canary.requests, interval_seconds)
    checks: list[CheckResult] = []
    compared = output_checks(analysis, outputs or {}, interval_seconds, failed, drift)
    thin = "requests" in failed or canary.requests < analysis.min_requests
    if thin and compared and all(c.verdict is AnalysisVerdict.PASS for c in compared):
        checks = compared
        verdict = AnalysisVerdict.PASS
        message = (
            f"judged on outputs alone ({_number(canary.requests)} client requests < minRequests "
            f"{_number(analysis.min_requests)}): " + "; ".join(c.message for c in compared)
        )
    elif thin:
        verdict = AnalysisVerdict.INCONCLUSIVE
        message = failed.get("requests") or (
            f"{_number(canary.requests)} requests < minRequests {_number(analysis.min_requests)} "
            f"in {_number(interval_seconds, 1)} s"
        )
        if "requests" in failed:
            checks = [_inconclusive("requests", analysis.min_requests, 0, message)]
        checks += compared
        fails = [c.message for c in compared if c.verdict is AnalysisVerdict.FAIL]
        if fails:  # a wrong answer is wrong however little traffic there is
            verdict, message = AnalysisVerdict.FAIL, "; ".join(fails)
        else:
            # Nothing is judged, but a query that failed is said all the same.
            outputs_said = [c.message for c in compared]
            message = "; ".join(dict.fromkeys([message, *outputs_said, *failed.values()]))
    else:
        checks = _absolute_checks(canary, analysis, on, failed)
        checks += _relative_checks(canary, stable, analysis, interval_seconds, failed)
        checks += [
            _metric_check(m, (values or {}).get(m.name), failed.get(m.name), canary.requests)
            for m in analysis.metrics or ()
        ]
        checks += compared
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
    outputs = {
        source: Agreements(
            **{
                field: value(promql.output_query_name(source, field)) or 0.0
                for field in ("compared", "failed", *promql.MIRROR_SERIES, *CORRECT_FIELDS)
            }
        )
        for source in promql.OUTPUT_SOURCES.values()
    }
    psi = value(promql.OUTPUT_PSI)
    drift = None if psi is None else Drift(psi, value(promql.OUTPUT_VALUES) or 0.0)
    result = judge(
        canary,
        stable,
        analysis,
        time,
        interval_seconds,
        values={m.name: value(m.name) for m in analysis.metrics or ()},
        failed={check: "; ".join(messages) for check, messages in failed.items()},
        outputs=outputs,
        drift=drift,
    )
    errors = sum(1 for q in queries if answers.get(q.name, Answer(error="x")).error is not None)
    result = result.model_copy(update={"errors": errors})
    no_series = value(promql.CANARY_REQUESTS) is None and "requests" not in failed
    if no_series:
        note = " (Prometheus has no modelship_requests_total series of the canary in that time)"
        result = result.model_copy(update={"message": result.message + note})
    return result


def mismatches(reports: Mapping[str, str], canary: str, limit: int) -> tuple[MismatchExample, ...]:
    """The newest mismatching examples of ``canary`` in the stable pods' ``GET /v2/mirror``
    answers (by pod name), newest first. A pod mirroring to another canary, or an answer that
    does not read, adds nothing (mirroring is advisory there: the metrics decide)."""
    found: list[tuple[float, MismatchExample]] = []
    for pod, text in reports.items():
        try:
            report = json.loads(text)
            if report.get("canary") != canary:
                continue
            for example in report.get("mismatches") or ():
                found.append(
                    (
                        float(example.get("time") or 0.0),
                        MismatchExample(
                            id=str(example["id"])[:256],
                            source=str(example.get("source") or LIVE),
                            pod=pod,
                            cosine=float(example["cosine"]),
                            max_abs_error=float(example["max_abs_error"]),
                            top1_agreement=example.get("top1_agreement"),
                            input_sha256=str(example.get("input_sha256") or ""),
                        ),
                    )
                )
        except (ValueError, TypeError, KeyError, AttributeError, ValidationError):
            continue
    found.sort(key=lambda pair: pair[0], reverse=True)
    return tuple(example for _, example in found[:limit])
