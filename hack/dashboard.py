"""The Grafana dashboard of the monitoring kit, built with the Grafana Foundation SDK and written
to charts/modelship/dashboards/modelship.json (the chart ships it as a ConfigMap).

    .venv/bin/python hack/dashboard.py          # write the file
    .venv/bin/python hack/dashboard.py --check  # exit 1 when the committed file differs

One model at a time (variables: data source, namespace, model; the model is the ModelDeployment's
name): traffic, errors and latency per revision, batching, input drift, and the release (canary
weight, analysis verdicts, outcomes, phase). :func:`queries` lists every panel's PromQL, and
:func:`instantiate` fills in the variables, for tests that run them against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

OUTPUT = (
    Path(__file__).resolve().parents[1] / "charts" / "modelship" / "dashboards" / "modelship.json"
)
UID = "modelship"
DRIFT_THRESHOLD = 0.25
"""The chart's default monitoring.rules.drift.threshold, drawn on the drift panel."""

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL = 'namespace="$namespace", model="$model"'
"""The runtime's series of the chosen model (its ``model`` label is the ModelDeployment's name)."""
OWNER = 'namespace="$namespace", name="$model"'
"""The operator's series of the chosen ModelDeployment."""
RATE = "[$__rate_interval]"


def _query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _requests(selector: str = "") -> str:
    return f"sum by (revision) (rate(modelship_requests_total{{{MODEL}{selector}}}{RATE}))"


def _quantile(q: float, metric: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (revision, le) (rate({metric}_bucket{{{MODEL}}}{RATE})))"
    )


