"""ONNX Runtime sessions configured the way the serving pods configure them."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from modelship.api.v1alpha1 import GraphLevel

LEVELS = {
    GraphLevel.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    GraphLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    GraphLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    GraphLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def options(threads: int, level: GraphLevel) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = LEVELS[level]
    opts.log_severity_level = 3  # errors only: ORT's warnings are noise in build logs
    return opts


def session(
    path: Path, threads: int = 1, level: GraphLevel = GraphLevel.ALL
) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path), sess_options=options(threads, level), providers=["CPUExecutionProvider"]
    )


def optimize_offline(src: Path, dst: Path, level: GraphLevel) -> None:
    """Save ONNX Runtime's optimized graph, so serving pods skip the work at load time."""
    opts = options(1, level)
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
