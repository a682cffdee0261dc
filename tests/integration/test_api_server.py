"""The generated CRD on a real kube-apiserver: examples apply, invalid specs are rejected with
the offending field named, and printer columns, scale and explain work through kubectl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from localkube import Cluster
from spec_cases import INVALID_CASES, InvalidCase, valid_object

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def _apply(cluster: Cluster, namespace: str, obj: dict[str, object], check: bool = True):  # type: ignore[no-untyped-def]
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=check)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_applies_cleanly(cluster: Cluster, namespace: str, path: Path) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    assert "created" in result.stdout
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    stored = json.loads(cluster.kubectl("get", "mdep", name, "-n", namespace, "-o", "json").stdout)
    assert (
        stored["spec"]["model"]["uri"] == yaml.safe_load(path.read_text())["spec"]["model"]["uri"]
    )


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_api_server_rejects_invalid_spec_naming_the_field(
    cluster: Cluster, namespace: str, case: InvalidCase
) -> None:
    result = _apply(cluster, namespace, case.object(), check=False)
    assert result.returncode != 0, f"the API server accepted {case.id}"
    assert case.field in result.stderr, result.stderr
    missing = cluster.kubectl("get", "mdep", case.name, "-n", namespace, check=False)
    assert missing.returncode != 0


def test_defaults_are_applied_by_the_schema(cluster: Cluster, namespace: str) -> None:
    _apply(cluster, namespace, valid_object("defaults"))
    stored = json.loads(
        cluster.kubectl("get", "mdep", "defaults", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["model"]["format"] == "onnx"
    assert stored["spec"]["scaling"]["targetCPUUtilization"] == 70


def test_get_shows_printer_columns(cluster: Cluster, namespace: str) -> None:
    _apply(cluster, namespace, valid_object("columns"))
    status = {
        "status": {
            "phase": "Ready",
            "readyReplicas": 2,
            "artifact": {"digest": "sha256:" + "a" * 64, "variant": "int8-dynamic"},
            "canary": {
                "revision": "r2", "digest": "sha256:" + "b" * 64, "weight": 10,
                "phase": "Progressing", "startedAt": "2026-12-01T12:00:00Z",
                "stepStartedAt": "2026-12-01T12:00:00Z",
            },
        }
    }
    cluster.kubectl(
        "patch",
        "mdep",
        "columns",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    lines = cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "READY", "WEIGHT", "VARIANT", "AGE"]
    assert lines[1].split()[:5] == ["columns", "Ready", "2", "10", "int8-dynamic"]
    by_category = cluster.kubectl("get", "modelship", "-n", namespace).stdout
    assert "columns" in by_category


def test_scale_subresource(cluster: Cluster, namespace: str) -> None:
    _apply(cluster, namespace, valid_object("scaled"))
    cluster.kubectl(
        "patch",
        "mdep",
        "scaled",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 1, "selector": "modelship.io/name=scaled"}}),
    )
    cluster.kubectl("scale", "mdep/scaled", "-n", namespace, "--replicas=3")
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/modelship.io/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale",
        ).stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3
    assert scale["status"] == {"replicas": 1, "selector": "modelship.io/name=scaled"}
    stored = json.loads(
        cluster.kubectl("get", "mdep", "scaled", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["replicas"] == 3


def test_status_is_a_subresource(cluster: Cluster, namespace: str) -> None:
    obj = valid_object("statusless")
    obj["status"] = {"phase": "Ready"}
    _apply(cluster, namespace, obj)
    stored = json.loads(
        cluster.kubectl("get", "mdep", "statusless", "-n", namespace, "-o", "json").stdout
    )
    assert "status" not in stored or "phase" not in stored["status"]


def test_explain_prints_our_descriptions(cluster: Cluster) -> None:
    out = " ".join(cluster.kubectl("explain", "modeldeployment.spec.rollout").stdout.split())
    assert "How new versions are released: canary steps under metric analysis" in out
    assert "steps <[]Object>" in out
    assert "Canary steps with strictly increasing weights" in out
    deep = cluster.kubectl("explain", "mdep.spec.rollout.analysis.minRequests").stdout
    assert "fewer is Inconclusive, never a failure" in " ".join(deep.split())