def _graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery) -> Any:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .fill_opacity(10)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _stat(title: str, description: str, *targets: prometheus.Dataquery) -> Any:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .height(5)
        .span(8)
        .graph_mode(common.BigValueGraphMode.NONE)
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    errors = _requests(', code=~"5.."')
    # "or ... * 0": a revision without errors has no 5xx series, and shows 0 rather than nothing.
    error_ratio = f"({errors} or {_requests()} * 0) / {_requests()}"
    builder = (
        db.Dashboard("Modelship")
        .uid(UID)
        .description(
            "One served model: traffic, errors and latency per revision, batching, input "
            "drift, and its canary releases (charts/modelship, docs/monitoring.md)."
        )
        .tags(["modelship"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(modelship_requests_total, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            db.QueryVariable("model")
            .label("Model")
            .datasource(DATASOURCE)
            .query('label_values(modelship_requests_total{namespace="$namespace"}, model)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_row(db.Row("Traffic"))
        .with_panel(
            _graph(
                "Requests by revision",
                "Inference requests per second (REST and gRPC) each revision answered.",
                "reqps",
                _query(_requests(), "{{revision}}"),
            )
        )
        .with_panel(
            _graph(
                "Errors by revision",
                "Share of the requests answered with a server error (5xx; gRPC statuses are "
                "mapped to HTTP codes).",
                "percentunit",
                _query(error_ratio, "{{revision}}"),
            )
        )
        .with_panel(
            _graph(
                "Latency by revision",
                "p50 and p99 of the request latency, from receipt to response.",
                "s",
                _query(_quantile(0.5, "modelship_request_duration_seconds"), "p50 {{revision}}"),
                _query(
                    _quantile(0.99, "modelship_request_duration_seconds"), "p99 {{revision}}", "B"
                ),
            )
        )
        .with_panel(
            _graph(
                "Pods by revision",
                "Serving pods Prometheus scrapes, by the revision they run.",
                "short",
                _query(f"count by (revision) (modelship_server_info{{{MODEL}}})", "{{revision}}"),
            )
        )
        .with_row(db.Row("Batching"))
        .with_panel(
            _graph(
                "Batch size by revision",
                "Items per model call of the dynamic batcher (serving.batching): mean and p99.",
                "short",
                _query(
                    f"sum by (revision) (rate(modelship_batch_size_sum{{{MODEL}}}{RATE})) / "
                    f"sum by (revision) (rate(modelship_batch_size_count{{{MODEL}}}{RATE}))",
                    "mean {{revision}}",
                ),
                _query(_quantile(0.99, "modelship_batch_size"), "p99 {{revision}}", "B"),
            )
        )
        .with_panel(
            _graph(
                "Queue time by revision",
                "Time a request waited in the batching queue: p50 and p99.",
                "s",
                _query(_quantile(0.5, "modelship_batch_queue_seconds"), "p50 {{revision}}"),
                _query(_quantile(0.99, "modelship_batch_queue_seconds"), "p99 {{revision}}", "B"),
            )
        )
        .with_row(db.Row("Inputs"))
        .with_panel(
            _graph(
                "Input drift by revision",
                "Drift of each input against the calibration data: PSI over the calibration "
                f"histogram (above {DRIFT_THRESHOLD} is a major shift), or the mean shift in "
                "standard deviations. The line is the alert's default threshold.",
                "short",
                _query(
                    f"max by (revision, input) (modelship_input_drift_score{{{MODEL}}})",
                    "{{input}} {{revision}}",
                ),
            )
            .thresholds(
                db.ThresholdsConfig()
                .mode(ThresholdsMode.ABSOLUTE)
                .steps([Threshold(None, "green"), Threshold(DRIFT_THRESHOLD, "red")])
            )
            .thresholds_style(
                common_builder.GraphThresholdsStyleConfig().mode(
                    common.GraphThresholdsStyleMode.DASHED
                )
            )
        )
        .with_row(db.Row("Release"))
        .with_panel(
            _graph(
                "Canary weight",
                "Percent of the traffic the canary revision gets (0 when no release runs).",
                "percent",
                _query(f"max(modelship_operator_canary_weight{{{OWNER}}})", "canary"),
            )
            .min(0)
            .max(100)
        )
        .with_panel(
            _graph(
                "Analysis verdicts",
                "Canary analyses per interval, by verdict (Pass, Fail, Inconclusive).",
                "short",
                _query(
                    f"sum by (verdict) (increase(modelship_operator_analyses_total{{{OWNER}}}"
                    f"{RATE}))",
                    "{{verdict}}",
                ),
            ).draw_style(common.GraphDrawStyle.BARS)
        )
        .with_panel(
            _stat(
                "Releases",
                "Canary releases that ended in the time range, by outcome.",
                _query(
                    "sum by (outcome) (increase(modelship_operator_canary_releases_total"
                    f"{{{OWNER}}}[$__range]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            _stat(
                "Phase",
                "The ModelDeployment's phase, as the operator last reconciled it.",
                _query(
                    f"max by (phase) (modelship_operator_model_deployment_phase{{{OWNER}}}) == 1",
                    "{{phase}}",
                ),
            ).text_mode(common.BigValueTextMode.NAME)
        )
    )
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number  # Grafana wants them unique; the SDK leaves them unset or 0
    encoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return encoded


def render(dashboard: dict[str, Any] | None = None) -> str:
    return json.dumps(build() if dashboard is None else dashboard, indent=2, sort_keys=True) + "\n"


def queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, rows' panels included."""
    found = []
    stack = list((build() if dashboard is None else dashboard).get("panels") or [])
    while stack:
        panel = stack.pop(0)
        stack[:0] = panel.get("panels") or []
        for target in panel.get("targets") or []:
            found.append((str(panel["title"]), str(target["expr"])))
    return found


def instantiate(
    expr: str, namespace: str, model: str, rate_interval: str = "1m", range_: str = "15m"
) -> str:
    """``expr`` as Grafana sends it, for one model and time range."""
    return (
        expr.replace("$namespace", namespace)
        .replace("$model", model)
        .replace("$__rate_interval", rate_interval)
        .replace("$__range", range_)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run .venv/bin/python hack/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({len(queries())} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
