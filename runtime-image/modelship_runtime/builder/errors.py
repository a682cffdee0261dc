"""The one error type of the builder: a message for people and a reason for the operator."""

from __future__ import annotations

REASONS = frozenset(
    {
        "FetchFailed",
        "SourceDigestMismatch",
        "UnsafeArchive",
        "InvalidModel",
        "UnsupportedFormat",
        "PickleNotAllowed",
        "ConversionFailed",
        "ConversionMismatch",
        "InvalidCalibration",
        "OptimizationFailed",
        "AccuracyBudget",
        "StoreFailed",
        "InvalidPlan",
        "OutOfSpace",
        "BuildFailed",
    }
)
"""Every reason a build may end with (docs/builder.md)."""


class BuildError(Exception):
    """A build that cannot succeed as asked; the message says what is wrong and how to fix it.

    ``reason`` is a CamelCase word the operator can put into a Condition (FetchFailed,
    InvalidModel, AccuracyBudget, ...).
    """

    def __init__(self, message: str, *, reason: str = "BuildFailed") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
