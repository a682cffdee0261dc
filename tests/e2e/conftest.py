"""The e2e tier: Modelship installed by its Helm chart on the real local node.

A node started by ``make cluster-up`` (in .cache/cluster) is reused and left running; otherwise
one is started in a temporary directory and removed at the end. Images are built from the
Dockerfiles (cached by input hash) and loaded into the node before the chart is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localkube import Cluster, stack
from localkube.cluster import STATE_FILE

ROOT = Path(__file__).resolve().parents[2]
DEV_CLUSTER = ROOT / ".cache" / "cluster"


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
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
