"""Variants of one ONNX model: pruned, int8 dynamic, int8 static (QDQ) and fp16.

Each function reads an ONNX file and writes another; graph optimization (sessions.optimize_offline)
runs afterwards on every variant, so quantizers see the plain graph they know how to rewrite.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from modelship_runtime.builder.samples import Feed


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer warns through numpy (zero ranges of constant tensors) and the root logger
    (pre-processing hints); the accuracy gate judges the result, so these are noise here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# Weights of these ops are what magnitude pruning and quantization act on.
_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}


def _weight_names(model: onnx.ModelProto) -> set[str]:
    names = set()
    for node in model.graph.node:
        index = _WEIGHT_OPS.get(node.op_type)
        if index is not None and len(node.input) > index:
            names.add(node.input[index])
    return names


def prune(src: Path, dst: Path, sparsity: float) -> float:
    """Zero the smallest-magnitude share ``sparsity`` of each weight tensor; returns the share of
    all prunable weights that are zero afterwards.

    Dense CPU kernels do the same work on zeros, so this alone does not make inference faster;
    it shrinks compressed artifacts and prepares for sparse kernels.
    """
    model = onnx.load(str(src))
    targets = _weight_names(model)
    zeros = total = 0
    for init in model.graph.initializer:
        if init.name not in targets or init.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(init)
        if weights.ndim < 2:
            continue
        k = int(weights.size * sparsity)
        if k > 0:
            threshold = np.partition(np.abs(weights).reshape(-1), k - 1)[k - 1]
            weights = np.where(np.abs(weights) <= threshold, np.float32(0), weights)
            init.CopyFrom(numpy_helper.from_array(weights.astype(np.float32), init.name))
        zeros += int(np.count_nonzero(weights == 0))
        total += weights.size
    onnx.save(model, str(dst))
    return zeros / total if total else 0.0


def int8_dynamic(src: Path, dst: Path) -> None:
    """Weights int8 per output channel, activations quantized at run time (transformers).

    Per-tensor weight scales lose too much on MiniLM (cosine 0.96); per-channel keeps 0.99+.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our sample feeds."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._feeds = feeds
        self._it: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def int8_static(src: Path, dst: Path, feeds: list[Feed]) -> None:
    """QDQ int8 with activation ranges calibrated on ``feeds`` (CNNs, MLPs)."""
    with _quiet_quantizer():
        _quantize_static(src, dst, feeds)


def _quantize_static(src: Path, dst: Path, feeds: list[Feed]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        src,
        dst,
        _Reader(feeds),  # duck-typed CalibrationDataReader
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # u8 activations with s8 weights is the fast path of x86 int8 kernels (VNNI/AVX2).
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def fp16(src: Path, dst: Path) -> None:
    """Weights and activations in float16, inputs and outputs kept as the model declares them."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
