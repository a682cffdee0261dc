"""The checks every framework conversion passes: outputs against the framework's on the same
samples, and no operation the exporter left unconverted (pure: no framework needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from builder_helpers import mlp_onnx
from modelship.api.v1alpha1 import AccuracyMetric, AccuracySpec
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.frameworks import Converted, rename_io, unconverted_ops, verify
from modelship_runtime.builder.samples import Feed


def _model(tmp_path: Path) -> tuple[Path, list[Feed], list[list[np.ndarray]]]:
    rng = np.random.default_rng(3)
    layers = [(rng.standard_normal((8, 16)), rng.standard_normal(16)),
              (rng.standard_normal((16, 4)), rng.standard_normal(4))]  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(mlp_onnx(layers, softmax=False), str(path))
    session = ort.InferenceSession(str(path))
    feeds = [{"input": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(6)]
    outputs = [session.run(["logits"], f) for f in feeds]
    return path, feeds, outputs


def test_a_conversion_that_keeps_the_outputs_passes_with_its_figures(tmp_path: Path) -> None:
    path, feeds, outputs = _model(tmp_path)
    same = {id(f): o for f, o in zip(feeds, outputs, strict=True)}
    converted = Converted(path, "fake 1.0", lambda feed: {"logits": same[id(feed)][0] + 1e-7})
    accuracy = verify(converted, ["logits"], outputs, feeds, AccuracySpec())
    assert accuracy.samples == 6
    assert accuracy.cosine_min > 0.999999
    assert 0 < accuracy.max_abs_error < 1e-6


@pytest.mark.parametrize("metric", [AccuracyMetric.COSINE, AccuracyMetric.TOP1])
def test_a_conversion_that_changes_the_outputs_fails_naming_the_output_and_figure(
    tmp_path: Path, metric: AccuracyMetric
) -> None:
    path, feeds, outputs = _model(tmp_path)
    flipped = {id(f): o for f, o in zip(feeds, outputs, strict=True)}
    converted = Converted(path, "fake 1.0", lambda feed: {"logits": -flipped[id(feed)][0]})
    with pytest.raises(BuildError) as caught:
        verify(converted, ["logits"], outputs, feeds, AccuracySpec(metric=metric, min=0.99))
    assert caught.value.reason == "ConversionMismatch"
    message = caught.value.message
    assert "does not compute what the fake 1.0 model does" in message
    assert f"{metric.value} " in message
    assert "below the budget" in message
    assert "logits: cosine min -1.0000" in message


def test_outputs_of_another_shape_are_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    path, feeds, outputs = _model(tmp_path)
    converted = Converted(path, "fake 1.0", lambda feed: {"logits": np.zeros((1, 5))})
    with pytest.raises(BuildError, match=r"shape \[1, 4\], the fake 1.0 model's \[1, 5\]"):
        verify(converted, ["logits"], outputs, feeds, AccuracySpec())


def test_a_framework_that_fails_on_the_samples_says_what_to_give(tmp_path: Path) -> None:
    path, feeds, outputs = _model(tmp_path)

    def refuse(feed: Feed) -> dict[str, np.ndarray]:
        raise ValueError("expected rank 4\nmore")

    with pytest.raises(BuildError) as caught:
        verify(Converted(path, "fake 1.0", refuse), ["logits"], outputs, feeds, AccuracySpec())
    assert caught.value.reason == "ConversionFailed"
    assert "(ValueError: expected rank 4)" in caught.value.message
    assert "optimization.calibration" in caught.value.message


def test_operations_an_exporter_left_unconverted_are_named_with_their_count() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("TFL_Erfinv", ["a"], ["b"]),
        helper.make_node("TFL_Erfinv", ["b"], ["c"]),
        helper.make_node("Gelu", ["c"], ["d"], domain="com.microsoft"),
        helper.make_node("Mystery", ["d"], ["y"], domain="my.ops"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [io[0]], [io[1]]))
    assert unconverted_ops(model) == ["TFL_Erfinv (x2)", "my.ops.Mystery"]


def test_renaming_inputs_and_outputs_renames_every_reference(tmp_path: Path) -> None:
    path, feeds, outputs = _model(tmp_path)
    model = onnx.load(str(path))
    rename_io(model, {"input": "features", "logits": "output_0"})
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString())
    (got,) = session.run(["output_0"], {"features": feeds[0]["input"]})
    assert np.array_equal(got, outputs[0][0])
