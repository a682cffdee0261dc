"""Models from PyTorch, TensorFlow, Keras and TF Lite: built as the build Job builds them.

The models are made in their frameworks by tests/frameworks/models.py, and the builder runs in
the converter venv (.venv-convert, `make venv-convert`: the packages of the converter images),
as ``python -m modelship_runtime build``, the build Job's entry point. This process has no
framework: it checks the published ONNX artifact with onnxruntime against the outputs the
framework itself computed for the same inputs, and runs the publish step itself, as the
runtime image (without any framework) does in a build pod.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from framework_helpers import BROKEN, MODELS, converter_python, make_models
from modelship.api.artifact import MANIFEST_FILE, MODEL_FILE, ArtifactStore, BuildPlan, Manifest
from modelship.api.v1alpha1 import (
    AccuracySpec,
    CalibrationSpec,
    ModelFormat,
    ModelSource,
    OptimizationSpec,
    Precision,
    TensorDatatype,
    TensorSpec,
)
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.pipeline import build, fetch_step, publish_step
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.store import digest_hex

pytestmark = pytest.mark.slow

GOOD = tuple(MODELS)
CNN_INPUTS = [TensorSpec(name="image", datatype=TensorDatatype.FP32, shape=[-1, 3, 32, 32])]
TOLERANCE = 1e-4
"""fp32 ONNX against the framework's float32 outputs (measured: 6e-8 to 2e-7)."""


@pytest.fixture(scope="session")
def converter() -> Path:
    return converter_python()


