"""Canary analysis from Prometheus without Prometheus: the PromQL the operator sends, the verdicts
on the answers it gets back (no data, errors, thresholds), and the reconciler's timing of the
queries. tests/integration/test_prometheus_client.py runs the same queries on a real Prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from modelship.api.timestamps import format_time
from modelship.api.v1alpha1 import (
    AnalysisResult,
    AnalysisSpec,
    AnalysisVerdict,
    CanaryPhase,
    CanaryStatus,
    ModelDeploymentSpec,
)
from modelship.domain import naming, promql
from modelship.domain.analysis import (
    Measured,
    PodSnapshot,
    Sample,
    judge,
    judge_answers,
    parse_metrics,
)
from modelship.domain.promql import Answer, PromQLError, Query, Target
from modelship.domain.settings import Settings
from modelship.metrics import OperatorMetrics
from modelship.reconciler import Reconciler, _Memory

NOW = "2026-12-01T12:00:00Z"
TARGET = Target("ml", "sentiment", "7c41d9e2b3", "18ab3f0c9d", 30)
SELECT = 'namespace="ml",model="sentiment",revision="7c41d9e2b3"'
STABLE_SELECT = 'namespace="ml",model="sentiment",revision="18ab3f0c9d"'


def analysis(**fields: Any) -> AnalysisSpec:
    body = {"source": "prometheus", "minRequests": 20, "maxP99LatencyMs": 250} | fields
    return AnalysisSpec.model_validate(body)


def accuracy(**fields: Any) -> dict[str, Any]:
    query = 'avg(accuracy{namespace="{{ namespace }}",revision="{{ revision }}"})'
    return {"name": "accuracy", "query": query, "min": 0.9} | fields


def answered(spec: AnalysisSpec, **values: float | str | None) -> AnalysisResult:
    """The verdict when each query answers ``values[name]`` (a str is the query's error);
    the canary's built-ins answer a healthy 1 000 requests unless told otherwise."""
    queries = promql.analysis_queries(spec, TARGET)
    healthy: dict[str, float | str | None] = {
        promql.CANARY_REQUESTS: 1000,
        promql.CANARY_SUCCESS_RATE: 0.998,
        promql.CANARY_P99: 0.120,
        promql.STABLE_REQUESTS: 1000,
        promql.STABLE_SUCCESS_RATE: 0.999,
        promql.STABLE_P99: 0.100,
    }
    given = healthy | values
    answers = {
        q.name: Answer(error=v) if isinstance(v, str) else Answer(v)
        for q in queries
        for v in [given.get(q.name)]
    }
    return judge_answers(queries, answers, spec, NOW, 30)


def check(result: AnalysisResult, name: str) -> Any:
    return next(c for c in result.checks if c.name == name)


def test_the_pods_source_sums_over_the_revision_label_too() -> None:
    text = (
        "# TYPE modelship_requests_total counter\n"
        'modelship_requests_total{code="200",model="m",protocol="rest",revision="a"} 7\n'
        'modelship_requests_total{code="500",model="m",protocol="rest",revision="a"} 1\n'
        'modelship_requests_total{code="200",model="m",protocol="rest",revision=""} 2\n'
        "# TYPE modelship_request_duration_seconds histogram\n"
        'modelship_request_duration_seconds_bucket{le="0.1",model="m",protocol="rest",'
        'revision="a"} 8\n'
        'modelship_request_duration_seconds_bucket{le="+Inf",model="m",protocol="rest",'
        'revision="a"} 8\n'
        'modelship_request_duration_seconds_bucket{le="0.1",model="m",protocol="rest",'
        'revision=""} 1\n'
        'modelship_request_duration_seconds_bucket{le="+Inf",model="m",protocol="rest",'
        'revision=""} 2\n'
    )
    assert parse_metrics(text) == PodSnapshot(10, 1, ((0.1, 9.0), (float("inf"), 10.0)))


# --- rendering ---------------------------------------------------------------------------


def test_placeholders_are_replaced_however_they_are_spaced() -> None:
    query = 'x{ns="{{namespace}}",md="{{ name }}",r="{{  revision  }}",s="{{ stable}}"}'
    query += "[{{ interval }}]"
    assert promql.render(query, TARGET.values()) == (
        'x{ns="ml",md="sentiment",r="7c41d9e2b3",s="18ab3f0c9d"}[30s]'
    )


def test_values_are_escaped_for_a_double_quoted_promql_string() -> None:
    values = {"name": 'a"b\\c\nd'}
    assert promql.render('x{model="{{ name }}"}', values) == 'x{model="a\\"b\\\\c\\nd"}'
    assert promql.label_value('say "hi"') == 'say \\"hi\\"'
    assert promql.selector("x", {"model": 'm"'}, 'code!~"5.."') == 'x{model="m\\"",code!~"5.."}'


def test_single_braces_of_promql_are_left_alone() -> None:
    query = 'sum by (le) (rate(x{job="a"}[5m])) > on() group_left() vector(1)'
    assert promql.render(query, TARGET.values()) == query


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ('x{r="{{ revison }}"}', "{{ revison }}"),
        ('x{r="{{ revision }"}', "{{ revision }"),
        ('x{r="{{ revision"}', '{{ revision"}'),
        ("x{{}}", "{{}}"),
        ("x{{{ revision }}}", "{{{ revision }}"),
    ],
)
def test_an_unknown_placeholder_is_an_error_naming_it(query: str, found: str) -> None:
    with pytest.raises(PromQLError) as info:
        promql.render(query, TARGET.values())
    assert repr(found) in str(info.value)
    assert "{{ namespace }}, {{ name }}, {{ revision }}, {{ stable }}, {{ interval }}" in str(
        info.value
    )


