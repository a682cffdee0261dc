"""A scikit-learn pipeline converted with skl2onnx predicts exactly what scikit-learn predicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelship.api.artifact import BuildPlan
from modelship.api.v1alpha1 import ModelFormat, Precision
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.pipeline import build

pytestmark = pytest.mark.slow


def test_pipeline_predictions_identical(
    make_plan: Callable[..., BuildPlan], tmp_path: Path, fast_bench: BenchSettings
) -> None:
    iris = load_iris()
    x = iris.data.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, iris.target, test_size=0.4, random_state=0)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(x_train, y_train)
    source = tmp_path / "pipeline.joblib"
    joblib.dump(pipeline, source)

    plan = make_plan(
        source.as_uri(), format=ModelFormat.SKLEARN, allow_pickle=True, precision=Precision.FP32
    )
    result = build(plan, bench=fast_bench, workdir=tmp_path)

    artifact = Path(result.uri.removeprefix("file://")) / "model.onnx"
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    labels, probabilities = session.run(None, {"input": x_test})
    np.testing.assert_array_equal(labels, pipeline.predict(x_test))
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(x_test), atol=1e-5)
    assert result.manifest.signature.inputs[0].shape == [-1, 4]