@pytest.fixture(scope="session")
def framework_models(converter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model of the factory, made once in its own framework (and a file of bytes that
    are no model at all)."""
    models = make_models(tmp_path_factory.mktemp("framework-models"), *GOOD, *BROKEN)
    (models / "garbage.tflite").write_bytes(b"these bytes are no flatbuffer" * 8)
    return models


def _plan(
    uri: str, fmt: ModelFormat, store: Path, samples: Path | None, **source: Any
) -> BuildPlan:
    return BuildPlan(
        source=ModelSource(uri=uri, format=fmt, **source),
        optimization=OptimizationSpec(
            precision=Precision.FP32,
            calibration=CalibrationSpec(uri=samples.as_uri()) if samples else None,
        ),
        threads=1,
        store=ArtifactStore(uri=store.as_uri()),
    )


def _run_builder(
    python: Path, plan: BuildPlan, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """``python -m modelship_runtime build`` in the converter venv: exit code, its result line
    (stdout holds nothing else) and its progress (stderr)."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json(by_alias=True, exclude_none=True))
    done = subprocess.run(
        [str(python), "-m", "modelship_runtime", "build", "--plan", str(plan_file), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout is the result line only, got: {done.stdout!r}"
    return done.returncode, json.loads(lines[0]), done.stderr


def _build(
    python: Path, models: Path, kind: str, tmp_path: Path, **source: Any
) -> tuple[dict[str, Any], str]:
    name, fmt, _ = MODELS[kind]
    plan = _plan(
        (models / name).as_uri(), fmt, tmp_path / "store", models / f"{kind}-samples.npz", **source
    )
    code, result, progress = _run_builder(python, plan, tmp_path)
    assert code == 0, f"{result} {progress[-2000:]}"
    return result, progress


@pytest.mark.parametrize("kind", GOOD)
def test_a_framework_model_is_served_as_onnx_that_answers_like_the_framework(
    kind: str, converter: Path, framework_models: Path, tmp_path: Path
) -> None:
    source = {"allow_pickle": True, "inputs": CNN_INPUTS} if kind == "cnn-pickle" else {}
    result, progress = _build(converter, framework_models, kind, tmp_path, **source)
    artifact = tmp_path / "store" / digest_hex(result["digest"])
    manifest = Manifest.model_validate_json((artifact / MANIFEST_FILE).read_text())
    input_name = MODELS[kind][2]
    (declared,) = manifest.signature.inputs
    assert declared.name == input_name
    assert declared.shape[0] == -1, "the batch dimension stays dynamic, so batching works"
    # The framework's own outputs for 8 samples, against the artifact run as one batch of 8.
    with np.load(framework_models / f"{kind}.npz") as data:
        inputs, expected = data["inputs"], data["outputs"]
    session = ort.InferenceSession(str(artifact / MODEL_FILE), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {input_name: inputs})
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    # The build said it compared with the framework, on the calibration samples.
    assert "the ONNX model computes what the" in progress
    assert "on 8 samples" in progress


def test_the_convert_step_runs_the_framework_and_the_publish_step_needs_none(
    converter: Path, framework_models: Path, tmp_path: Path, fast_bench: BenchSettings
) -> None:
    """The build pod: fetch (runtime image), convert (torch converter image), publish (runtime
    image, which has no torch: this process)."""
    claim = tmp_path / "pvc" / "models"
    claim.mkdir(parents=True)
    for name in ("cnn.pt2", "cnn-pt2-samples.npz"):
        (claim / name).write_bytes((framework_models / name).read_bytes())
    io = IOSettings(pvc_root=tmp_path / "pvc")
    plan = _plan(
        "pvc://models/cnn.pt2",
        ModelFormat.PYTORCH,
        tmp_path / "store",
        None,
    ).model_copy(
        update={
            "optimization": OptimizationSpec(
                precision=Precision.FP32,
                calibration=CalibrationSpec(uri="pvc://models/cnn-pt2-samples.npz"),
            )
        }
    )
    sources, converted = tmp_path / "sources", tmp_path / "converted"
    converted.mkdir()
    fetch_step(plan, sources, io, lambda _: None)
    code, result, progress = _run_builder(
        converter,
        plan,
        tmp_path,
        *("--step", "convert", "--sources", str(sources), "--converted", str(converted)),
        env={"MODELSHIP_PVC_ROOT": str(tmp_path / "pvc")},
    )
    assert (code, result) == (0, {"step": "convert", "ok": True}), progress
    assert "the ONNX model computes what the torch" in progress
    published = publish_step(plan, sources, converted, io=io, bench=fast_bench)
    with np.load(framework_models / "cnn-pt2.npz") as data:
        inputs, expected = data["inputs"], data["outputs"]
    model = tmp_path / "store" / digest_hex(published.digest) / MODEL_FILE
    (got,) = ort.InferenceSession(str(model)).run(None, {"image": inputs})
    assert np.abs(got - expected).max() < TOLERANCE


BrokenCase = tuple[str, ModelFormat, dict[str, Any], str, str]
BROKEN_CASES: list[BrokenCase] = [
    ("truncated.pt2", ModelFormat.PYTORCH, {}, "InvalidModel", "damaged zip archive"),
    ("cnn.pt", ModelFormat.PYTORCH, {}, "PickleNotAllowed", "allowPickle: true"),
    ("cnn.pt", ModelFormat.PYTORCH, {"allow_pickle": True}, "InvalidModel", "declares no inputs"),
    (
        "missing_class.pt",
        ModelFormat.PYTORCH,
        {"allow_pickle": True, "inputs": CNN_INPUTS},
        "InvalidModel",
        "No module named 'modelship_missing_module'",
    ),
    ("nosig_savedmodel.tar.gz", ModelFormat.TENSORFLOW, {}, "InvalidModel", "no serving signature"),
    ("custom_op.tflite", ModelFormat.TFLITE, {}, "ConversionFailed", "TFL_Erfinv"),
    ("garbage.tflite", ModelFormat.TFLITE, {}, "InvalidModel", "not a TF Lite flatbuffer"),
    ("mlp.keras", ModelFormat.TFLITE, {}, "UnsupportedFormat", "has no .tflite file"),
    ("cnn.pt2", ModelFormat.KERAS, {}, "InvalidModel", "not a loadable Keras model"),
]


@pytest.mark.parametrize(("name", "fmt", "source", "reason", "says"), BROKEN_CASES)
def test_a_broken_framework_model_fails_with_a_message_naming_the_problem(
    name: str,
    fmt: ModelFormat,
    source: dict[str, Any],
    reason: str,
    says: str,
    converter: Path,
    framework_models: Path,
    tmp_path: Path,
) -> None:
    plan = _plan((framework_models / name).as_uri(), fmt, tmp_path / "store", None, **source)
    code, result, progress = _run_builder(converter, plan, tmp_path)
    assert code == 1, progress[-2000:]
    assert result["reason"] == reason, result
    assert says in result["error"]
    assert "Traceback" not in progress
    assert not (tmp_path / "store").exists() or not any(
        p.name != "index" for p in (tmp_path / "store").iterdir()
    ), "nothing is published"


def test_a_savedmodel_that_is_one_file_says_to_pack_the_directory(
    converter: Path, framework_models: Path, tmp_path: Path
) -> None:
    plan = _plan((framework_models / "mlp.tflite").as_uri(), ModelFormat.TENSORFLOW, tmp_path, None)
    code, result, _ = _run_builder(converter, plan, tmp_path)
    assert code == 1
    assert result["reason"] == "InvalidModel"
    assert "a SavedModel is a directory" in result["error"]


MakePlan = Callable[..., BuildPlan]


@pytest.mark.parametrize("fmt", [ModelFormat.PYTORCH, ModelFormat.KERAS])
def test_the_runtime_image_names_the_converter_image_a_framework_format_needs(
    fmt: ModelFormat, framework_models: Path, make_plan: MakePlan, tmp_path: Path
) -> None:
    """This process is the runtime image's environment: no torch, no tensorflow."""
    name = "cnn.pt2" if fmt == ModelFormat.PYTORCH else "mlp.keras"
    plan = make_plan((framework_models / name).as_uri(), format=fmt)
    with pytest.raises(BuildError) as caught:
        build(plan, workdir=tmp_path)
    assert caught.value.reason == "ConversionFailed"
    family = "torch" if fmt == ModelFormat.PYTORCH else "tensorflow"
    assert f"MODELSHIP_{family.upper()}_CONVERTER_IMAGE" in caught.value.message


def test_a_conversion_outside_the_accuracy_budget_fails_with_the_measured_figure(
    converter: Path, framework_models: Path, tmp_path: Path
) -> None:
    """Float32 rounding differs between TF Lite's kernels and onnxruntime's (about 1e-7): a
    budget tighter than that fails the build on the real comparison, naming the output."""
    plan = _plan(
        (framework_models / "mlp.tflite").as_uri(),
        ModelFormat.TFLITE,
        tmp_path / "store",
        framework_models / "mlp-tflite-samples.npz",
    )
    plan = plan.model_copy(
        update={
            "optimization": plan.optimization.model_copy(
                update={"accuracy": AccuracySpec(max_abs_error=1e-12)}
            )
        }
    )
    code, result, _ = _run_builder(converter, plan, tmp_path)
    assert code == 1
    assert result["reason"] == "ConversionMismatch", result
    message = result["error"]
    assert "does not compute what the TF Lite (tensorflow 2.21.0) model does" in message
    assert "exceeds the budget optimization.accuracy.maxAbsError 1e-12" in message
    assert "output_0: cosine min" in message
    assert not (tmp_path / "store").exists() or not any(
        p.name != "index" for p in (tmp_path / "store").iterdir()
    )