@pytest.mark.parametrize("query", ['x{r="{{ revison }}"}', 'x{r="{{ revision }"}', "x{{}}"])
def test_the_api_refuses_what_cannot_be_rendered(query: str) -> None:
    with pytest.raises(ValidationError, match="query may only use the placeholders"):
        analysis(metrics=[accuracy(query=query)])


def test_metrics_need_source_prometheus_and_distinct_names() -> None:
    with pytest.raises(ValidationError, match="need source: prometheus"):
        AnalysisSpec.model_validate({"metrics": [accuracy()]})
    with pytest.raises(ValidationError, match="names must be unique"):
        analysis(metrics=[accuracy(), accuracy(max=1)])
    ok = analysis(metrics=[accuracy(), accuracy(name="drift", min=None, max=0.25)])
    assert [m.name for m in ok.metrics or ()] == ["accuracy", "drift"]


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (90, "90s"), (1.5, "1500ms")])
def test_ranges_are_promql_durations(seconds: float, text: str) -> None:
    assert promql.duration(seconds) == text


def test_the_built_in_queries() -> None:
    queries = {q.name: q.promql for q in promql.analysis_queries(analysis(), TARGET)}
    requests = f"sum(increase(modelship_requests_total{{{SELECT}}}[30s]))"
    successes = f'sum(increase(modelship_requests_total{{{SELECT},code!~"5.."}}[30s]))'
    assert queries == {
        "canary.requests": requests,
        "canary.successRate": f"({successes} or vector(0)) / {requests}",
        "canary.p99LatencyMs": "histogram_quantile(0.99, sum by (le) (increase("
        f"modelship_request_duration_seconds_bucket{{{SELECT}}}[30s])))",
    }


def test_the_stable_is_queried_for_the_relative_checks_it_has() -> None:
    ratio = {q.name for q in promql.analysis_queries(analysis(maxP99LatencyRatio=1.5), TARGET)}
    errors = {q.name for q in promql.analysis_queries(analysis(maxErrorRateIncrease=0), TARGET)}
    assert ratio - errors == {"stable.p99LatencyMs"}
    assert errors - ratio == {"stable.successRate"}
    queries = {q.name: q.promql for q in promql.analysis_queries(analysis(
        maxP99LatencyRatio=1.5), TARGET)}  # fmt: skip
    assert queries["stable.requests"] == (
        f"sum(increase(modelship_requests_total{{{STABLE_SELECT}}}[30s]))"
    )


