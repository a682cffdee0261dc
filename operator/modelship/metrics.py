"""The operator's own endpoints: Prometheus metrics (MODELSHIP_METRICS_PORT) and the liveness
check (MODELSHIP_HEALTH_PORT, ``/healthz``), each on its own port and thread."""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from modelship.api.v1alpha1 import Phase


class OperatorMetrics:
    """Fixed label sets only: outcome and phase values come from small enums."""

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
        self.analyses = Counter(
            "modelship_operator_analyses_total",
            "Canary analyses by verdict (Pass, Fail, Inconclusive).",
            ["verdict"],
            registry=self.registry,
        )
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

    def observe_analysis(self, verdict: str, cpu_seconds: float) -> None:
        self.analyses.labels(verdict).inc()
        self.analysis_cpu_seconds.observe(cpu_seconds)

    def set_phases(self, phases: Tally[str]) -> None:
        for phase in Phase:
            self.objects.labels(phase.value).set(phases.get(phase.value, 0))

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)


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
