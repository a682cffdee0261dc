"""Fixtures of the builder tests: small real models, plans, and fast benchmark settings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from builder_helpers import mlp_onnx
from modelship.api.artifact import ArtifactStore, BuildPlan, SourceAccess
from modelship.api.v1alpha1 import ModelSource, OptimizationSpec
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.io_settings import IOSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = Path(os.environ.get("MODELSHIP_MODELS_DIR") or ROOT.parent / "shared" / "models")
    if not (path / "all-MiniLM-L6-v2" / "model.onnx").is_file():
        pytest.fail(
            f"test models not found in {path}; set MODELSHIP_MODELS_DIR to the folder holding "
            "all-MiniLM-L6-v2/ (see shared/models/README.md)"
        )
    return path


@pytest.fixture
def fast_bench() -> BenchSettings:
    """Benchmarks long enough to rank tiny models, short enough for unit-speed tests."""
    return BenchSettings(seconds=0.05, warmup=1, min_runs=5, max_runs=200)


@pytest.fixture
def io_settings() -> IOSettings:
    return IOSettings(http_attempts=2, http_backoff_s=0.01, http_timeout_s=5)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A random 8-16-3 MLP: a real ONNX model small enough for seconds-fast builds."""
    rng = np.random.default_rng(7)
    model = mlp_onnx(
        [
            (rng.standard_normal((8, 16)), rng.standard_normal(16)),
            (rng.standard_normal((16, 3)), rng.standard_normal(3)),
        ]
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def make_plan(tmp_path: Path) -> Callable[..., BuildPlan]:
    """A plan for ``uri`` storing into tmp_path/store; keyword arguments go to the spec parts.
    Sources on loopback (the test servers) are allowed unless ``access`` says otherwise."""

    def make(
        uri: str,
        store: str | None = None,
        threads: int = 1,
        access: SourceAccess | None = None,
        **spec: Any,
    ) -> BuildPlan:
        source_keys = {"format", "sha256", "allow_pickle", "inputs", "s3"}
        source = {k: v for k, v in spec.items() if k in source_keys}
        optimization = {k: v for k, v in spec.items() if k not in source_keys}
        return BuildPlan(
            source=ModelSource(uri=uri, **source),
            optimization=OptimizationSpec(**optimization),
            threads=threads,
            store=ArtifactStore(uri=store or (tmp_path / "store").as_uri()),
            source_access=access or SourceAccess(internal=True),
        )

    return make
