"""The PromQL of canary analysis from Prometheus (``analysis.source: prometheus``). No I/O.

The built-in checks read the runtime's own series (see modelship_runtime.serve.metrics), which
carry ``model`` (the ModelDeployment's name) and ``revision``, and the ``namespace`` label that
Prometheus' Kubernetes discovery (or a PodMonitor) adds; the user's queries name the same
things through placeholders. A placeholder is replaced by plain text substitution of a value
escaped for a double-quoted PromQL string, never by a template engine: a query cannot run code
or reach anything but the five values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from modelship.api.v1alpha1 import (
    PLACEHOLDER_CANDIDATE,
    PLACEHOLDER_HELP,
    PLACEHOLDER_PATTERN,
    AnalysisSpec,
)
from modelship.domain.release import LEGACY_REVISION

REQUESTS = "modelship_requests_total"
DURATION_BUCKETS = "modelship_request_duration_seconds_bucket"
MIRROR_REQUESTS = "modelship_mirror_requests_total"
MIRROR_SERIES = {
    "cosine_sum": "modelship_mirror_cosine_sum",
    "top1_agreements": "modelship_mirror_top1_agreements_total",
    "top1_rows": "modelship_mirror_top1_rows_total",
    "labelled": "modelship_mirror_labelled_rows_total",
}
MIRROR_CORRECT = "modelship_mirror_correct_rows_total"
OUTPUT_SOURCES = {"agreement": "live", "replay": "replay"}
OUTPUT_PSI = "output.drift.psi"
OUTPUT_VALUES = "output.drift.values"
"""The output-aware checks and the source of compared requests each reads."""

CANARY_REQUESTS = "canary.requests"
CANARY_SUCCESS_RATE = "canary.successRate"
CANARY_P99 = "canary.p99LatencyMs"
STABLE_REQUESTS = "stable.requests"
STABLE_SUCCESS_RATE = "stable.successRate"
STABLE_P99 = "stable.p99LatencyMs"
"""Names of the built-in queries (a user's query is named by its check, which has no dot)."""


class PromQLError(ValueError):
    """A query that cannot be rendered; the message says what to change."""


def label_value(value: str) -> str:
    """``value`` escaped for a double-quoted PromQL string (its quotes not included)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def duration(seconds: float) -> str:
    """A PromQL range duration: whole seconds as ``30s``, anything finer in milliseconds."""
    milliseconds = max(1, round(seconds * 1000))
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def revision_label(revision: str) -> str:
    """The revision label of a revision's series: an adopted Deployment from before revisions
    (``legacy``) was never told one, and PromQL's ``revision=""`` matches series without it."""
    return "" if revision == LEGACY_REVISION else revision


@dataclass(frozen=True)
class Target:
    """What one analysis is about: the placeholders' values."""

    namespace: str
    name: str
    """The ModelDeployment, and the ``model`` label of its series."""
    revision: str
    stable: str
    range_seconds: float
    """The span of traffic judged, ending at the moment of the queries."""

    def values(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "revision": revision_label(self.revision),
            "stable": revision_label(self.stable),
            "interval": duration(self.range_seconds),
        }


def render(query: str, values: Mapping[str, str]) -> str:
    """``query`` with every ``{{ placeholder }}`` replaced by its escaped value.

    Raises PromQLError for a ``{{`` that does not open one of the known placeholders.
    """

    def substitute(found: re.Match[str]) -> str:
        placeholder = re.fullmatch(PLACEHOLDER_PATTERN, found.group())
        if placeholder is None or placeholder.group(1) not in values:
            raise PromQLError(
                f"unknown placeholder {found.group()!r} in {query!r}: use {PLACEHOLDER_HELP}"
            )
        return label_value(values[placeholder.group(1)])

    return re.sub(PLACEHOLDER_CANDIDATE, substitute, query)


def selector(metric: str, labels: Mapping[str, str], *matchers: str) -> str:
    """``metric{label="value",...,matcher...}`` with the values escaped."""
    parts = [f'{key}="{label_value(value)}"' for key, value in labels.items()]
    return f"{metric}{{{','.join([*parts, *matchers])}}}"


@dataclass(frozen=True)
class Query:
    name: str
    promql: str
    checks: tuple[str, ...]
    """The checks that read its value: they cannot be made when it fails."""


def _increase(series: str, window: str) -> str:
    return f"sum(increase({series}[{window}]))"


def _revision_queries(
    side: str, target: Target, revision: str, analysis: AnalysisSpec
) -> list[Query]:
    labels = {"namespace": target.namespace, "model": target.name, "revision": revision}
    window = duration(target.range_seconds)
    requests = _increase(selector(REQUESTS, labels), window)
    # Without a single non-5xx answer there is no non-5xx series at all: that is a success
    # rate of 0, not no data (the denominator still says whether there was any request).
    successes = _increase(selector(REQUESTS, labels, 'code!~"5.."'), window)
    buckets = f"sum by (le) (increase({selector(DURATION_BUCKETS, labels)}[{window}]))"
    relative = ("p99LatencyRatio", "errorRateIncrease")
    if side == "canary":
        return [
            Query(CANARY_REQUESTS, requests, ("requests",)),
            Query(CANARY_SUCCESS_RATE, f"({successes} or vector(0)) / {requests}",
                  ("successRate", "errorRateIncrease")),
            Query(CANARY_P99, f"histogram_quantile(0.99, {buckets})",
                  ("p99LatencyMs", "p99LatencyRatio")),
        ]  # fmt: skip
    queries = [Query(STABLE_REQUESTS, requests, relative)]
    if analysis.max_error_rate_increase is not None:
        queries.append(Query(STABLE_SUCCESS_RATE, f"({successes} or vector(0)) / {requests}",
                             ("errorRateIncrease",)))  # fmt: skip
    if analysis.max_p99_latency_ratio is not None:
        queries.append(Query(STABLE_P99, f"histogram_quantile(0.99, {buckets})",
                             ("p99LatencyRatio",)))  # fmt: skip
    return queries


def output_query_name(source: str, field: str) -> str:
    """``output.<source>.<field>``: one figure of what the stable compared (see Agreements)."""
    return f"output.{source}.{field}"


def _output_queries(
    analysis: AnalysisSpec, target: Target, values: Mapping[str, str]
) -> list[Query]:
    """What the stable's pods compared of the canary's answers, per source the checks read."""
    window = duration(target.range_seconds)
    queries = []
    for check, source in OUTPUT_SOURCES.items():
        if getattr(analysis, check) is None:
            continue
        labels = {
            "namespace": target.namespace,
            "model": target.name,
            "revision": values["stable"],
            "canary": values["revision"],
            "source": source,
        }
        for outcome in ("compared", "failed"):
            series = selector(MIRROR_REQUESTS, labels | {"outcome": outcome})
            queries.append(Query(output_query_name(source, outcome), _increase(series, window),
                                 (check,)))  # fmt: skip
        for field, metric in MIRROR_SERIES.items():
            series = selector(metric, labels)
            queries.append(Query(output_query_name(source, field), _increase(series, window),
                                 (check,)))  # fmt: skip
        for side in ("stable", "canary"):
            series = selector(MIRROR_CORRECT, labels | {"side": side})
            queries.append(Query(output_query_name(source, f"{side}_correct"),
                                 _increase(series, window), (check,)))  # fmt: skip
    drift = analysis.output_drift
    if drift is not None:
        labels = {
            "namespace": target.namespace,
            "model": target.name,
            "revision": values["stable"],
            "canary": values["revision"],
            "source": drift.source.value,
        }
        # Gauges of each stable pod as they are now: the largest drift any of them sees, on the
        # fewest values any of them holds.
        queries += [
            Query(OUTPUT_VALUES, f"min({selector('modelship_mirror_output_values', labels)})",
                  ("outputDrift",)),
            Query(OUTPUT_PSI, f"max({selector('modelship_mirror_output_psi', labels)})",
                  ("outputDrift",)),
        ]  # fmt: skip
    return queries


def analysis_queries(analysis: AnalysisSpec, target: Target) -> list[Query]:
    """Every query one analysis needs: the canary's request count, success rate and p99, the
    stable's where a relative check is set, what the stable compared for agreement and replay,
    and the user's ``metrics``."""
    values = target.values()
    queries = _revision_queries("canary", target, values["revision"], analysis)
    if analysis.max_p99_latency_ratio is not None or analysis.max_error_rate_increase is not None:
        queries += _revision_queries("stable", target, values["stable"], analysis)
    queries += _output_queries(analysis, target, values)
    for metric in analysis.metrics or ():
        queries.append(Query(metric.name, render(metric.query, values), (metric.name,)))
    return queries


@dataclass(frozen=True)
class Answer:
    """What one query gave: a number, no data, or why it failed."""

    value: float | None = None
    """None: no data (an empty result, or NaN such as 0/0)."""
    error: str | None = None
    """Why the query failed (HTTP error, PromQL error, timeout); then there is no value."""