def test_user_queries_are_rendered_and_named_by_their_check() -> None:
    queries = promql.analysis_queries(analysis(metrics=[accuracy()]), TARGET)
    assert queries[-1] == Query(
        "accuracy", 'avg(accuracy{namespace="ml",revision="7c41d9e2b3"})', ("accuracy",)
    )


def test_an_adopted_stable_from_before_revisions_is_its_series_without_the_label() -> None:
    target = Target("ml", "m", "7c41d9e2b3", "legacy", 30)
    assert target.values()["stable"] == ""
    stable = next(
        q for q in promql.analysis_queries(analysis(maxP99LatencyRatio=2), target)
        if q.name == "stable.requests"
    )  # fmt: skip
    assert 'revision=""' in stable.promql


# --- verdicts ------------------------------------------------------------------------------


def test_a_healthy_canary_passes_with_the_messages_of_the_pods_source() -> None:
    result = answered(analysis(metrics=[accuracy()]), accuracy=0.95)
    assert result.verdict == AnalysisVerdict.PASS
    assert [c.name for c in result.checks] == ["successRate", "p99LatencyMs", "accuracy"]
    assert check(result, "successRate").message == (
        "success rate 99.80% >= 99.00% on 1 000 requests in 30 s"
    )
    assert check(result, "p99LatencyMs").message == "p99 120 ms <= 250 ms on 1 000 requests in 30 s"
    assert check(result, "accuracy").message == "accuracy 0.95 >= 0.9"
    assert result.message == "all 3 checks passed on 1 000 requests in 30 s"
    assert (result.requests, result.interval_seconds) == (1000, 30)


def test_both_sources_share_the_thresholds() -> None:
    """The same traffic, as scraped from the pods or as Prometheus measured it, is judged alike."""
    sample = Sample(1000, 34, ((0.1, 900.0), (0.5, 1000.0), (float("inf"), 1000.0)))
    measured = Measured(sample.requests, sample.success_rate, sample.p99_ms)
    stable = Sample(800, 1, ((0.1, 800.0), (float("inf"), 800.0)))
    spec = analysis(maxErrorRateIncrease=0.01, maxP99LatencyRatio=1.5)
    stable_measured = Measured(stable.requests, stable.success_rate, stable.p99_ms)
    scraped = judge(sample, stable, spec, NOW, 30)
    queried = judge(measured, stable_measured, spec, NOW, 30)
    assert [(c.name, c.verdict, c.message) for c in scraped.checks] == [
        (c.name, c.verdict, c.message) for c in queried.checks
    ]
    assert [c.value for c in scraped.checks] == pytest.approx([c.value for c in queried.checks])
    assert (scraped.verdict, scraped.message) == (queried.verdict, queried.message)
    assert scraped.verdict == AnalysisVerdict.FAIL


def test_a_low_success_rate_fails() -> None:
    result = answered(analysis(), **{promql.CANARY_SUCCESS_RATE: 0.661})
    assert result.verdict == AnalysisVerdict.FAIL
    assert result.message == "success rate 66.10% < 99.00% on 1 000 requests in 30 s"


def test_a_canary_that_answers_only_5xx_has_a_success_rate_of_zero() -> None:
    result = answered(analysis(), **{promql.CANARY_SUCCESS_RATE: 0.0})
    assert check(result, "successRate").value == 0
    assert result.verdict == AnalysisVerdict.FAIL


@pytest.mark.parametrize(
    ("bounds", "value", "verdict", "message"),
    [
        ({"min": 0.9}, 0.9, AnalysisVerdict.PASS, "accuracy 0.9 >= 0.9"),
        ({"min": 0.9}, 0.85, AnalysisVerdict.FAIL, "accuracy 0.85 < 0.9 (must be >= 0.9)"),
        ({"min": None, "max": 0.25}, 0.3, AnalysisVerdict.FAIL,
         "accuracy 0.3 > 0.25 (must be <= 0.25)"),
        ({"min": 0.5, "max": 0.7}, 0.7, AnalysisVerdict.PASS, "accuracy 0.7 within 0.5..0.7"),
        ({"min": 0.5, "max": 0.7}, 0.4, AnalysisVerdict.FAIL,
         "accuracy 0.4 < 0.5 (must be within 0.5..0.7)"),
    ],
)  # fmt: skip
def test_user_thresholds(
    bounds: dict[str, Any], value: float, verdict: AnalysisVerdict, message: str
) -> None:
    result = answered(analysis(metrics=[accuracy(**bounds)]), accuracy=value)
    found = check(result, "accuracy")
    assert (found.verdict, found.value, found.message) == (verdict, value, message)
    assert result.verdict == verdict


