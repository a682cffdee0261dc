"""The build: plan -> fetch -> convert -> variants -> validate -> benchmark -> select -> publish."""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from modelship.api.artifact import BUILDER_VERSION, BuildPlan, Manifest, VariantReport
from modelship.api.timestamps import format_time, now
from modelship.api.v1alpha1 import GraphLevel, Precision
from modelship_runtime.builder import archive, formats, optimize, samples, sessions
from modelship_runtime.builder.benchmark import BenchSettings, measure
from modelship_runtime.builder.convert import to_onnx
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.fetch import Fetched, fetch
from modelship_runtime.builder.select import Candidate, choose, wanted
from modelship_runtime.builder.signature import signature_of
from modelship_runtime.builder.validate import Outputs, compare, run_all, verdict
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.store import IndexEntry, Store, file_sha256, open_store

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    digest: str
    uri: str
    variant: str
    manifest: Manifest
    reused: bool


def _quiet(_: str) -> None:
    pass


def _tool_versions() -> dict[str, str]:
    versions = {"builder": BUILDER_VERSION, "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "numpy", "skl2onnx", "scikit-learn", "modelship"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _source_model(fetched: Fetched, plan: BuildPlan, work: Path, io: IOSettings) -> Path:
    if not archive.is_archive(fetched.path):
        return fetched.path
    if plan.source.format.value == "onnx" and fetched.path.suffix in (".pt", ".pth"):
        raise formats.unsupported(f"{plan.source.uri} looks like a PyTorch checkpoint")
    root = archive.extract(fetched.path, work / "unpacked", io)
    return formats.locate(root, plan.source.format, fetched.path.name)


def _build_variant(
    name: Precision, base: Path, work: Path, plan: BuildPlan, feeds: list[samples.Feed]
) -> Path:
    raw = work / f"{name.value}.raw.onnx"
    if name == Precision.FP32:
        shutil.copyfile(base, raw)
    elif name == Precision.INT8_DYNAMIC:
        optimize.int8_dynamic(base, raw)
    elif name == Precision.INT8_STATIC:
        optimize.int8_static(base, raw, feeds)
    elif name == Precision.FP16:
        optimize.fp16(base, raw)
    out = work / f"{name.value}.onnx"
    sessions.optimize_offline(raw, out, plan.optimization.graph)
    return out


def _evaluate(
    name: Precision,
    path: Path,
    plan: BuildPlan,
    feeds: list[samples.Feed],
    reference: Outputs,
    sparsity: float | None,
    bench: BenchSettings,
) -> VariantReport:
    session = sessions.session(path, plan.threads)
    accuracy = compare(reference, run_all(session, feeds), plan.optimization.accuracy)
    problem = verdict(accuracy, plan.optimization.accuracy)
    latency = measure(session, feeds[0], plan.threads, bench)
    return VariantReport(
        name=name.value,
        accepted=problem is None,
        reason=problem or "",
        size_bytes=path.stat().st_size,
        accuracy=accuracy,
        latency=latency,
        sparsity=sparsity,
    )


def _candidates(
    plan: BuildPlan,
    base: Path,
    work: Path,
    feeds: list[samples.Feed],
    sparsity: float | None,
    progress: Progress,
    bench: BenchSettings,
    original: Path,
) -> list[Candidate]:
    # The reference runs the source graph as written: no fusions that could hide a mistake.
    reference = run_all(sessions.session(original, plan.threads, GraphLevel.DISABLED), feeds)
    out = []
    for name in wanted(plan.optimization):
        progress(f"building variant {name.value}")
        try:
            path = _build_variant(name, base, work, plan, feeds)
        except BuildError:
            raise
        except Exception as e:  # quantizers raise many types on graphs they cannot handle
            if plan.optimization.precision == name:
                raise BuildError(
                    f"could not build variant {name.value}: {type(e).__name__}: {e}; try "
                    "precision auto or another precision",
                    reason="OptimizationFailed",
                ) from e
            reason = f"could not be built: {type(e).__name__}: {e}"
            report = VariantReport(name=name.value, accepted=False, reason=reason)
            out.append(Candidate(report, None))
            progress(f"variant {name.value} {reason}")
            continue
        progress(f"validating and benchmarking variant {name.value}")
        report = _evaluate(name, path, plan, feeds, reference, sparsity, bench)
        progress(
            f"variant {name.value}: {plan.optimization.accuracy.metric.value} "
            f"{report.accuracy.value if report.accuracy else float('nan'):.4f}, "
            f"p50 {report.latency.p50_ms if report.latency else float('nan'):.2f} ms"
            + ("" if report.accepted else f", rejected: {report.reason}")
        )
        out.append(Candidate(report, path))
    return out


def _feeds(plan: BuildPlan, original: Path, work: Path, io: IOSettings) -> list[samples.Feed]:
    signature = signature_of(original)
    calibration = plan.optimization.calibration
    if calibration is not None and calibration.uri is not None:
        fetched = fetch(calibration.uri, work / "calibration", s3=plan.source.s3, io=io)
        feeds = samples.load_npz(fetched.path, signature, calibration.samples)
    else:
        count = samples.GENERATED_SAMPLES
        feeds = samples.generate(
            signature, min(calibration.samples, count) if calibration else count
        )
    if not feeds:
        raise BuildError(
            "the calibration file has no samples; add at least one row per input",
            reason="InvalidCalibration",
        )
    return feeds


def _convert_and_try_variants(
    plan: BuildPlan,
    fetched: Fetched,
    work: Path,
    io: IOSettings,
    bench: BenchSettings,
    progress: Progress,
) -> tuple[list[Candidate], list[samples.Feed]]:
    """Every wanted variant of the converted (and pruned) source, judged, and the sample
    inputs they were judged on."""
    progress(f"converting ({plan.source.format.value}) and checking the model")
    original = work / "original.onnx"
    to_onnx(_source_model(fetched, plan, work, io), plan.source, original)
    feeds = _feeds(plan, original, work, io)
    base, sparsity = original, None
    if plan.optimization.pruning.sparsity > 0:
        base = work / "pruned.onnx"
        sparsity = optimize.prune(original, base, plan.optimization.pruning.sparsity)
        progress(f"pruned weights to sparsity {sparsity:.3f}")
    return _candidates(plan, base, work, feeds, sparsity, progress, bench, original), feeds


def _manifest(
    plan: BuildPlan,
    index: IndexEntry,
    fetched: Fetched,
    chosen: VariantReport,
    model: Path,
    candidates: list[Candidate],
    feeds: list[samples.Feed],
) -> Manifest:
    return Manifest(
        digest=index.digest,
        source_digest=fetched.sha256,
        plan_key=plan.plan_key,
        variant=chosen.name,
        model_sha256=file_sha256(model),
        size_bytes=model.stat().st_size,
        source_size_bytes=fetched.size,
        accuracy=chosen.accuracy,
        latency=chosen.latency,
        variants=[c.report for c in candidates],
        signature=signature_of(model),
        calibration_stats=samples.statistics(feeds),
        tool_versions=_tool_versions(),
        created_at=index.created_at,
    )


def build(
    plan: BuildPlan,
    *,
    io: IOSettings | None = None,
    bench: BenchSettings | None = None,
    workdir: Path | None = None,
    progress: Progress = _quiet,
    store: Store | None = None,
) -> BuildResult:
    """Build and publish the artifact for ``plan``, or find the one already published."""
    io = io or IOSettings()
    bench = bench or BenchSettings()
    store = store or open_store(plan.store, io)
    pinned = plan.pinned_digest
    if pinned and (manifest := store.get_manifest(pinned)) is not None:
        progress(f"artifact {pinned} already in {store.uri}; nothing to build")
        return BuildResult(pinned, store.artifact_uri(pinned), manifest.variant, manifest, True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelship-build-", dir=workdir) as tmp:
        work = Path(tmp)
        progress(f"fetching {plan.source.uri}")
        fetched = fetch(plan.source.uri, work, s3=plan.source.s3, sha256=plan.source.sha256, io=io)
        digest = plan.artifact_digest(fetched.sha256)
        index = IndexEntry(
            digest=digest,
            source_sha256=fetched.sha256,
            source_uri=plan.source.uri,
            created_at=format_time(now()),
        )
        progress(f"source sha256 {fetched.sha256} ({fetched.size} bytes); artifact {digest}")
        if (manifest := store.get_manifest(digest)) is not None:
            store.put_index(plan.request_key, index)
            progress(f"artifact {digest} already in {store.uri}; nothing to build")
            return BuildResult(digest, store.artifact_uri(digest), manifest.variant, manifest, True)

        candidates, feeds = _convert_and_try_variants(plan, fetched, work, io, bench, progress)
        chosen = choose(plan.optimization, candidates)
        assert chosen.path is not None  # choose() only returns built variants
        manifest = _manifest(plan, index, fetched, chosen.report, chosen.path, candidates, feeds)
        elapsed = time.monotonic() - started
        progress(f"publishing {chosen.report.name} to {store.uri} (built in {elapsed:.1f}s)")
        uri = store.publish(digest, chosen.path, manifest)
        store.put_index(plan.request_key, index)
    return BuildResult(digest, uri, manifest.variant, manifest, False)
