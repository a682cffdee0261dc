"""Which variants a plan asks for, and which one wins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelship.api.artifact import VariantReport
from modelship.api.v1alpha1 import OptimizationSpec, Precision
from modelship_runtime.builder.errors import BuildError


@dataclass
class Candidate:
    """A built variant on disk together with its judgement."""

    report: VariantReport
    path: Path | None


def wanted(spec: OptimizationSpec) -> list[Precision]:
    """Variants to build. fp32 is always built: it is the baseline every speed-up is against.

    auto leaves out fp16: ONNX Runtime's CPU provider has few fp16 kernels, so it is slower than
    fp32 there; ask for it explicitly to get it.
    """
    if spec.precision == Precision.AUTO:
        out = [Precision.FP32, Precision.INT8_DYNAMIC]
        if spec.calibration is not None and spec.calibration.uri is not None:
            out.append(Precision.INT8_STATIC)
        return out
    if spec.precision == Precision.FP32:
        return [Precision.FP32]
    return [Precision.FP32, spec.precision]


def choose(spec: OptimizationSpec, candidates: list[Candidate]) -> Candidate:
    """The requested variant, or for auto the fastest (p50) one within the accuracy budget."""
    if spec.precision != Precision.AUTO:
        chosen = next(c for c in candidates if c.report.name == spec.precision.value)
        if not chosen.report.accepted:
            raise BuildError(
                f"variant {chosen.report.name} rejected: {chosen.report.reason}. Relax "
                "optimization.accuracy, give calibration data closer to real traffic, or use "
                "precision auto",
                reason="AccuracyBudget",
            )
        return chosen
    accepted = [c for c in candidates if c.report.accepted and c.report.latency is not None]
    if not accepted:
        reasons = "; ".join(f"{c.report.name}: {c.report.reason}" for c in candidates)
        raise BuildError(
            f"no variant is within the accuracy budget ({reasons}); relax "
            "optimization.accuracy or check the calibration data",
            reason="AccuracyBudget",
        )
    return min(accepted, key=lambda c: c.report.latency.p50_ms if c.report.latency else 0.0)
