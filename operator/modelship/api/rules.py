"""Cross-field rules declared once, enforced twice: by pydantic and by the API server.

A rule carries a CEL expression (emitted into the CRD as ``x-kubernetes-validations``) and the
equivalent Python predicate. Both report the same message, which names the field and says what is
allowed, so ``kubectl apply`` and the Python API fail the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """One validation rule over a model (``self`` is the model in both CEL and Python)."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    """Dotted path below the model (``.minReplicas``) that the API server blames."""

    def as_validation(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


class APIModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> APIModel:
        broken = [r for r in type(self).rules if not r.check(self)]
        if broken:
            raise ValueError("; ".join(r.message for r in broken))
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
