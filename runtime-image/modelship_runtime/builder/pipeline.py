"""The build: plan -> fetch -> convert -> variants -> validate -> benchmark -> select -> publish.

:func:`build` runs every step in one process (``modelship-build``, tests). A build pod runs
them as three steps in three containers (:func:`fetch_step`, :func:`convert_step`,
:func:`publish_step`), so that unpickling, which runs the file's code, happens where neither
the source's nor the store's credentials are, and only the last step can write the store.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from modelship.api.artifact import (
    BUILDER_VERSION,
    BuildPlan,
    Manifest,
    VariantReport,
    redact_uri,
)
from modelship.api.serving import REPLAY_FILE
from modelship.api.timestamps import format_time, now
from modelship.api.v1alpha1 import FRAMEWORK_FORMATS, GraphLevel, ModelFormat, Precision
from modelship_runtime.builder import (
    archive,
    formats,
    frameworks,
    handoff,
    optimize,
    samples,
    sessions,
)
from modelship_runtime.builder.benchmark import BenchSettings, measure
from modelship_runtime.builder.convert import check_onnx, to_onnx
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.fetch import Fetched, fetch
from modelship_runtime.builder.handoff import SourceFile, Sources
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
    for dist in (
        *("onnx", "onnxruntime", "numpy", "skl2onnx", "scikit-learn", "modelship"),
        *("torch", "onnxscript", "tensorflow-cpu", "tf2onnx", "keras"),
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _zip_like(path: Path) -> bool:
    """A zip archive, or what starts like one (a damaged one, which the framework reports)."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _source_model(source: Path, plan: BuildPlan, work: Path, io: IOSettings) -> Path:
    fmt = plan.source.format
    # A .pt2 and a .keras file are zip archives themselves (a .tar of one is unpacked).
    if fmt in (ModelFormat.PYTORCH, ModelFormat.KERAS) and _zip_like(source):
        return source
    if not archive.is_archive(source):
        if fmt == ModelFormat.TENSORFLOW:
            raise BuildError(
                f"{redact_uri(plan.source.uri)} is one file, and a SavedModel is a directory "
                "(saved_model.pb and variables/): pack the whole directory "
                "(tar czf model.tar.gz -C <dir> .) and point spec.model.uri at the archive",
                reason="InvalidModel",
            )
        return source
    if fmt == ModelFormat.ONNX and source.suffix in (".pt", ".pth"):
        raise formats.unsupported(f"{redact_uri(plan.source.uri)} looks like a PyTorch checkpoint")
    root = archive.extract(source, work / "unpacked", io)
    return formats.locate(root, fmt, source.name)


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


def _samples(plan: BuildPlan, original: Path, sources: Sources) -> samples.Samples:
    signature = signature_of(original)
    calibration = plan.optimization.calibration
    if calibration is not None and sources.calibration is not None:
        drawn = samples.load_npz(sources.calibration.path, signature, calibration.samples)
    else:
        count = samples.GENERATED_SAMPLES
        drawn = samples.Samples(
            samples.generate(signature, min(calibration.samples, count) if calibration else count)
        )
    if not drawn.feeds:
        raise BuildError(
            "the calibration file has no samples; add at least one row per input",
            reason="InvalidCalibration",
        )
    return drawn


def _try_variants(
    plan: BuildPlan,
    original: Path,
    sources: Sources,
    work: Path,
    bench: BenchSettings,
    progress: Progress,
) -> tuple[list[Candidate], samples.Samples]:
    """Every wanted variant of the checked (and pruned) model, judged, and the samples they
    were judged on."""
    drawn = _samples(plan, original, sources)
    feeds = drawn.feeds
    base, sparsity = original, None
    if plan.optimization.pruning.sparsity > 0:
        base = work / "pruned.onnx"
        sparsity = optimize.prune(original, base, plan.optimization.pruning.sparsity)
        progress(f"pruned weights to sparsity {sparsity:.3f}")
    return _candidates(plan, base, work, feeds, sparsity, progress, bench, original), drawn


