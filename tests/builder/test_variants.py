"""Pruning and fp16 on a small real model; the sparsity reached is reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from modelship.api.artifact import BuildPlan
from modelship.api.v1alpha1 import AccuracySpec, Precision, PruningSpec
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.pipeline import build


def test_pruning_reaches_target_and_reports_it(
    tmp_path: Path, make_plan: Callable[..., BuildPlan], tiny_model: Path, fast_bench: BenchSettings
) -> None:
    plan = make_plan(
        tiny_model.as_uri(),
        precision=Precision.FP32,
        pruning=PruningSpec(sparsity=0.5),
        accuracy=AccuracySpec(min=0.5),
    )
    result = build(plan, bench=fast_bench, workdir=tmp_path)
    report = result.manifest.variants[0]
    assert report.sparsity is not None
    assert abs(report.sparsity - 0.5) < 0.02
    model = onnx.load(result.uri.removeprefix("file://") + "/model.onnx")
    weights = [
        numpy_helper.to_array(i) for i in model.graph.initializer if i.dims and len(i.dims) == 2
    ]
    zeros = sum(int(np.count_nonzero(w == 0)) for w in weights)
    assert zeros >= 0.45 * sum(w.size for w in weights)


def test_fp16_when_asked(
    tmp_path: Path, make_plan: Callable[..., BuildPlan], tiny_model: Path, fast_bench: BenchSettings
) -> None:
    plan = make_plan(tiny_model.as_uri(), precision=Precision.FP16)
    result = build(plan, bench=fast_bench, workdir=tmp_path)
    assert result.variant == "fp16"
    assert result.manifest.accuracy is not None
    assert result.manifest.accuracy.cosine_mean is not None
    assert result.manifest.accuracy.cosine_mean > 0.999
    # Inputs and outputs stay fp32 for clients.
    assert result.manifest.signature.inputs[0].datatype == "FP32"
