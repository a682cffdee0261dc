"""Small real models and manifests for the builder tests (plain functions, importable by name)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelship.api.artifact import Manifest, Signature
from modelship.api.v1alpha1 import TensorDatatype, TensorSpec
from modelship_runtime.store import file_sha256

A = TypeVar("A")


def run_all_at_once(target: Callable[[A], object], args: Sequence[A]) -> None:
    """``target(arg)`` for every arg, each in its own thread, released together by a barrier;
    the first exception of any thread is raised here."""
    barrier = threading.Barrier(len(args))
    errors: list[BaseException] = []

    def run(arg: A) -> None:
        try:
            barrier.wait()
            target(arg)
        except BaseException as e:  # re-raised in the calling thread below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def mlp_onnx(weights: list[tuple[np.ndarray, np.ndarray]], softmax: bool = True) -> onnx.ModelProto:
    """Dense layers (Gemm, Relu between them) as an ONNX graph, from (W[in,out], b[out]) pairs."""
    nodes, inits = [], []
    current = "input"
    for i, (w, b) in enumerate(weights):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        current = out
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            current = f"r{i}"
    final = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
        final = "probabilities"
    else:
        nodes.append(helper.make_node("Identity", [current], [final]))
    n_in, n_out = weights[0][0].shape[0], weights[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def manifest_for(model: Path, digest: str, variant: str = "fp32") -> Manifest:
    """A minimal valid manifest describing ``model``."""
    spec = TensorSpec(name="x", datatype=TensorDatatype.FP32, shape=[-1, 4])
    return Manifest(
        digest=digest,
        source_digest="cd" * 32,
        plan_key="ef" * 32,
        variant=variant,
        model_sha256=file_sha256(model),
        size_bytes=model.stat().st_size,
        source_size_bytes=1,
        signature=Signature(inputs=[spec], outputs=[spec]),
    )


def sentence_embeddings(
    session: ort.InferenceSession, tokenizer: Any, sentences: Sequence[str]
) -> np.ndarray:
    """MiniLM embeddings, one unpadded sentence a call, as a client would send them."""
    out = []
    for sentence in sentences:
        enc = tokenizer.encode(sentence)
        feed = {
            "input_ids": np.array([enc.ids], np.int64),
            "attention_mask": np.array([enc.attention_mask], np.int64),
            "token_type_ids": np.array([enc.type_ids], np.int64),
        }
        out.append(session.run(["sentence_embedding"], feed)[0][0])
    return np.stack(out)