def _manifest(
    plan: BuildPlan,
    index: IndexEntry,
    fetched: SourceFile,
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


def _file(fetched: Fetched) -> SourceFile:
    return SourceFile(path=fetched.path, sha256=fetched.sha256, size=fetched.size)


def fetch_sources(
    plan: BuildPlan, dest: Path, io: IOSettings, progress: Progress, *, copy_local: bool
) -> Sources:
    """Fetch the model and the calibration data, within one download budget."""
    progress(f"fetching {redact_uri(plan.source.uri)}")
    source = plan.source
    access = plan.source_access
    model = fetch(source.uri, dest, s3=source.s3, sha256=source.sha256, io=io, access=access,
                  copy_local=copy_local)  # fmt: skip
    progress(f"source sha256 {model.sha256} ({model.size} bytes)")
    calibration = plan.optimization.calibration
    if calibration is None or calibration.uri is None:
        return Sources(model=_file(model))
    left = io.max_download_bytes - model.size
    if left <= 0:
        raise BuildError(
            "the model used up the download limit, leaving nothing for the calibration data; "
            "raise MODELSHIP_BUILD_DOWNLOAD_LIMIT (chart value build.downloadLimit)",
            reason="FetchFailed",
        )
    progress(f"fetching calibration data {redact_uri(calibration.uri)}")
    data = fetch(calibration.uri, dest / "calibration", s3=source.s3, access=access,
                 io=io.model_copy(update={"max_download_bytes": left}),
                 copy_local=copy_local)  # fmt: skip
    return Sources(model=_file(model), calibration=_file(data))


def _from_framework(
    plan: BuildPlan, sources: Sources, source: Path, original: Path, scratch: Path,
    progress: Progress,
) -> None:  # fmt: skip
    """Convert with the framework's exporter, check the ONNX model, and compare it with the
    original in its framework on the build's samples (the optimizer's accuracy budget)."""
    converted = frameworks.convert(source, plan.source, scratch / "framework")
    progress(f"converted with {converted.framework}; checking the ONNX model")
    check_onnx(converted.onnx, original)
    feeds = _samples(plan, original, sources).feeds
    session = sessions.session(original, plan.threads, GraphLevel.DISABLED)
    names = [o.name for o in session.get_outputs()]
    outputs = [session.run(names, feed) for feed in feeds]
    accuracy = frameworks.verify(converted, names, outputs, feeds, plan.optimization.accuracy)
    progress(
        f"the ONNX model computes what the {converted.framework} model does on "
        f"{accuracy.samples} samples: cosine min {accuracy.cosine_min:.6f}, max abs error "
        f"{accuracy.max_abs_error:.3g}"
        + (f", top-1 {accuracy.top1_agreement:.4f}" if accuracy.top1_agreement is not None else "")
    )


def convert_source(
    plan: BuildPlan, sources: Sources, out: Path, scratch: Path, io: IOSettings, progress: Progress
) -> Path:
    """The source as a checked ONNX model in ``out`` (unpickling and framework code run here,
    if anywhere)."""
    progress(f"converting ({plan.source.format.value}) and checking the model")
    source = _source_model(sources.model.path, plan, scratch, io)
    out.mkdir(parents=True, exist_ok=True)
    original = out / handoff.ORIGINAL_FILE
    if plan.source.format in FRAMEWORK_FORMATS:
        _from_framework(plan, sources, source, original, scratch, progress)
    else:
        to_onnx(source, plan.source, original)
    return original


def _index_entry(plan: BuildPlan, sources: Sources) -> IndexEntry:
    return IndexEntry(
        digest=plan.artifact_digest(sources.model.sha256),
        source_sha256=sources.model.sha256,
        source_uri=redact_uri(plan.source.uri),
        created_at=format_time(now()),
    )


def _published(
    plan: BuildPlan, index: IndexEntry, store: Store, progress: Progress
) -> BuildResult | None:
    """The artifact, when the store already has it (and the index now says so)."""
    manifest = store.get_manifest(index.digest)
    if manifest is None:
        return None
    store.put_index(plan.request_key, index)
    progress(f"artifact {index.digest} already in {store.uri}; nothing to build")
    return BuildResult(
        index.digest, store.artifact_uri(index.digest), manifest.variant, manifest, True
    )


def _optimize_and_publish(
    plan: BuildPlan,
    index: IndexEntry,
    sources: Sources,
    original: Path,
    work: Path,
    bench: BenchSettings,
    progress: Progress,
    store: Store,
    started: float,
) -> BuildResult:
    candidates, drawn = _try_variants(plan, original, sources, work, bench, progress)
    chosen = choose(plan.optimization, candidates)
    assert chosen.path is not None  # choose() only returns built variants
    manifest = _manifest(
        plan, index, sources.model, chosen.report, chosen.path, candidates, drawn.feeds
    )
    elapsed = time.monotonic() - started
    golden = samples.write_golden_set(drawn, work / REPLAY_FILE)
    progress(f"publishing {chosen.report.name} to {store.uri} (built in {elapsed:.1f}s)")
    uri = store.publish(index.digest, chosen.path, manifest, golden)
    store.put_index(plan.request_key, index)
    return BuildResult(index.digest, uri, manifest.variant, manifest, False)


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
        sources = fetch_sources(plan, work, io, progress, copy_local=False)
        index = _index_entry(plan, sources)
        progress(f"artifact {index.digest}")
        if (found := _published(plan, index, store, progress)) is not None:
            return found
        original = convert_source(plan, sources, work / "converted", work, io, progress)
        return _optimize_and_publish(
            plan, index, sources, original, work, bench, progress, store, started
        )


# --- the same build as the three steps of a build pod ---------------------------------------


def fetch_step(plan: BuildPlan, sources_dir: Path, io: IOSettings, progress: Progress) -> None:
    """Step 1 (the source's credentials, no store): the sources into ``sources_dir``."""
    sources = fetch_sources(plan, sources_dir, io, progress, copy_local=True)
    handoff.write_sources(sources_dir, sources)


def convert_step(
    plan: BuildPlan, sources_dir: Path, converted_dir: Path, io: IOSettings, progress: Progress
) -> None:
    """Step 2 (no credentials, the sources read-only): the ONNX model into ``converted_dir``."""
    handoff.raise_failure(sources_dir, "fetch")
    sources = handoff.read_sources(sources_dir)
    with tempfile.TemporaryDirectory(prefix="modelship-convert-") as scratch:
        convert_source(plan, sources, converted_dir, Path(scratch), io, progress)


def publish_step(
    plan: BuildPlan,
    sources_dir: Path,
    converted_dir: Path,
    *,
    io: IOSettings | None = None,
    bench: BenchSettings | None = None,
    progress: Progress = _quiet,
    store: Store | None = None,
) -> BuildResult:
    """Step 3 (the store's credentials): check the converted model again as the untrusted
    input it is, then optimize, validate, benchmark and publish it."""
    io = io or IOSettings()
    bench = bench or BenchSettings()
    handoff.raise_failure(sources_dir, "fetch")
    sources = handoff.read_sources(sources_dir)
    store = store or open_store(plan.store, io)
    index = _index_entry(plan, sources)
    progress(f"source sha256 {sources.model.sha256}; artifact {index.digest}")
    if (found := _published(plan, index, store, progress)) is not None:
        return found
    handoff.raise_failure(converted_dir, "convert")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelship-build-") as tmp:
        work = Path(tmp)
        received = work / "received.onnx"
        handoff.receive(converted_dir / handoff.ORIGINAL_FILE, received, io.max_extract_bytes)
        original = work / handoff.ORIGINAL_FILE
        check_onnx(received, original, external_data=False)
        received.unlink()
        return _optimize_and_publish(
            plan, index, sources, original, work, bench, progress, store, started
        )
