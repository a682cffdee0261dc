"""Command lines of the builder: the Job entry point and ``modelship-build`` for people.

Job: ``python -m modelship_runtime build --plan plan.json``. It prints progress to stderr and one
JSON line to stdout and to the Kubernetes termination log (when writable):

    success: {"digest": "sha256:...", "uri": "s3://.../<hex>", "variant": "int8-dynamic",
              "reused": false}
    failure: {"error": "<what is wrong and how to fix it>", "reason": "AccuracyBudget"}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelship.api.artifact import ArtifactStore, BuildPlan, Manifest
from modelship.api.v1alpha1 import (
    AccuracyMetric,
    AccuracySpec,
    CalibrationSpec,
    GraphLevel,
    ModelFormat,
    ModelSource,
    OptimizationSpec,
    Precision,
    PruningSpec,
    S3Settings,
)
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.store import StoreError

TERMINATION_LOG = Path("/dev/termination-log")
# Kubernetes keeps at most 4096 bytes of a termination message.
_MAX_MESSAGE = 4000


def _emit(result: dict[str, Any], termination_log: Path) -> None:
    line = json.dumps(result, separators=(",", ":"))
    if len(line) > _MAX_MESSAGE and "error" in result:
        result = {**result, "error": result["error"][: _MAX_MESSAGE - 200] + "..."}
        line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    if termination_log.parent.is_dir() and os.access(
        termination_log if termination_log.exists() else termination_log.parent, os.W_OK
    ):
        termination_log.write_text(line + "\n")


class _Progress:
    """Progress lines on stderr, each with the time since the build started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


def _run(plan: BuildPlan, termination_log: Path) -> tuple[int, Manifest | None]:
    # Imported here so `--help` and plan errors answer without loading onnxruntime.
    from modelship_runtime.builder.pipeline import build

    try:
        result = build(plan, progress=_Progress())
    except (BuildError, StoreError) as e:
        reason = e.reason if isinstance(e, BuildError) else "StoreFailed"
        _emit({"error": str(e), "reason": reason}, termination_log)
        return 1, None
    _emit(
        {
            "digest": result.digest,
            "uri": result.uri,
            "variant": result.variant,
            "reused": result.reused,
        },
        termination_log,
    )
    return 0, result.manifest


def job_main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelship_runtime build --plan plan.json``: the build Job's entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m modelship_runtime build", description="Build the artifact of a plan."
    )
    parser.add_argument("--plan", required=True, help="build plan JSON file ('-' for stdin)")
    parser.add_argument("--termination-log", type=Path, default=TERMINATION_LOG)
    args = parser.parse_args(argv)
    try:
        raw = sys.stdin.read() if args.plan == "-" else Path(args.plan).read_text()
        plan = BuildPlan.model_validate_json(raw)
    except (OSError, ValidationError) as e:
        message = f"build plan {args.plan} is invalid: {e}; the operator writes it from the spec"
        _emit({"error": message, "reason": "InvalidPlan"}, args.termination_log)
        return 2
    return _run(plan, args.termination_log)[0]


def _uri(value: str) -> str:
    """Plain local paths are accepted for convenience and turned into file:// URIs."""
    if "://" in value:
        return value
    return Path(value).resolve().as_uri()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelship-build",
        description="Build an optimized, validated ONNX artifact from a model and publish it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("uri", help="model: path, file:///, https://, s3:// or pvc:// URI")
    p.add_argument("--format", choices=[f.value for f in ModelFormat], default="onnx")
    p.add_argument("--sha256", help="expected sha256 of the source bytes")
    p.add_argument("--allow-pickle", action="store_true", help="allow unpickling (sklearn)")
    p.add_argument("--precision", choices=[x.value for x in Precision], default="auto")
    p.add_argument("--graph", choices=[g.value for g in GraphLevel], default="extended")
    p.add_argument("--calibration", help=".npz of sample inputs (path or URI)")
    p.add_argument("--samples", type=int, default=128, help="calibration samples to use")
    p.add_argument("--metric", choices=[m.value for m in AccuracyMetric], default="cosine")
    p.add_argument("--min-accuracy", type=float, default=0.99, help="accuracy budget")
    p.add_argument("--max-abs-error", type=float, help="optional bound on any output difference")
    p.add_argument("--sparsity", type=float, default=0.0, help="magnitude pruning target")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of serving pods")
    p.add_argument("--store", default="./artifacts", help="file:///dir, dir or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", help="endpoint of an S3-compatible store (sources + store)")
    p.add_argument("--s3-region")
    p.add_argument("--plan-out", type=Path, help="also write the build plan JSON here")
    p.add_argument("--termination-log", type=Path, default=Path(os.devnull), help=argparse.SUPPRESS)
    return p


