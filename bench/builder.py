"""Builder benchmark: what `precision: auto` gives MiniLM with no tuning, measured side by side.

1. Builds all-MiniLM-L6-v2 with the builder (precision auto, default accuracy budget cosine 0.99,
   calibration = the 64 real sentences padded to 128 tokens) and times the build.
2. Runs fp32 (the source model) and the chosen artifact alternately, request by request, at
   sequence lengths 16 and 128, so both see the same machine load; reports p50/p99 and the ratio.
3. Embeds the 64 real sentences (unpadded) with the artifact: mean/min cosine to the fp32
   reference embeddings.

Usage: .venv/bin/python bench/builder.py [--threads N] [--models-dir DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from builder_helpers import sentence_embeddings  # noqa: E402
from modelship.api.artifact import ArtifactStore, BuildPlan  # noqa: E402
from modelship.api.v1alpha1 import (  # noqa: E402
    CalibrationSpec,
    ModelSource,
    OptimizationSpec,
    Precision,
)
from modelship_runtime.builder.pipeline import build  # noqa: E402
from modelship_runtime.builder.sessions import session  # noqa: E402


def _feed(tokenizer: Tokenizer, text: str, length: int) -> dict[str, np.ndarray]:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=length)
    words = text
    while len(tokenizer.encode(words).ids) < length:
        words += " " + text
    enc = tokenizer.encode(words)
    return {
        "input_ids": np.array([enc.ids], np.int64),
        "attention_mask": np.array([enc.attention_mask], np.int64),
        "token_type_ids": np.array([enc.type_ids], np.int64),
    }


def _calibration(tokenizer: Tokenizer, sentences: list[str], path: Path) -> None:
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=128)
    tokenizer.enable_truncation(max_length=128)
    enc = tokenizer.encode_batch(sentences)
    np.savez(
        path,
        input_ids=np.array([e.ids for e in enc], np.int64),
        attention_mask=np.array([e.attention_mask for e in enc], np.int64),
        token_type_ids=np.array([e.type_ids for e in enc], np.int64),
    )
    tokenizer.no_padding()


def _side_by_side(
    a: ort.InferenceSession, b: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int
) -> dict[str, float]:
    for _ in range(5):
        a.run(None, feed)
        b.run(None, feed)
    ta, tb = [], []
    for _ in range(runs):
        for sess, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - start) * 1000)
    return {
        "fp32_p50_ms": float(np.percentile(ta, 50)),
        "fp32_p99_ms": float(np.percentile(ta, 99)),
        "artifact_p50_ms": float(np.percentile(tb, 50)),
        "artifact_p99_ms": float(np.percentile(tb, 99)),
        "speedup_p50": float(np.percentile(ta, 50) / np.percentile(tb, 50)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="requests per model and length")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("MODELSHIP_MODELS_DIR") or ROOT.parent / "shared" / "models"),
    )
    args = parser.parse_args()
    minilm = args.models_dir / "all-MiniLM-L6-v2"
    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    sentences = [s for s in (minilm / "sentences.txt").read_text().splitlines() if s]

    with tempfile.TemporaryDirectory(prefix="bench-builder-") as tmp:
        work = Path(tmp)
        _calibration(tokenizer, sentences, work / "calibration.npz")
        plan = BuildPlan(
            source=ModelSource(uri=(minilm / "model.onnx").as_uri()),
            optimization=OptimizationSpec(
                precision=Precision.AUTO,
                calibration=CalibrationSpec(uri=(work / "calibration.npz").as_uri(), samples=64),
            ),
            threads=args.threads,
            store=ArtifactStore(uri=(work / "store").as_uri()),
        )
        start = time.perf_counter()
        result = build(plan, workdir=work, progress=lambda m: print(f"  {m}", file=sys.stderr))
        build_s = time.perf_counter() - start
        artifact = Path(result.uri.removeprefix("file://")) / "model.onnx"

        fp32 = session(minilm / "model.onnx", args.threads)
        chosen = session(artifact, args.threads)
        text = " ".join(sentences)
        lengths = {
            n: _side_by_side(fp32, chosen, _feed(tokenizer, text, n), args.runs) for n in (16, 128)
        }
        emb = sentence_embeddings(chosen, tokenizer, sentences)
        ref = np.load(minilm / "reference.npz")["sentence_embedding"]
        cos = np.sum(emb * ref, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        report = {
            "variant": result.variant,
            "threads": args.threads,
            "build_seconds": round(build_s, 1),
            "source_bytes": result.manifest.source_size_bytes,
            "artifact_bytes": result.manifest.size_bytes,
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "variants": [
                {
                    "name": v.name,
                    "accepted": v.accepted,
                    "cosine": v.accuracy.cosine_mean if v.accuracy else None,
                    "p50_ms_seq128": v.latency.p50_ms if v.latency else None,
                    "size_bytes": v.size_bytes,
                }
                for v in result.manifest.variants
            ],
            "seq": {str(k): v for k, v in lengths.items()},
            "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(),
        }
    print(json.dumps(report, indent=2))
    print(
        f"\nauto picked {report['variant']}: seq16 {lengths[16]['speedup_p50']:.2f}x, "
        f"seq128 {lengths[128]['speedup_p50']:.2f}x vs fp32, mean cosine "
        f"{report['cosine_mean']:.4f}, build {build_s:.0f}s"
    )
    ok = report["variant"] != "fp32" and lengths[128]["speedup_p50"] >= 1.6
    return 0 if ok and report["cosine_mean"] >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