def test_a_user_query_without_data_is_inconclusive_neither_pass_nor_fail() -> None:
    result = answered(analysis(metrics=[accuracy()]), accuracy=None)
    found = check(result, "accuracy")
    assert (found.verdict, found.value) == (AnalysisVerdict.INCONCLUSIVE, None)
    assert found.message == "prometheus query accuracy returned no data"
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert result.message == found.message


def test_a_failed_user_query_is_an_error_in_its_check_and_never_a_pass() -> None:
    result = answered(analysis(metrics=[accuracy()]), accuracy="bad_data: parse error")
    found = check(result, "accuracy")
    assert found.verdict == AnalysisVerdict.INCONCLUSIVE
    assert found.message == "prometheus query accuracy failed: bad_data: parse error"
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE


def test_a_failed_built_in_query_leaves_the_checks_reading_it_inconclusive() -> None:
    spec = analysis(maxP99LatencyRatio=2)
    result = answered(spec, **{promql.CANARY_P99: "HTTP 503 from http://prom:9090"})
    failure = "prometheus query canary.p99LatencyMs failed: HTTP 503 from http://prom:9090"
    assert [(c.name, c.verdict, c.message) for c in result.checks[1:]] == [
        ("p99LatencyMs", AnalysisVerdict.INCONCLUSIVE, failure),
        ("p99LatencyRatio", AnalysisVerdict.INCONCLUSIVE, failure),
    ]
    assert check(result, "successRate").verdict == AnalysisVerdict.PASS
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert result.message == failure, "said once"


def test_a_failed_stable_query_leaves_the_relative_checks_inconclusive() -> None:
    spec = analysis(maxErrorRateIncrease=0.01)
    result = answered(spec, **{promql.STABLE_REQUESTS: "no answer from http://prom within 5 s"})
    found = check(result, "errorRateIncrease")
    assert found.verdict == AnalysisVerdict.INCONCLUSIVE
    assert "prometheus query stable.requests failed: no answer" in found.message
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE


def test_a_failed_request_count_says_so_and_judges_nothing() -> None:
    result = answered(analysis(metrics=[accuracy()]), **{
        promql.CANARY_REQUESTS: "cannot reach http://prom:9090: [Errno 111] Connection refused",
        "accuracy": "cannot reach http://prom:9090: [Errno 111] Connection refused",
    })  # fmt: skip
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert [(c.name, c.verdict) for c in result.checks] == [
        ("requests", AnalysisVerdict.INCONCLUSIVE)
    ]
    assert result.message == (
        "prometheus query canary.requests failed: cannot reach http://prom:9090: [Errno 111] "
        "Connection refused; prometheus query accuracy failed: cannot reach http://prom:9090: "
        "[Errno 111] Connection refused"
    )


def test_a_measured_failure_still_fails_beside_a_failed_query() -> None:
    result = answered(
        analysis(metrics=[accuracy()]),
        **{promql.CANARY_SUCCESS_RATE: 0.5, "accuracy": "HTTP 422 from http://prom"},
    )
    assert result.verdict == AnalysisVerdict.FAIL


def test_no_canary_series_is_too_few_requests_and_says_where_it_looked() -> None:
    result = answered(analysis(), **{promql.CANARY_REQUESTS: None})
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert result.message.startswith("0 requests < minRequests 20 in 30 s")
    assert "no modelship_requests_total series of the canary" in result.message


def test_too_few_requests_is_inconclusive() -> None:
    result = answered(analysis(), **{promql.CANARY_REQUESTS: 12.4})
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert result.message == "12 requests < minRequests 20 in 30 s"


# --- the reconciler's timing -----------------------------------------------------------------


T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
OWNER = naming.Owner("sentiment", "ml", "uid-1")


