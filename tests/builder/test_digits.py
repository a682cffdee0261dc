"""An MLP trained on scikit-learn's digits: int8 static (QDQ) stays within 1 point of fp32."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from builder_helpers import mlp_onnx
from modelship.api.artifact import BuildPlan
from modelship.api.v1alpha1 import AccuracyMetric, AccuracySpec, CalibrationSpec, Precision
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.pipeline import build

pytestmark = pytest.mark.slow


def _accuracy(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"input": x})[0]
    return float(np.mean(probabilities.argmax(1) == y))


# Full convergence is not the point: a well-trained-enough classifier is.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_int8_static_within_one_point(
    make_plan: Callable[..., BuildPlan], tmp_path: Path, fast_bench: BenchSettings
) -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0)
    clf.fit(x_train, y_train)
    model = tmp_path / "digits.onnx"
    onnx.save(mlp_onnx(list(zip(clf.coefs_, clf.intercepts_, strict=True))), str(model))
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, input=x_train[:256])

    plan = make_plan(
        model.as_uri(),
        precision=Precision.INT8_STATIC,
        calibration=CalibrationSpec(uri=calibration.as_uri(), samples=256),
        accuracy=AccuracySpec(metric=AccuracyMetric.TOP1, min=0.97),
    )
    result = build(plan, bench=fast_bench, workdir=tmp_path)

    assert result.variant == "int8-static"
    artifact = Path(result.uri.removeprefix("file://")) / "model.onnx"
    quantized = onnx.load(str(artifact))
    int8_ops = {"QLinearMatMul", "QGemm", "QuantizeLinear"}
    assert any(n.op_type in int8_ops for n in quantized.graph.node)
    fp32_accuracy = _accuracy(model, x_test, y_test)
    int8_accuracy = _accuracy(artifact, x_test, y_test)
    assert fp32_accuracy > 0.9
    assert abs(fp32_accuracy - int8_accuracy) <= 0.01, (fp32_accuracy, int8_accuracy)
    assert result.manifest.accuracy is not None
    assert result.manifest.accuracy.top1_agreement is not None
    assert result.manifest.accuracy.top1_agreement >= 0.97
