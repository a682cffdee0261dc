"""The Argo CD health check (Lua) against sample ModelDeployments, run by Lua 5.1 like Argo CD's
gopher-lua, and the argocd-cm snippet that carries the same script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from modelship.api.v1alpha1 import ModelDeploymentStatus

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "argocd" / "health-modelship.io_ModelDeployment.lua"
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
KEY = "modelship.io_ModelDeployment"
T0 = "2025-01-01T00:00:00Z"


def condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": T0,
    }


def mdep(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm", "namespace": "ml", "generation": generation},
        "spec": {"model": {"uri": "pvc://models/m.onnx"}},
    }
    if status is not None:
        ModelDeploymentStatus.model_validate(status)  # samples keep the real status shape
        body["status"] = status
    return body


def status(
    phase: str, generation: int, *, ready: bool, degraded: bool, message: str
) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": [
            condition(
                "Progressing", phase in {"Building", "Deploying", "Progressing"}, phase, message
            ),
            condition(
                "Degraded",
                degraded,
                phase if degraded else "AsExpected",
                message if degraded else "no faults seen",
            ),
            condition("Ready", ready, phase, message),
        ],
    }


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    return dict(result.items())


@pytest.mark.parametrize(
    ("obj", "expected_status", "expected_message"),
    [
        pytest.param(
            mdep(1, None),
            "Progressing",
            "Waiting for the operator to observe the ModelDeployment",
            id="no-status-yet",
        ),
        pytest.param(
            mdep(
                1,
                status(
                    "Building", 1, ready=False, degraded=False, message="building job build-abc"
                ),
            ),
            "Progressing",
            "Building: building job build-abc",
            id="building",
        ),
        pytest.param(
            mdep(
                2, status("Progressing", 2, ready=False, degraded=False, message="rolling 1/2 pods")
            ),
            "Progressing",
            "Progressing: rolling 1/2 pods",
            id="rolling",
        ),
        pytest.param(
            mdep(3, status("Ready", 3, ready=True, degraded=False, message="serving sha256:ab")),
            "Healthy",
            "serving sha256:ab",
            id="ready",
        ),
        pytest.param(
            mdep(4, status("Ready", 3, ready=True, degraded=False, message="serving sha256:ab")),
            "Progressing",
            "Waiting for the operator to observe generation 4 (status describes generation 3)",
            id="ready-but-generation-lags",
        ),
        pytest.param(
            mdep(4, status("Degraded", 3, ready=False, degraded=True, message="OOMKilled")),
            "Progressing",
            "Waiting for the operator to observe generation 4 (status describes generation 3)",
            id="old-fault-of-a-changed-spec",
        ),
        pytest.param(
            mdep(2, status("Degraded", 2, ready=False, degraded=True, message="pod x: OOMKilled")),
            "Degraded",
            "pod x: OOMKilled",
            id="degraded",
        ),
        pytest.param(
            mdep(
                2, status("Failed", 2, ready=False, degraded=False, message="spec.model.uri: bad")
            ),
            "Degraded",
            "spec.model.uri: bad",
            id="failed",
        ),
    ],
)
def test_health(obj: dict[str, Any], expected_status: str, expected_message: str) -> None:
    assert health(obj) == {"status": expected_status, "message": expected_message}


def test_degraded_condition_wins_over_a_stale_ready_condition() -> None:
    body = mdep(5, status("Ready", 5, ready=True, degraded=False, message="serving"))
    body["status"]["conditions"][1] = condition(
        "Degraded", True, "CrashLoopBackOff", "pod y crashes"
    )
    assert health(body) == {"status": "Degraded", "message": "pod y crashes"}


def test_argocd_cm_carries_the_same_script_and_ignores_replicas() -> None:
    data = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    assert data[f"resource.customizations.health.{KEY}"] == SCRIPT.read_text(), (
        "deploy/argocd/argocd-cm.yaml is stale: copy the .lua script into it"
    )
    ignore = yaml.safe_load(data[f"resource.customizations.ignoreDifferences.{KEY}"])
    assert ignore == {"jsonPointers": ["/spec/replicas"]}