def plan_from_args(args: argparse.Namespace) -> BuildPlan:
    s3 = (
        S3Settings(endpoint=args.s3_endpoint, region=args.s3_region)
        if args.s3_endpoint or args.s3_region
        else None
    )
    uri = _uri(args.uri)
    calibration = (
        CalibrationSpec(uri=_uri(args.calibration), samples=args.samples)
        if args.calibration
        else None
    )
    return BuildPlan(
        source=ModelSource(
            uri=uri,
            format=ModelFormat(args.format),
            sha256=args.sha256,
            allow_pickle=args.allow_pickle,
            s3=s3 if uri.startswith("s3://") else None,
        ),
        optimization=OptimizationSpec(
            graph=GraphLevel(args.graph),
            precision=Precision(args.precision),
            calibration=calibration,
            accuracy=AccuracySpec(
                metric=AccuracyMetric(args.metric),
                min=args.min_accuracy,
                max_abs_error=args.max_abs_error,
            ),
            pruning=PruningSpec(sparsity=args.sparsity),
        ),
        threads=args.threads,
        store=ArtifactStore(
            uri=_uri(args.store), s3=s3 if args.store.startswith("s3://") else None
        ),
    )


def summary(manifest: Manifest) -> str:
    """The variants table printed at the end of a build."""
    fp32 = next((v for v in manifest.variants if v.name == "fp32" and v.latency), None)
    rows = [("variant", "accepted", "accuracy", "cosine", "max abs err", "top1", "p50 ms",
             "p99 ms", "speedup", "size MB", "note")]  # fmt: skip
    for v in manifest.variants:
        acc, lat = v.accuracy, v.latency
        speedup = fp32.latency.p50_ms / lat.p50_ms if fp32 and fp32.latency and lat else None
        rows.append(
            (
                ("* " if v.name == manifest.variant else "  ") + v.name,
                "yes" if v.accepted else "no",
                f"{acc.value:.4f}" if acc else "-",
                f"{acc.cosine_mean:.4f}" if acc and acc.cosine_mean is not None else "-",
                f"{acc.max_abs_error:.3g}" if acc and acc.max_abs_error is not None else "-",
                f"{acc.top1_agreement:.3f}" if acc and acc.top1_agreement is not None else "-",
                f"{lat.p50_ms:.2f}" if lat else "-",
                f"{lat.p99_ms:.2f}" if lat else "-",
                f"{speedup:.2f}x" if speedup else "-",
                f"{v.size_bytes / 1e6:.1f}" if v.size_bytes else "-",
                (f"sparsity {v.sparsity:.2f} " if v.sparsity else "") + v.reason[:60],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``modelship-build``: the same build from a laptop, with a summary table."""
    args = _parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
    except ValidationError as e:
        print(f"modelship-build: invalid options: {e}", file=sys.stderr)
        return 2
    if args.plan_out:
        args.plan_out.write_text(plan.model_dump_json(indent=2, by_alias=True))
    code, manifest = _run(plan, args.termination_log)
    if manifest is not None:
        print(summary(manifest), file=sys.stderr)
    return code
