"""Our Argo CD customizations run by Argo CD itself, offline.

``argocd admin settings resource-overrides health|list-actions|run-action`` loads the scripts
from an ``argocd-cm`` file and runs them in Argo CD's own Lua VM and sandbox (gopher-lua, with
the libraries Argo CD opens), so what passes here is what Argo CD does with them. Every case of
health_test.yaml and actions/action_test.yaml runs through it; the unit tier runs the same cases
in a Lua 5.1 interpreter, in seconds. The binary is Argo CD v3.6.1 built from its Go module by
``hack/build-k8s.sh argocd`` (cached by version).
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

import argocd_cm
from localkube import binaries

# The first test may wait for the Argo CD build CI starts in the background (cold, with the
# tests running beside it, that is longer than the usual 600 s limit).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

DIR = argocd_cm.CUSTOMIZATIONS
HEALTH_CASES = yaml.safe_load((DIR / "health_test.yaml").read_text())["tests"]
ACTION_CASES = yaml.safe_load((DIR / "actions" / "action_test.yaml").read_text())


@pytest.fixture(scope="module")
def argocd_cm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed argocd-cm.yaml keys as the whole ConfigMap the command reads."""
    data = yaml.safe_load(argocd_cm.ARGOCD_CM.read_text())["data"]
    path = tmp_path_factory.mktemp("argocd") / "argocd-cm.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                "data": data,
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def overrides(argocd_cm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = binaries.ensure(("argocd",))["argocd"]
    home = tmp_path_factory.mktemp("home")

    def run(*args: str) -> str:
        result = subprocess.run(
            [
                str(binary),
                "admin",
                "settings",
                "resource-overrides",
                *args,
                f"--argocd-cm-path={argocd_cm_file}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"ARGOCD_BINARY_NAME": "argocd", "HOME": str(home), "PATH": os.environ["PATH"]},
            check=False,
            cwd=DIR,
        )
        assert result.returncode == 0, f"argocd {' '.join(args)}: {result.stderr}"
        return result.stdout

    return run


def _health(output: str) -> dict[str, str]:
    fields = dict(
        line.split(": ", 1)
        for line in output.splitlines()
        if line.startswith(("STATUS", "MESSAGE"))
    )
    return {"status": fields["STATUS"], "message": fields.get("MESSAGE", "")}


@pytest.mark.parametrize("case", HEALTH_CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_argocd_assesses_health_as_health_test_yaml_says(
    case: dict[str, Any], overrides: Any
) -> None:
    assert _health(overrides("health", case["inputPath"])) == case["healthStatus"]


@pytest.mark.parametrize(
    "case", ACTION_CASES["discoveryTests"], ids=lambda c: Path(c["inputPath"]).stem
)
def test_argocd_offers_the_actions_discovery_says(case: dict[str, Any], overrides: Any) -> None:
    listed = overrides("list-actions", str(Path("actions") / case["inputPath"]))
    rows = [line.split() for line in listed.splitlines() if line and not line.startswith("{")]
    assert rows[0] == ["NAME", "DISABLED"]
    assert {name: disabled == "true" for name, disabled in rows[1:]} == {
        action["name"]: action.get("disabled", False) for action in case["result"]
    }


def _lines(obj: dict[str, Any]) -> Counter[str]:
    return Counter(line.strip() for line in yaml.safe_dump(obj).splitlines())


@pytest.mark.parametrize(
    "case",
    ACTION_CASES["actionTests"],
    ids=lambda c: f"{c['action']}-{Path(c['inputPath']).stem}",
)
def test_argocd_runs_each_action_to_the_expected_object(
    case: dict[str, Any], overrides: Any
) -> None:
    """Argo CD prints the changed lines of the object's YAML; they must be exactly the lines
    that differ between the input and the expected output of action_test.yaml."""
    actions = DIR / "actions"
    before = yaml.safe_load((actions / case["inputPath"]).read_text())
    after = yaml.safe_load((actions / case["expectedOutputPath"]).read_text())
    output = overrides("run-action", str(Path("actions") / case["inputPath"]), case["action"])
    assert "Following fields have been changed" in output, output
    lines = output.splitlines()
    removed = Counter(line[2:].strip() for line in lines if line.startswith("< "))
    added = Counter(line[2:].strip() for line in lines if line.startswith("> "))
    assert added, "the action changed nothing"
    assert removed == _lines(before) - _lines(after)
    assert added == _lines(after) - _lines(before)
