"""Models made in PyTorch and TensorFlow for the builder and e2e tiers.

This venv has no framework: tests/frameworks/models.py makes the models (and the framework's
own outputs for fixed inputs) in the converter venv (.venv-convert, ``make venv-convert``,
which holds what the converter images hold)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from modelship.api.v1alpha1 import ModelFormat

ROOT = Path(__file__).resolve().parents[1]
FACTORY = ROOT / "tests" / "frameworks" / "models.py"
MODELS = {
    "cnn-pt2": ("cnn.pt2", ModelFormat.PYTORCH, "image"),
    "cnn-pickle": ("cnn.pt", ModelFormat.PYTORCH, "image"),
    "mlp-keras": ("mlp.keras", ModelFormat.KERAS, "features"),
    "mlp-savedmodel": ("mlp_savedmodel.tar.gz", ModelFormat.TENSORFLOW, "features"),
    "mlp-tflite": ("mlp.tflite", ModelFormat.TFLITE, "features"),
}
"""Good models: kind -> (file, format, input name). Each also has ``<kind>.npz`` (``inputs``,
``outputs``: the framework's) and ``<kind>-samples.npz`` (calibration layout)."""
BROKEN = ("broken-pt2", "pickle-missing-class", "savedmodel-nosig", "tflite-custom-op")


def converter_python() -> Path:
    path = Path(os.environ.get("MODELSHIP_CONVERTER_PYTHON") or ROOT / ".venv-convert/bin/python")
    if not path.is_file():
        pytest.fail(
            f"no converter venv at {path}: run `make venv-convert` (PyTorch, TensorFlow and "
            "tf2onnx, as in the converter images), or set MODELSHIP_CONVERTER_PYTHON"
        )
    return path


def make_models(out: Path, *kinds: str) -> Path:
    """The models of ``kinds`` in ``out``, each made in its own framework."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(converter_python()), str(FACTORY), str(out), *kinds], check=True, timeout=300
    )
    return out
