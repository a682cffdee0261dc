"""The e2e tier: Modelship installed by its Helm chart on the real local node.

A node started by ``make cluster-up`` (in .cache/cluster) is reused and left running; otherwise
one is started in a temporary directory and removed at the end. Images are built from the
Dockerfiles (cached by input hash) and loaded into the node before the chart is installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from e2e_models import pod_restarts
from localkube import Cluster, stack
from localkube.cluster import STATE_FILE

ROOT = Path(__file__).resolve().parents[2]
DEV_CLUSTER = ROOT / ".cache" / "cluster"


# What the tier needs on a warm machine (images cached or quick to build, node up in a minute).
E2E_BUDGET_S = 25 * 60


def _skip_if_ci_time_is_short() -> None:
    """CI has 90 minutes. After a cold build of every binary there may be too little left for
    this tier; say so plainly instead of being killed half-way (nothing is half-done then)."""
    deadline = os.environ.get("MODELSHIP_CI_DEADLINE")
    if deadline and float(deadline) - time.time() < E2E_BUDGET_S:
        minutes = (float(deadline) - time.time()) / 60
        pytest.skip(
            f"only {minutes:.0f} min of the CI budget left after cold builds; the e2e tier needs "
            f"{E2E_BUDGET_S // 60} min. It runs on the next (warm) CI run or with `make test-e2e`."
        )


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _skip_if_ci_time_is_short()
    if (DEV_CLUSTER / STATE_FILE).exists() and Cluster.attach(DEV_CLUSTER).with_node:
        yield Cluster.attach(DEV_CLUSTER)
        return
    local = Cluster(tmp_path_factory.mktemp("node"), with_node=True)
    local.start()
    try:
        yield local
    finally:
        local.destroy()


@pytest.fixture(scope="session")
def modelship(node_cluster: Cluster) -> Cluster:
    """The operator installed by the chart, watching a namespace with a store PVC."""
    node_cluster.kubectl("create", "namespace", stack.E2E_NAMESPACE, check=False)
    stack.build_and_load_images(node_cluster)
    stack.helm_install(node_cluster, namespaces=["default", stack.E2E_NAMESPACE])
    return node_cluster


OPERATORS = "app.kubernetes.io/component=operator"
LOG_LINES = 60
EVENT_LINES = 40


def _cluster_state(cluster: Cluster) -> str:
    """What a failed e2e test leaves for whoever reads CI's output: every pod, the operator
    pods' restarts and log tails (the previous container's too, after a restart), and the
    latest Events of the test namespace. Best effort: a broken cluster must not hide the test's
    own failure."""

    def run(*args: str) -> str:
        done = cluster.kubectl(*args, check=False, timeout=30)
        return (done.stdout or "") + (done.stderr or "")

    events = run("get", "events", "-n", stack.E2E_NAMESPACE, "--sort-by=.lastTimestamp")
    parts = [
        run("get", "pods", "-A", "-o", "wide"),
        f"--- latest {EVENT_LINES} Events in {stack.E2E_NAMESPACE}",
        "\n".join(events.splitlines()[-EVENT_LINES:]),
    ]
    for name, containers in pod_restarts(cluster, stack.OPERATOR_NAMESPACE, OPERATORS).items():
        restarts = sum(n for n, _ in containers)
        logs = ["logs", "-n", stack.OPERATOR_NAMESPACE, name, f"--tail={LOG_LINES}"]
        parts.append(f"--- operator pod {name}: {restarts} restarts; last {LOG_LINES} log lines")
        parts.append(run(*logs))
        if restarts:
            parts.append(f"--- {name}, the container before its last restart")
            parts.append(run(*logs, "--previous"))
    return "\n".join(parts)[:40000]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    cluster = getattr(item, "funcargs", {}).get("modelship")
    if report.when == "call" and report.failed and isinstance(cluster, Cluster):
        try:
            report.sections.append(("cluster state at the failure", _cluster_state(cluster)))
        except Exception as e:  # diagnostics only
            report.sections.append(("cluster state at the failure", f"not read: {e}"))
    return report
