"""Smoke check of a converter environment: a tiny model per family, converted to ONNX and run.

Usage: python smoke.py FAMILY [FAMILY ...]   (torch, tensorflow)

hack/converter-env.sh venv runs it in the host venv (both families); in a converter image, which
does not carry this file, run its text: docker run --rm --entrypoint python IMAGE -c "$(cat
runtime-image/converters/smoke.py)" torch. Each check compares onnxruntime's answer with the
framework's own and prints one line.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def check_torch(tmp: Path) -> str:
    import onnxscript
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3).eval()
    x = torch.randn(5, 8)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    assert program is not None
    program.save(str(tmp / "linear.onnx"))
    got = run_onnx((tmp / "linear.onnx").read_bytes(), x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    diff = float(np.abs(got - want).max())
    assert diff < 1e-5, diff
    return (
        f"torch {torch.__version__} (onnxscript {onnxscript.__version__}): nn.Linear -> "
        f"torch.onnx.export(dynamo=True) -> onnxruntime, max |diff| {diff:.1e}"
    )


def check_tensorflow(tmp: Path) -> str:
    import keras
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import tf_loader

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(3)])
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    want = np.asarray(model(x))
    # Keras 3 has no tf.keras graph for tf2onnx.convert.from_keras; a SavedModel is the way in.
    model.export(str(tmp / "saved"), verbose=False)
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        str(tmp / "saved"),
        None,
        None,
        tag="serve",
        signatures=["serving_default"],
        return_tensors_to_rename=True,
    )
    proto, _ = tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=inputs,
        output_names=outputs,
        tensors_to_rename=renames,
        opset=17,
    )
    got = run_onnx(proto.SerializeToString(), x)
    diff = float(np.abs(got - want).max())
    assert diff < 1e-5, diff
    return (
        f"tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}: "
        f"Dense -> SavedModel -> tf2onnx (opset 17) -> onnxruntime, max |diff| {diff:.1e}"
    )


CHECKS: dict[str, Callable[[Path], str]] = {"torch": check_torch, "tensorflow": check_tensorflow}


def main(families: list[str]) -> int:
    if not families or any(f not in CHECKS for f in families):
        print(f"usage: python smoke.py FAMILY [FAMILY ...]  ({', '.join(CHECKS)})", file=sys.stderr)
        return 2
    for family in families:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"    {CHECKS[family](Path(tmp))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