class FakePrometheus:
    def __init__(self, **values: float | None) -> None:
        self.values = {promql.CANARY_REQUESTS: 1000.0, promql.CANARY_SUCCESS_RATE: 1.0,
                       promql.CANARY_P99: 0.01} | values  # fmt: skip
        self.asked: list[tuple[datetime, list[str]]] = []

    def ask(self, queries: Sequence[Query], at: datetime) -> dict[str, Answer]:
        self.asked.append((at, [q.promql for q in queries]))
        return {q.name: Answer(self.values.get(q.name)) for q in queries}


def model_spec(**fields: Any) -> ModelDeploymentSpec:
    body = {"source": "prometheus", "interval": "30s"} | fields
    return ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://b/m.onnx"}, "rollout": {"analysis": body}}
    )


def canary(**fields: Any) -> CanaryStatus:
    body = {
        "revision": "7c41d9e2b3",
        "digest": "sha256:" + "1" * 64,
        "phase": CanaryPhase.PROGRESSING,
        "startedAt": format_time(T0),
        "stepStartedAt": format_time(T0),
    } | fields
    return CanaryStatus.model_validate(body)


def ask(reconciler: Reconciler, memory: _Memory, seconds: float, **spec: Any) -> Any:
    return reconciler._ask_prometheus(
        OWNER, model_spec(**spec), canary(), "18ab3f0c9d", memory, T0 + timedelta(seconds=seconds)
    )


def test_the_first_verdict_comes_an_interval_after_the_step_and_thin_traffic_widens_the_range(
) -> None:  # fmt: skip
    prometheus = FakePrometheus(**{promql.CANARY_REQUESTS: 5.0})
    reconciler = Reconciler(None, Settings(), OperatorMetrics(), prometheus=prometheus)  # type: ignore[arg-type]
    memory = _Memory()
    assert ask(reconciler, memory, 0) is None, "the step's traffic starts now"
    assert ask(reconciler, memory, 29) is None
    first = ask(reconciler, memory, 30)
    assert (first.verdict, first.interval_seconds) == (AnalysisVerdict.INCONCLUSIVE, 30)
    assert ask(reconciler, memory, 45) is None
    prometheus.values[promql.CANARY_REQUESTS] = 500.0
    second = ask(reconciler, memory, 60)
    assert (second.verdict, second.interval_seconds) == (AnalysisVerdict.PASS, 60)
    assert "[60s]" in prometheus.asked[-1][1][0]
    third = ask(reconciler, memory, 90)
    assert third.interval_seconds == 30, "a verdict starts the next range"
    assert [at for at, _ in prometheus.asked] == [T0 + timedelta(seconds=s) for s in (30, 60, 90)]


def test_after_a_restart_the_range_starts_at_the_steps_last_verdict() -> None:
    prometheus = FakePrometheus()
    reconciler = Reconciler(None, Settings(), OperatorMetrics(), prometheus=prometheus)  # type: ignore[arg-type]
    last = AnalysisResult(time=format_time(T0 + timedelta(seconds=30)), verdict="Pass")
    result = reconciler._ask_prometheus(
        OWNER, model_spec(), canary(lastAnalysis=last.to_wire()), "18ab3f0c9d", _Memory(),
        T0 + timedelta(seconds=75),
    )  # fmt: skip
    assert result is not None
    assert result.interval_seconds == 45


def test_without_a_prometheus_url_the_analysis_is_inconclusive_and_says_what_to_set() -> None:
    reconciler = Reconciler(None, Settings(prometheus_url=None), OperatorMetrics())  # type: ignore[arg-type]
    memory = _Memory()
    assert ask(reconciler, memory, 0) is None
    result = ask(reconciler, memory, 30)
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert "analysis.prometheus.url" in result.message
    assert "MODELSHIP_PROMETHEUS_URL" in result.message


def test_the_prometheus_url_setting() -> None:
    assert Settings(prometheus_url="").prometheus_url is None
    assert Settings(prometheus_url=" http://prom:9090/ ").prometheus_url == "http://prom:9090/"
    with pytest.raises(ValidationError, match="not a Prometheus URL"):
        Settings(prometheus_url="prom:9090")
