"""The operator's own endpoints: Prometheus metrics (MODELSHIP_METRICS_PORT) and the liveness
check (MODELSHIP_HEALTH_PORT, ``/healthz``), each on its own port and thread."""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from modelship.api.v1alpha1 import AnalysisVerdict, CanaryPhase, CanaryStatus, Phase
from modelship.domain.lifecycle import State
from modelship.domain.release import RUNNING

Key = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""

BUILD_OUTCOMES = ("succeeded", "failed")
RELEASE_OUTCOMES = {CanaryPhase.SUCCEEDED: "promoted", CanaryPhase.ABORTED: "rolled_back"}


class OperatorMetrics:
    """Fixed label sets only: outcome, phase and verdict values come from small enums. The
    series labelled ``namespace``/``name`` (one set per ModelDeployment, for alerts and the
    dashboard, see docs/monitoring.md) exist from its first reconcile, at 0, so that
    ``increase()`` sees the first event, and go when it is deleted."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "modelship_operator_reconciles_total",
            "Reconciles of ModelDeployments by outcome (ok, error, invalid).",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "modelship_operator_reconcile_duration_seconds",
            "Time of one reconcile (observe, decide, act, write status).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.builds = Counter(
            "modelship_operator_builds_total",
            "Finished artifact builds by outcome (succeeded, failed).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in BUILD_OUTCOMES:
            self.builds.labels(outcome)
        self.build_seconds = Histogram(
            "modelship_operator_build_duration_seconds",
            "Duration of finished build Jobs, from start to completion.",
            ["outcome"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
            registry=self.registry,
        )
        self.api_requests = Counter(
            "modelship_operator_api_requests_total",
            "Requests the reconciler sent to the API server, by HTTP method (watches excluded).",
            ["method"],
            registry=self.registry,
        )
        self.objects = Gauge(
            "modelship_operator_objects",
            "ModelDeployments by phase, as last reconciled.",
            ["phase"],
            registry=self.registry,
        )
        for phase in Phase:
            self.objects.labels(phase.value)
        self.phase = Gauge(
            "modelship_operator_model_deployment_phase",
            "1 for the phase each ModelDeployment was last reconciled to, 0 for the others.",
            ["namespace", "name", "phase"],
            registry=self.registry,
        )
        self.analyses = Counter(
            "modelship_operator_analyses_total",
            "Canary analyses by ModelDeployment and verdict (Pass, Fail, Inconclusive).",
            ["namespace", "name", "verdict"],
            registry=self.registry,
        )
        self.releases = Counter(
            "modelship_operator_canary_releases_total",
            "Finished canary releases by ModelDeployment and outcome (promoted, rolled_back; "
            "a manual abort is a rollback too).",
            ["namespace", "name", "outcome"],
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "modelship_operator_canary_weight",
            "Percent of the traffic the canary revision of each ModelDeployment gets (0 when "
            "no release runs).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self._known: dict[Key, str | None] = {}
        """The ModelDeployments with series, and the phase last set (None: none yet)."""
        self._lock = threading.Lock()  # reconciles run in threads, removals in the event loop
        self.analysis_cpu_seconds = Histogram(
            "modelship_operator_analysis_cpu_seconds",
            "Process CPU time spent on one canary analysis (scraping every pod of both "
            "revisions, parsing, judging).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.leader = Gauge(
            "modelship_operator_leader",
            "1 while this replica reconciles (holds the leader Lease, or runs without leader "
            "election), 0 while it stands by.",
            registry=self.registry,
        )

    def count_request(self, method: str) -> None:
        self.api_requests.labels(method).inc()

    def observe_build(self, outcome: str, seconds: float | None) -> None:
        self.builds.labels(outcome).inc()
        if seconds is not None:
            self.build_seconds.labels(outcome).observe(seconds)

    def observe_analysis(self, namespace: str, name: str, verdict: str, cpu_seconds: float) -> None:
        self._ensure((namespace, name))
        self.analyses.labels(namespace, name, verdict).inc()
        self.analysis_cpu_seconds.observe(cpu_seconds)

    def observe_step(self, namespace: str, name: str, before: State, after: State) -> None:
        """What one reconcile's step changed: a release that ended, a build that failed, the
        canary's weight. Judged from the state the status held before, so a restart or a
        second reconcile of the same state counts nothing twice."""
        key = (namespace, name)
        self._ensure(key)
        canary = after.canary
        outcome = RELEASE_OUTCOMES.get(canary.phase) if canary is not None else None
        if canary is not None and outcome is not None and _ended(before.canary, canary):
            self.releases.labels(namespace, name, outcome).inc()
        failed = after.reason == "BuildFailed"
        if failed and (before.phase, before.reason) != (after.phase, after.reason):
            self.observe_build("failed", None)
        running = canary is not None and canary.phase in RUNNING
        self.canary_weight.labels(namespace, name).set(canary.weight if canary and running else 0)

    def set_phases(self, phases: Mapping[Key, str]) -> None:
        """The phase of every ModelDeployment this replica reconciles; the series of those
        no longer in ``phases`` (deleted) are removed."""
        tally = Tally(phases.values())
        for phase in Phase:
            self.objects.labels(phase.value).set(tally.get(phase.value, 0))
        with self._lock:
            gone = self._known.keys() - phases.keys()
            for key in gone:
                self._forget(key)
        for key, current in phases.items():
            self._ensure(key)
            if self._known.get(key) != current:
                self._known[key] = current
                for phase in Phase:
                    self.phase.labels(*key, phase.value).set(1 if phase.value == current else 0)

    def _ensure(self, key: Key) -> None:
        with self._lock:
            if key in self._known:
                return
            self._known[key] = None
        namespace, name = key
        for verdict in AnalysisVerdict:
            self.analyses.labels(namespace, name, verdict.value)
        for outcome in RELEASE_OUTCOMES.values():
            self.releases.labels(namespace, name, outcome)
        self.canary_weight.labels(namespace, name)

    def _forget(self, key: Key) -> None:
        del self._known[key]
        labels = {"namespace": key[0], "name": key[1]}
        for metric in (self.phase, self.analyses, self.releases, self.canary_weight):
            metric.remove_by_labels(labels)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)


def _ended(before: CanaryStatus | None, after: CanaryStatus) -> bool:
    """``after`` (finished) is news: the status did not already say this release ended so."""
    if before is None:
        return True
    return (before.revision, before.attempt, before.phase) != (after.revision, after.attempt,
                                                                after.phase)  # fmt: skip


log = logging.getLogger(__name__)


class Liveness:
    """What ``GET /healthz`` answers: 200 while the operator works or stands by for the
    leadership, 503 with the reason once it should be restarted (the controller's verdict)."""

    def __init__(self) -> None:
        self._check: Callable[[], str | None] = lambda: None

    def attach(self, check: Callable[[], str | None]) -> None:
        self._check = check

    def problem(self) -> str | None:
        return self._check()

    def serve(self, port: int, host: str = "") -> ThreadingHTTPServer | None:
        if not port:
            return None
        liveness = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/healthz":
                    self._answer(404, "not found: GET /healthz\n")
                    return
                problem = liveness.problem()
                self._answer(503 if problem else 200, f"{problem}\n" if problem else "ok\n")

            def _answer(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                if len(args) < 2 or str(args[1]) != "200":  # probes come often: failures only
                    log.warning("healthz: %s", format % args)

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:  # the probe then fails and says so; the operator still works
            log.error("cannot serve /healthz on port %d: %s", port, e)
            return None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
        return server
