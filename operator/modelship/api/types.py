"""Scalar types shared by the API models: quantities, durations and their CRD schemas."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

# The Kubernetes resource.Quantity grammar (decimal or binary SI suffix, or an exponent).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _quantity_to_str(value: Any) -> Any:
    # YAML turns `cpu: 1` into an int; Kubernetes accepts both, so do we.
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as 500m or 1Gi, not a boolean")
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity such as ``500m``, ``2`` or ``1Gi``."""

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
"""A Go-style duration such as ``30s``, ``5m`` or ``1h30m``."""


def duration_seconds(value: str) -> float:
    """Seconds in a duration string that matched ``DURATION_PATTERN``."""
    return sum(float(n) * _DURATION_UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
