"""MiniLM (a real transformer): int8 dynamic quantization keeps mean cosine >= 0.99."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from builder_helpers import sentence_embeddings
from modelship.api.artifact import BuildPlan
from modelship.api.v1alpha1 import CalibrationSpec, Precision
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.pipeline import build
from modelship_runtime.store import DirectoryStore

MINILM_SHA256 = "972a1a385b889cb78244db74d1aeb2a2ae7680e22683aa41bcca2ecbbfb23239"

pytestmark = pytest.mark.slow


def _embed_sentences(model: Path, minilm: Path) -> np.ndarray:
    """Embeddings of sentences.txt, one unpadded sentence at a time, as a client would send them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    sentences = [s for s in (minilm / "sentences.txt").read_text().splitlines() if s]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sentence_embeddings(session, tokenizer, sentences)


def test_auto_picks_int8_dynamic_within_budget(
    models_dir: Path, make_plan: Callable[..., BuildPlan], tmp_path: Path
) -> None:
    minilm = models_dir / "all-MiniLM-L6-v2"
    plan = make_plan(
        (minilm / "model.onnx").as_uri(),
        sha256=MINILM_SHA256,
        precision=Precision.AUTO,
        calibration=CalibrationSpec(uri=(minilm / "reference.npz").as_uri(), samples=64),
    )
    result = build(plan, bench=BenchSettings(seconds=0.5), workdir=tmp_path)

    assert not result.reused
    assert result.digest == plan.pinned_digest
    assert result.variant == "int8-dynamic"
    manifest = result.manifest
    assert manifest.accuracy is not None
    assert manifest.accuracy.cosine_mean is not None
    assert manifest.accuracy.cosine_mean >= 0.99
    assert manifest.accuracy.samples == 64
    assert manifest.size_bytes < manifest.source_size_bytes / 3
    assert {v.name for v in manifest.variants} == {"fp32", "int8-dynamic", "int8-static"}
    assert [i.name for i in manifest.signature.inputs] == [
        "input_ids", "attention_mask", "token_type_ids"
    ]  # fmt: skip
    assert manifest.signature.inputs[0].shape == [-1, -1]
    assert set(manifest.calibration_stats) == {"input_ids", "attention_mask", "token_type_ids"}
    assert manifest.tool_versions["onnxruntime"] == ort.__version__

    # Independent check on the real sentences, unpadded, against the reference fp32 embeddings.
    artifact = Path(result.uri.removeprefix("file://"))
    embeddings = _embed_sentences(artifact / "model.onnx", minilm)
    reference = np.load(minilm / "reference.npz")["sentence_embedding"]
    cosine = np.sum(embeddings * reference, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.mean() >= 0.99, cosine.mean()

    # Same pinned inputs again: found in the store, nothing is rebuilt.
    again = build(plan, workdir=tmp_path)
    assert again.reused
    assert again.digest == result.digest
    store = DirectoryStore(artifact.parent)
    assert store.get_index(plan.request_key) is not None
