"""Command lines of the builder: the Job entry point and ``modelship-build`` for people.

Job: ``python -m modelship_runtime build --plan plan.json --step fetch|convert|publish`` in the
three containers of a build pod (without ``--step``: every step in one process). It prints
progress to stderr and one JSON line to stdout and to the Kubernetes termination log (when
writable); the publish step's line is the build's result:

    success: {"digest": "sha256:...", "uri": "s3://.../<hex>", "variant": "int8-dynamic",
              "reused": false, "modelSha256": "<hex>"}
    failure: {"error": "<what is wrong and how to fix it>", "reason": "AccuracyBudget"}

The fetch and convert steps exit 0 when they fail, after leaving the failure for the publish
step: it reports it as the build's result (the operator reads the main container only).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelship.api.artifact import ArtifactStore, BuildPlan, Manifest, SourceAccess, redact_uri
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
STEPS = ("fetch", "convert", "publish")
CLI_ONLY = "file:"


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


def as_build_error(error: Exception) -> BuildError:
    """Any failure as a message a person can act on (the operator shows it in the status)."""
    if isinstance(error, BuildError):
        return error
    if isinstance(error, StoreError):
        return BuildError(str(error), reason="StoreFailed")
    if isinstance(error, MemoryError):
        return BuildError(
            "the build ran out of memory; raise the build memory (MODELSHIP_BUILD_MEMORY, "
            "chart value build.memory)"
        )
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return BuildError(
            f"no space left{where}; raise the build's volumes (MODELSHIP_BUILD_SCRATCH_LIMIT "
            "and MODELSHIP_BUILD_DOWNLOAD_LIMIT, chart values build.scratchLimit and "
            "build.downloadLimit)",
            reason="OutOfSpace",
        )
    if isinstance(error, PermissionError):
        return BuildError(
            f"permission denied on {error.filename or 'a file'} ({error.strerror}); the "
            "build pod's volumes must be writable by its user (UID 65532)"
        )
    return BuildError(f"the build failed unexpectedly: {type(error).__name__}: {error}")


def _result(result: Any) -> dict[str, Any]:
    return {
        "digest": result.digest,
        "uri": result.uri,
        "variant": result.variant,
        "reused": result.reused,
        "modelSha256": result.manifest.model_sha256,
    }


def _run(plan: BuildPlan, termination_log: Path) -> tuple[int, Manifest | None]:
    # Imported here so `--help` and plan errors answer without loading onnxruntime.
    from modelship_runtime.builder.pipeline import build

    try:
        result = build(plan, progress=_Progress())
    except Exception as e:  # every failure ends as a message, not a traceback
        error = as_build_error(e)
        _emit({"error": error.message, "reason": error.reason}, termination_log)
        return 1, None
    _emit(_result(result), termination_log)
    return 0, result.manifest


def _cli_only_uris(plan: BuildPlan) -> list[str]:
    calibration = plan.optimization.calibration
    uris = [plan.source.uri, *([calibration.uri] if calibration and calibration.uri else [])]
    return [redact_uri(u) for u in uris if u.startswith(CLI_ONLY)]


def _step(plan: BuildPlan, args: argparse.Namespace) -> int:
    """One step of a build pod (see the module docstring)."""
    from modelship_runtime.builder import handoff, pipeline
    from modelship_runtime.io_settings import IOSettings

    progress, io = _Progress(), IOSettings()
    try:
        if args.step == "fetch":
            pipeline.fetch_step(plan, args.sources, io, progress)
        elif args.step == "convert":
            pipeline.convert_step(plan, args.sources, args.converted, io, progress)
        else:
            result = pipeline.publish_step(
                plan, args.sources, args.converted, io=io, progress=progress
            )
            _emit(_result(result), args.termination_log)
            return 0
    except Exception as e:  # every failure ends as a message, not a traceback
        error = as_build_error(e)
        _emit({"error": error.message, "reason": error.reason}, args.termination_log)
        if args.step == "publish":
            return 1
        handoff.write_failure(args.sources if args.step == "fetch" else args.converted, error)
        return 0
    _emit({"step": args.step, "ok": True}, args.termination_log)
    return 0


def _plan_errors(error: ValidationError) -> str:
    """The plan's validation errors without the values (a URI may carry credentials)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in error.errors()
    )


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelship_runtime build", description="Build the artifact of a plan."
    )
    parser.add_argument("--plan", required=True, help="build plan JSON file ('-' for stdin)")
    parser.add_argument("--termination-log", type=Path, default=TERMINATION_LOG)
    parser.add_argument("--step", choices=STEPS, help="run one step of a build pod")
    parser.add_argument("--sources", type=Path, help="the fetched sources' folder (steps)")
    parser.add_argument("--converted", type=Path, help="the converted model's folder (steps)")
    return parser


def job_main(argv: Sequence[str] | None = None) -> int:
    """``python -m modelship_runtime build --plan plan.json``: the build Job's entry point."""
    parser = job_parser()
    args = parser.parse_args(argv)
    if args.step and (not args.sources or (args.step != "fetch" and not args.converted)):
        parser.error(f"--step {args.step} needs --sources" + (
            "" if args.step == "fetch" else " and --converted"))  # fmt: skip
    try:
        raw = sys.stdin.read() if args.plan == "-" else Path(args.plan).read_text()
        plan = BuildPlan.model_validate_json(raw)
    except OSError as e:
        message = f"build plan {args.plan} cannot be read: {e.strerror}"
        _emit({"error": message, "reason": "InvalidPlan"}, args.termination_log)
        return 2
    except ValidationError as e:
        message = (
            f"build plan {args.plan} is invalid: {_plan_errors(e)}; the operator writes it "
            "from the spec"
        )
        _emit({"error": message, "reason": "InvalidPlan"}, args.termination_log)
        return 2
    if args.step is None:
        return _run(plan, args.termination_log)[0]
    if local := _cli_only_uris(plan):
        message = (
            f"{', '.join(local)}: file:// sources are for modelship-build on the command line "
            "only; in a cluster use https://, s3:// or pvc://claim/path"
        )
        _emit({"error": message, "reason": "InvalidPlan"}, args.termination_log)
        return 2
    return _step(plan, args)


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
        # A person's own build, on their own machine: any address is theirs to fetch from.
        source_access=SourceAccess(internal=True),
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
