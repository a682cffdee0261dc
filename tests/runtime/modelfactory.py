"""Small ONNX models and artifact directories for runtime tests, built with onnx.helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 64
CLASSES = 10


def mlp(path: Path, batch_dim: str | int = "batch", seed: int = 0) -> Path:
    """A digits-sized MLP: input FP32 [batch, 64] -> probabilities FP32 [batch, 10], label INT64."""
    return mlp_from_weights(path, mlp_weights(seed), batch_dim)


def mlp_weights(seed: int = 0) -> list[np.ndarray]:
    """[w1, b1, w2, b2] of :func:`mlp`."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, (FEATURES, 32)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 32).astype(np.float32)
    w2 = rng.normal(0, 0.2, (32, CLASSES)).astype(np.float32)
    b2 = rng.normal(0, 0.1, CLASSES).astype(np.float32)
    return [w1, b1, w2, b2]


def perturbed_mlp(directory: Path, scale: float = 0.5, seed: int = 1) -> Path:
    """An artifact directory with :func:`mlp`'s model, its weights plus Gaussian noise of
    ``scale`` times each tensor's spread: same signature and speed, different answers."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = [w + rng.normal(0, scale * float(w.std()), w.shape) for w in mlp_weights()]
    mlp_from_weights(directory / "model.onnx", weights)
    return directory


def mlp_from_weights(
    path: Path, weights: list[np.ndarray], batch_dim: str | int = "batch", label: bool = True
) -> Path:
    """One hidden ReLU layer from [w1, b1, w2, b2]: input [batch, in] -> probabilities
    [batch, classes] (softmax) and, with ``label``, the arg-max INT64 [batch]."""
    w1, b1, w2, b2 = (np.asarray(a, np.float32) for a in weights)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    classes = w2.shape[1]
    outputs = [
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch_dim, classes])
    ]
    if label:
        nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, [batch_dim]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, w1.shape[0]])],
        outputs,
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """What the MLP computes (seed 0), in numpy, for checking served results."""
    w1, b1, w2, b2 = mlp_weights()
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"probabilities": e / e.sum(axis=1, keepdims=True), "label": logits.argmax(axis=1)}


def artifact(directory: Path, batch_dim: str | int = "batch", stats: bool = True) -> Path:
    """An artifact directory: model.onnx + manifest.json with calibration statistics."""
    directory.mkdir(parents=True, exist_ok=True)
    mlp(directory / "model.onnx", batch_dim)
    edges = [float(e) for e in np.linspace(-3, 3, 11)]
    normal = np.diff([0.5 * (1 + float(np.tanh(0.8 * e))) for e in edges])  # ~N(0,1) shape
    manifest = {
        "digest": "sha256:" + "0" * 64,
        "source_digest": "1" * 64,
        "plan_key": "2" * 64,
        "variant": "fp32",
        "size_bytes": (directory / "model.onnx").stat().st_size,
        "source_size_bytes": (directory / "model.onnx").stat().st_size,
        "signature": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
            ],
        },
        "calibration_stats": {
            "input": {
                "mean": 0.0,
                "std": 1.0,
                "min": -3.0,
                "max": 3.0,
                "count": 6400,
                "histogram_edges": edges,
                "histogram_counts": [int(c * 6400) + 1 for c in normal],
            }
        }
        if stats
        else {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def embedding(path: Path, vocab: int = 100, width: int = 4) -> Path:
    """ids INT64 [batch, seq] -> mean of a lookup table FP32 [batch, width]; an id >= vocab
    passes validation but fails inside the model (Gather out of range)."""
    table = np.arange(vocab * width, dtype=np.float32).reshape(vocab, width) / 100
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
            helper.make_node("ReduceMean", ["rows"], ["embedding"], axes=[1], keepdims=0),
        ],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def slow(directory: Path, layers: int = 60, width: int = 1024) -> Path:
    """A deliberately slow model (a deep tanh MLP, one shared weight): x FP32 [batch, width]."""
    directory.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(0).normal(0, width**-0.5, (width, width)).astype(np.float32)
    nodes, current = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [current, "w"], [f"m{i}"]))
        current = "y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [current]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))
    return directory
