"""Generate the ModelDeployment CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema (draft 2020-12); the API server wants a structural OpenAPI v3 schema.
The conversion inlines ``$ref``, turns ``Optional`` unions into plain types, maps numeric
``exclusiveMinimum`` to the OpenAPI boolean form, drops keys the API server rejects, and adds
each model's rules as ``x-kubernetes-validations``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from modelship.api import v1alpha1 as api
from modelship.api.rules import APIModel

CRD_FILE = f"{api.PLURAL}.{api.GROUP}.yaml"
_DROP = {"title", "examples"}


def _model_rules() -> dict[str, list[dict[str, str]]]:
    """Validations per model, keyed by the name pydantic uses in ``$defs``."""
    found: dict[str, list[dict[str, str]]] = {}
    stack: list[type[BaseModel]] = [api.ModelDeployment]
    while stack:
        model = stack.pop()
        if model.__name__ in found:
            continue
        rules = getattr(model, "rules", ()) if issubclass(model, APIModel) else ()
        found[model.__name__] = [r.as_validation() for r in rules]
        for field in model.model_fields.values():
            stack.extend(_models_in(field.annotation))
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


class _Converter:
    def __init__(self, defs: dict[str, Any], rules: dict[str, list[dict[str, str]]]) -> None:
        self.defs = defs
        self.rules = rules

    def convert(self, node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        description = node.pop("description", None)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self.convert(self.defs[name])
            if self.rules.get(name):
                target["x-kubernetes-validations"] = self.rules[name]
            target.update({k: v for k, v in node.items() if k != "default"})
            node = target | ({"default": node["default"]} if "default" in node else {})
        variants = node.pop("anyOf", None)
        if variants is not None:
            node = self._union(variants, node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "default" and value is None:
                continue
            if key == "properties":
                out[key] = {k: self.convert(v) for k, v in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = self.convert(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
            else:
                out[key] = value
        if "properties" in out:
            out.pop("additionalProperties", None)
            out["type"] = "object"
        if description is not None:
            out["description"] = description
        elif "description" in node:
            out["description"] = node["description"]
        return out

    def _union(self, variants: list[dict[str, Any]], rest: dict[str, Any]) -> dict[str, Any]:
        concrete = [v for v in variants if v.get("type") != "null"]
        if rest.get("x-kubernetes-int-or-string"):
            return {"x-kubernetes-int-or-string": True, **rest}
        if len(concrete) != 1:
            raise ValueError(f"unsupported union in the API schema: {variants}")
        merged = self.convert(concrete[0])
        merged.update(rest)
        return merged


def openapi_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a ModelDeployment object."""
    raw = api.ModelDeployment.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(raw.pop("$defs", {}), _model_rules())
    schema = converter.convert(raw)
    props = schema["properties"]
    props["apiVersion"] = {
        "type": "string",
        "description": "APIVersion of this object: modelship.io/v1alpha1.",
    }
    props["kind"] = {"type": "string", "description": "Kind of this object: ModelDeployment."}
    # The API server forbids anything but the type here: metadata has its own schema.
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    schema["description"] = (api.ModelDeployment.__doc__ or "").strip()
    schema["x-kubernetes-validations"] = converter.rules[api.ModelDeployment.__name__]
    schema.pop("default", None)
    return schema


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition, as a plain dict ready for YAML."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelship"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Weight", "type": "integer", "jsonPath": ".status.canary.weight"},
                        {
                            "name": "Variant",
                            "type": "string",
                            "jsonPath": ".status.artifact.variant",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


class _NoAliases(yaml.SafeDumper):
    """Writes a list the schema shares (an enum used by two fields) out in full each time:
    anchors and aliases are valid YAML, but not what a person reading a CRD expects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    header = "# Generated by `make crds` from operator/modelship/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.dump(crd_manifest(), Dumper=_NoAliases, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the ModelDeployment CRD YAML.")
    parser.add_argument("outputs", nargs="+", type=Path, help="directories to write into")
    args = parser.parse_args(argv)
    text = render()
    for directory in args.outputs:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CRD_FILE).write_text(text)
        print(f"wrote {directory / CRD_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
