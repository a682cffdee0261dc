"""The ModelDeployment models: defaults, round-trips, and every invalid spec rejected by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from modelship.api.quantity import parse_quantity
from modelship.api.types import duration_seconds
from modelship.api.v1alpha1 import (
    ModelDeployment,
    ModelDeploymentSpec,
    Precision,
    RolloutSpec,
    RolloutStrategy,
)
from spec_cases import BASE_SPEC, INVALID_CASES, InvalidCase, valid_object

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_defaults_fill_every_section() -> None:
    spec = ModelDeploymentSpec.model_validate(BASE_SPEC)
    assert spec.model.format == "onnx"
    assert spec.optimization.precision == Precision.AUTO
    assert spec.optimization.accuracy.min == 0.99
    assert spec.serving.grpc is True
    assert spec.serving.batching is None
    assert spec.scaling.target_cpu_utilization == 70
    assert spec.rollout.strategy == RolloutStrategy.CANARY
    assert [s.weight for s in spec.rollout.effective_steps] == [10, 50]


def test_round_trip_keeps_wire_names_and_values() -> None:
    obj = valid_object(
        spec={
            **BASE_SPEC,
            "serving": {"resources": {"requests": {"cpu": 1, "memory": "1Gi"}}},
            "scaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 60},
            "rollout": {"steps": [{"weight": 20, "pause": "1m"}, {"weight": 100}]},
        }
    )
    parsed = ModelDeployment.model_validate(obj)
    wire = parsed.to_wire()
    assert wire["spec"]["scaling"] == {
        "minReplicas": 2,
        "maxReplicas": 5,
        "targetCPUUtilization": 60,
    }
    assert wire["spec"]["serving"]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert ModelDeployment.model_validate(wire) == parsed


def test_rolling_strategy_has_no_canary_steps() -> None:
    assert RolloutSpec(strategy=RolloutStrategy.ROLLING).effective_steps == []


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_spec_is_rejected_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ValidationError) as info:
        ModelDeployment.model_validate(case.object())
    field = re.sub(r"\[(\d+)\]", r".\1", case.field)
    errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]
    # pydantic reports a cross-field rule at the model holding it; the message names the rest.
    assert any(
        field == loc or (field.startswith(loc) and field[len(loc) :].lstrip(".") in msg)
        for loc, msg in errors
    ), errors


def test_at_least_twenty_distinct_invalid_specs() -> None:
    assert len({c.id for c in INVALID_CASES}) >= 20


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        ModelDeployment.model_validate(doc)


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", 0.5), ("2", 2), ("1Gi", 2**30), ("1.5k", 1500), ("1e3", 1000), (4, 4)],
)
def test_quantities_parse_like_kubernetes(text: str | int, value: float) -> None:
    assert float(parse_quantity(text)) == value


def test_bad_quantity_says_what_is_expected() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("lots")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3
    assert all(yaml.safe_load(p.read_text())["kind"] == "ModelDeployment" for p in EXAMPLES)
