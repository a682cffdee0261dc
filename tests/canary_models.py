"""ONNX models made for canary tests and benchmarks: one MLP, optionally failing on part of its
inputs or several times slower, all with the same signature x[N,16] -> y[N,4]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GOOD_X = [-0.5] + [0.1] * 15
"""A row every version answers."""
BAD_X = [0.5] + [0.1] * 15
"""A row the failing version cannot take (its first feature is positive)."""


def canary_model(
    path: Path,
    seed: int,
    *,
    fails_on_positive: bool = False,
    slow: int = 0,
    perturb: float = 0.0,
) -> Path:
    """x[N,16] -> MLP -> y[N,4]; optionally failing for rows whose x[:,0] > 0 (a Gather out of
    bounds, an error inside the graph), or ``slow`` extra 1024x1024 matmuls per row, or with
    the output layer's weights perturbed by noise ``perturb`` times their scale (same graph,
    same speed, no errors: only its answers drift from the unperturbed model of that seed)."""
    rng = np.random.default_rng(seed)
    w1, b1, w2 = rng.normal(size=(16, 32)), rng.normal(size=(32,)), rng.normal(size=(32, 4))
    if perturb:
        w2 = w2 + perturb * np.random.default_rng(seed + 1).normal(size=w2.shape)
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y0"]),
    ]
    out = "y0"
    if fails_on_positive:
        inits += [
            numpy_helper.from_array(np.array([0], np.int64), "s0"),
            numpy_helper.from_array(np.array([1], np.int64), "s1"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array(100, np.int64), "far"),
            numpy_helper.from_array(np.zeros(4, np.float32), "table"),
        ]
        nodes += [
            helper.make_node("Slice", ["x", "s0", "s1", "axis1"], ["first"]),
            helper.make_node("Greater", ["first", "zero"], ["positive"]),
            helper.make_node("Cast", ["positive"], ["flag"], to=TensorProto.INT64),
            helper.make_node("Mul", ["flag", "far"], ["index"]),
            helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
            helper.make_node("Add", [out, "picked"], ["y1"]),
        ]
        out = "y1"
    if slow:
        inits += [
            numpy_helper.from_array(rng.normal(size=(16, 1024)).astype(np.float32) / 4, "up"),
            numpy_helper.from_array(np.eye(1024, dtype=np.float32), "eye"),
            numpy_helper.from_array(np.zeros((1024, 4), np.float32), "down"),
        ]
        nodes.append(helper.make_node("MatMul", ["x", "up"], ["z0"]))
        for i in range(slow):
            nodes.append(helper.make_node("MatMul", [f"z{i}", "eye"], [f"z{i + 1}"]))
        nodes += [
            helper.make_node("MatMul", [f"z{slow}", "down"], ["extra"]),
            helper.make_node("Add", [out, "extra"], ["y2"]),
        ]
        out = "y2"
    nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        nodes,
        "canary-mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def calibration_rows(n: int = 32) -> np.ndarray:
    """Rows every version runs on (the failing one needs x[:,0] <= 0 to be built)."""
    x = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    x[:, 0] = -np.abs(x[:, 0])
    return x
