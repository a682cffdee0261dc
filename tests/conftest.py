"""Fixtures shared by every tier.

``cluster`` starts a real control plane (etcd, kube-apiserver, kube-controller-manager) once per
test session in a temporary directory, installs the generated CRD, and tears everything down at
the end. Set LOCALKUBE_DIR to a cluster started by ``make cluster-up`` to reuse it instead (the
fast inner loop while developing). Each test gets its own namespace from ``namespace``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localkube import Cluster
from modelship.api.crd import crd_manifest

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "crds" / "modeldeployments.modelship.io.yaml"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reuse = os.environ.get("LOCALKUBE_DIR")
    if reuse:
        local = Cluster.attach(Path(reuse))
    else:
        local = Cluster(tmp_path_factory.mktemp("localkube"))
        local.start()
    try:
        local.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
        local.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/modeldeployments.modelship.io",
        )
        _wait_for_published_schema(local)
        yield local
    finally:
        if not reuse:
            local.destroy()


def _wait_for_published_schema(local: Cluster, timeout_s: float = 60) -> None:
    """`Established` precedes the OpenAPI publication that `kubectl explain` reads."""
    expected = " ".join(
        crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
            "properties"
        ]["rollout"]["description"].split()
    )
    deadline = time.monotonic() + timeout_s
    while True:
        out = local.kubectl("explain", "modeldeployment.spec.rollout", check=False).stdout
        if expected in " ".join(out.split()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the CRD schema was not published within {timeout_s}s")
        time.sleep(0.2)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def kube_api(cluster: Cluster) -> Iterator[Any]:
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()
