"""The operator's Prometheus client and queries against a real Prometheus (3.16, built by
hack/build-k8s.sh), scraping two revisions' request metrics recorded with the runtime's own
metrics class: the verdicts come out of Prometheus' own ``increase()`` and
``histogram_quantile``, and every way a query can fail is an answer saying why, never a pass.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from localkube import Cluster, binaries
from localkube.ports import free_port
from modelship.api.v1alpha1 import AnalysisSpec, AnalysisVerdict
from modelship.domain import promql
from modelship.domain.analysis import judge_answers
from modelship.domain.promql import Target
from modelship.prometheus import PrometheusClient
from modelship_runtime.serve.metrics import RequestMetrics
from polling import wait_for
from spec_cases import valid_object

pytestmark = pytest.mark.integration

NS, NAME = "ml", "sentiment"
CANARY, STABLE = "7c41d9e2b3", "18ab3f0c9d"
RANGE_S = 8
"""The span judged: several 1 s scrapes of steady traffic."""


class Revision:
    """One revision's pod: the runtime's request metrics on their own /metrics port."""

    def __init__(self, revision: str, error_share: float, latency_s: float) -> None:
        self.registry = CollectorRegistry()
        self.metrics = RequestMetrics(self.registry, NAME, revision)
        self.error_share, self.latency_s = error_share, latency_s
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", self.registry)
        self._served = 0

    def serve(self, n: int) -> None:
        for _ in range(n):
            self._served += 1
            # Spread evenly: each request where the running count of errors goes up fails.
            failed = int(self._served * self.error_share) > int(
                (self._served - 1) * self.error_share
            )
            self.metrics.started()
            self.metrics.finished(
                "rest", NAME, 500 if failed else 200, time.perf_counter() - self.latency_s
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class World:
    prometheus: PrometheusClient
    url: str


def _config(targets: dict[str, Revision]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "modelship-runtime",
                "honor_labels": True,
                "static_configs": [
                    {"targets": [f"127.0.0.1:{r.port}"], "labels": {"namespace": NS, "pod": pod}}
                    for pod, r in targets.items()
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = binaries.ensure(("prometheus",))["prometheus"]
    workdir = tmp_path_factory.mktemp("prometheus")
    # The canary answers 40 % of its requests with a 500 and takes 300 ms; the stable is healthy.
    revisions = {"canary-0": Revision(CANARY, 0.4, 0.3), "stable-0": Revision(STABLE, 0.0, 0.003)}
    (workdir / "prometheus.yaml").write_text(yaml.safe_dump(_config(revisions)))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [str(binary), f"--config.file={workdir / 'prometheus.yaml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.1):
            for revision in revisions.values():
                revision.serve(5)

    load = threading.Thread(target=traffic, name="traffic")
    load.start()
    url = f"http://127.0.0.1:{port}"
    try:
        client = PrometheusClient(url)
        query = f'count(modelship_requests_total{{namespace="{NS}",model="{NAME}"}})'
        wait_for(lambda: _answer(url, "/-/ready") is not None, "Prometheus ready", 60)
        wait_for(lambda: (client.query(query, datetime.now(UTC)).value or 0) >= 3,
                 "both revisions' series scraped", 60)  # fmt: skip
        time.sleep(RANGE_S + 2)  # a whole range of scrapes
        yield World(client, url)
    finally:
        stop.set()
        load.join(5)
        process.terminate()
        process.wait(30)
        log.close()
        for revision in revisions.values():
            revision.close()


def _answer(url: str, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url + path, timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return None


def _analysis(**fields: Any) -> AnalysisSpec:
    body = {"source": "prometheus", "minRequests": 20, "maxP99LatencyMs": 250} | fields
    return AnalysisSpec.model_validate(body)


def _judge(world: World, spec: AnalysisSpec, canary: str, stable: str) -> Any:
    queries = promql.analysis_queries(spec, Target(NS, NAME, canary, stable, RANGE_S))
    answers = world.prometheus.ask(queries, datetime.now(UTC))
    return judge_answers(queries, answers, spec, "2026-12-01T12:00:00Z", RANGE_S)


def test_a_bad_canary_fails_every_built_in_check(world: World) -> None:
    spec = _analysis(maxErrorRateIncrease=0.01, maxP99LatencyRatio=2)
    result = _judge(world, spec, CANARY, STABLE)
    checks = {c.name: c for c in result.checks}
    assert result.verdict == AnalysisVerdict.FAIL, result
    assert checks["successRate"].verdict == AnalysisVerdict.FAIL
    assert checks["successRate"].value == pytest.approx(0.6, abs=0.05)
    assert checks["p99LatencyMs"].verdict == AnalysisVerdict.FAIL
    assert 200 < checks["p99LatencyMs"].value <= 500, "p99 in the (200 ms, 500 ms] bucket"
    assert checks["errorRateIncrease"].verdict == AnalysisVerdict.FAIL
    assert checks["p99LatencyRatio"].verdict == AnalysisVerdict.FAIL
    # 50 requests a second, over the range (increase() extrapolates to its edges).
    assert 0.5 * 50 * RANGE_S < result.requests < 1.5 * 50 * RANGE_S
    assert 0.5 * 50 * RANGE_S < result.stable_requests < 1.5 * 50 * RANGE_S


def test_a_healthy_revision_passes(world: World) -> None:
    result = _judge(world, _analysis(maxErrorRateIncrease=0.01), STABLE, STABLE)
    assert result.verdict == AnalysisVerdict.PASS, result
    assert {c.name: c.value for c in result.checks}["successRate"] == 1


def test_user_queries_pass_fail_or_have_no_data(world: World) -> None:
    share = ('sum(rate(modelship_requests_total{namespace="{{ namespace }}",model="{{ name }}",'
             'revision="{{ revision }}",code="200"}[{{ interval }}])) / sum(rate('
             'modelship_requests_total{namespace="{{ namespace }}",revision="{{ stable }}"}'
             '[{{ interval }}]))')  # fmt: skip
    spec = _analysis(
        maxP99LatencyMs=1000,
        minSuccessRate=0.5,
        metrics=[
            {"name": "share", "query": share, "min": 0.4, "max": 0.8},
            {"name": "strict", "query": share, "min": 0.9},
            {"name": "accuracy", "query": 'avg(accuracy{revision="{{ revision }}"})', "min": 0.9},
        ],
    )
    result = _judge(world, spec, CANARY, STABLE)
    checks = {c.name: c for c in result.checks}
    assert checks["share"].verdict == AnalysisVerdict.PASS, checks["share"]
    assert checks["share"].value == pytest.approx(0.6, abs=0.1)
    assert checks["strict"].verdict == AnalysisVerdict.FAIL
    assert checks["accuracy"].verdict == AnalysisVerdict.INCONCLUSIVE
    assert checks["accuracy"].message == "prometheus query accuracy returned no data"
    assert result.verdict == AnalysisVerdict.FAIL


def test_a_canary_without_series_in_prometheus_is_inconclusive(world: World) -> None:
    result = _judge(world, _analysis(metrics=[
        {"name": "accuracy", "query": 'avg(accuracy{revision="{{ revision }}"})', "min": 0.9}
    ]), "0000000000", STABLE)  # fmt: skip
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert "0 requests < minRequests 20" in result.message
    assert "no modelship_requests_total series of the canary" in result.message


def test_a_promql_error_is_prometheus_own_message(world: World) -> None:
    answer = world.prometheus.query("sum(rate(modelship_requests_total[5m]", datetime.now(UTC))
    assert answer.value is None
    assert answer.error is not None
    assert answer.error.startswith(f"HTTP 400 from {world.url}: bad_data: "), answer.error
    assert "unclosed left parenthesis" in answer.error


def test_a_failed_query_in_an_analysis_is_shown_and_never_passes(world: World) -> None:
    spec = _analysis(metrics=[{"name": "broken", "query": "sum(rate(x[{{ interval }}]", "max": 1}])
    result = _judge(world, spec, STABLE, STABLE)
    broken = next(c for c in result.checks if c.name == "broken")
    assert broken.verdict == AnalysisVerdict.INCONCLUSIVE
    assert broken.message.startswith("prometheus query broken failed: HTTP 400 from ")
    assert result.verdict == AnalysisVerdict.INCONCLUSIVE


def test_more_than_one_series_is_an_error_saying_to_aggregate(world: World) -> None:
    answer = world.prometheus.query(
        f'modelship_requests_total{{namespace="{NS}",code="200"}}', datetime.now(UTC)
    )
    assert answer.error is not None
    assert answer.error.startswith("2 series (")
    assert answer.error.endswith("not one: aggregate them, e.g. with sum(...)")


def test_a_scalar_and_nan_answers(world: World) -> None:
    assert world.prometheus.query("scalar(vector(0.25))", datetime.now(UTC)).value == 0.25
    nan = world.prometheus.query("vector(0) / vector(0)", datetime.now(UTC))
    assert (nan.value, nan.error) == (None, None), "0/0 is no data"


def test_an_unreachable_prometheus_is_an_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    answer = PrometheusClient(url).query("vector(1)", datetime.now(UTC))
    assert answer.error is not None
    assert answer.error.startswith(f"cannot reach {url}: ")


def test_a_prometheus_that_does_not_answer_in_time_is_an_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        answer = PrometheusClient(url, timeout=0.5).query("vector(1)", datetime.now(UTC))
        assert time.monotonic() - started < 5
    assert answer.error == f"no answer from {url} within 0.5 s"


def test_the_api_server_accepts_a_prometheus_analysis_with_metrics(
    cluster: Cluster, namespace: str
) -> None:
    obj = valid_object("prom-analysis")
    obj["spec"]["rollout"] = {"analysis": {"source": "prometheus", "metrics": [
        {"name": "accuracy", "query": 'avg(accuracy{revision="{{ revision }}"}) > 0', "min": 0.9},
        {"name": "drift", "query": 'max(max_over_time(drift{ns="{{namespace}}"}[{{ interval }}]))',
         "max": 0.25},
    ]}}  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    stored = json.loads(
        cluster.kubectl("get", "mdep", "prom-analysis", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["rollout"]["analysis"]["metrics"][1]["max"] == 0.25
