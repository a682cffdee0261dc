"""The committed CRD YAML is exactly what the models generate, and it is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.api.crd import CRD_FILE, crd_manifest, render

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/modelship/crds"])
def test_committed_crd_matches_the_models(directory: str) -> None:
    committed = (ROOT / directory / CRD_FILE).read_text()
    assert committed == render(), f"{directory}/{CRD_FILE} is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def _schema() -> dict[str, Any]:
    version = crd_manifest()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"])


def test_every_field_has_a_description() -> None:
    missing = [
        p
        for p, node in _walk(_schema(), "")
        if p not in ("", ".metadata") and not p.endswith("[]") and not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema(), ""):
        assert ("$ref" not in node and "anyOf" not in node) or node.get(
            "x-kubernetes-int-or-string"
        ), path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert "title" not in node, path


def test_subresources_columns_and_names() -> None:
    spec = crd_manifest()["spec"]
    version = spec["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Ready",
        "Weight",
        "Variant",
        "Age",
    ]
    assert spec["names"]["shortNames"] == ["mdep"]
    assert spec["names"]["categories"] == ["modelship"]


def test_yaml_parses_back_to_the_manifest() -> None:
    assert yaml.safe_load(render()) == crd_manifest()
