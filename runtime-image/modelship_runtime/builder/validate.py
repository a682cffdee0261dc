"""Compare a variant's outputs with the original model's on the same samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from modelship.api.artifact import Accuracy
from modelship.api.v1alpha1 import AccuracyMetric, AccuracySpec
from modelship_runtime.agreement import cosine, max_abs_error, top1_matches
from modelship_runtime.builder.samples import Feed

Outputs = list[list[np.ndarray]]


def run_all(session: ort.InferenceSession, feeds: Sequence[Feed]) -> Outputs:
    """Every float output of the model for every sample (non-tensor outputs are skipped)."""
    names = [o.name for o in session.get_outputs()]
    result = []
    for feed in feeds:
        outs = session.run(names, feed)
        floats = [o for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f"]
        result.append([np.asarray(o, np.float64) for o in floats])
    return result


def compare(reference: Outputs, candidate: Outputs, spec: AccuracySpec) -> Accuracy:
    """Cosine (per sample over all float outputs), max abs error and top-1 agreement.

    Top-1 uses the first float output whose last axis has more than one element (class scores
    or logits); it is None when the model has no such output.
    """
    if not reference or not reference[0]:
        raise ValueError("the model has no float tensor outputs to compare")
    cosines, max_abs = [], 0.0
    agree = rows = 0
    primary = next((i for i, o in enumerate(reference[0]) if o.ndim and o.shape[-1] > 1), None)
    for ref, cand in zip(reference, candidate, strict=True):
        a = np.concatenate([o.reshape(-1) for o in ref])
        b = np.concatenate([o.reshape(-1) for o in cand])
        cosines.append(cosine(a, b))
        max_abs = max(max_abs, max_abs_error(a, b))
        if primary is not None:
            matched, counted = top1_matches(ref[primary], cand[primary])
            agree += matched
            rows += counted
    top1 = agree / rows if rows else None
    cosine_mean = float(np.mean(cosines))
    if spec.metric == AccuracyMetric.COSINE:
        value = cosine_mean
    else:
        value = top1 if top1 is not None else 0.0
    return Accuracy(
        metric=spec.metric.value,
        value=value,
        cosine_mean=cosine_mean,
        cosine_min=float(np.min(cosines)),
        max_abs_error=max_abs,
        top1_agreement=top1,
        samples=len(reference),
    )


def verdict(accuracy: Accuracy, spec: AccuracySpec) -> str | None:
    """Why ``accuracy`` is outside the budget, or None when it is within."""
    if spec.metric == AccuracyMetric.TOP1 and accuracy.top1_agreement is None:
        return "metric top1 needs an output with class scores; use metric cosine for this model"
    if accuracy.value < spec.min:
        return (
            f"{spec.metric.value} {accuracy.value:.4f} is below the budget "
            f"optimization.accuracy.min {spec.min} on {accuracy.samples} samples"
        )
    if spec.max_abs_error is not None and (accuracy.max_abs_error or 0.0) > spec.max_abs_error:
        return (
            f"max abs error {accuracy.max_abs_error:.4g} exceeds the budget "
            f"optimization.accuracy.maxAbsError {spec.max_abs_error}"
        )
    return None
