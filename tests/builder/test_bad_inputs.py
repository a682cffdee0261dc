"""Bad inputs fail with a clear message, a reason for the operator, and nothing published."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelship.api.artifact import BuildPlan
from modelship.api.v1alpha1 import AccuracySpec, ModelFormat, ModelSource, Precision
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.convert import convert_sklearn
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.pipeline import build
from modelship_runtime.io_settings import IOSettings

MakePlan = Callable[..., BuildPlan]


def _fails(
    plan: BuildPlan, tmp_path: Path, bench: BenchSettings, match: str, reason: str, **kw: object
) -> BuildError:
    with pytest.raises(BuildError, match=match) as e:
        build(plan, bench=bench, workdir=tmp_path, **kw)  # type: ignore[arg-type]
    assert e.value.reason == reason
    store = tmp_path / "store"
    assert not store.exists() or [p.name for p in store.iterdir()] == [], "something was published"
    return e.value


def test_corrupt_onnx(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    data = tiny_model.read_bytes()
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(data[: len(data) // 2] + b"\xff" * 64)
    _fails(make_plan(bad.as_uri()), tmp_path, fast_bench, "not a valid ONNX model", "InvalidModel")


def test_sha256_mismatch(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    actual = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    plan = make_plan(tiny_model.as_uri(), sha256="0" * 64)
    error = _fails(plan, tmp_path, fast_bench, "but the spec pins", "SourceDigestMismatch")
    assert actual in error.message


def test_zip_slip_archive(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tiny_model, "model.onnx")
        zf.writestr("../../escaped.onnx", b"evil")
    _fails(make_plan(archive.as_uri()), tmp_path, fast_bench, "path traversal", "UnsafeArchive")
    assert not (tmp_path.parent / "escaped.onnx").exists()


def test_archive_bomb(tmp_path: Path, make_plan: MakePlan, fast_bench: BenchSettings) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.onnx", bytes(8 * 1024**2))
    io_settings = IOSettings(max_extract_bytes=1024**2)
    plan = make_plan(archive.as_uri())
    _fails(plan, tmp_path, fast_bench, "archive bomb", "UnsafeArchive", io=io_settings)


def test_good_archive_builds(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_model, "bundle/model.onnx")
        readme = b"hello"
        info = tarfile.TarInfo("bundle/README")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    result = build(
        make_plan(archive.as_uri(), precision=Precision.FP32), bench=fast_bench, workdir=tmp_path
    )
    assert result.variant == "fp32"


@pytest.mark.parametrize(
    ("content", "kind"),
    [(b"\x89HDF\r\n\x1a\n" + bytes(64), "HDF5"), (b"GGUF" + bytes(64), "GGUF")],
)
def test_unsupported_format_lists_supported_ones(
    tmp_path: Path, make_plan: MakePlan, fast_bench: BenchSettings, content: bytes, kind: str
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    error = _fails(make_plan(path.as_uri()), tmp_path, fast_bench, kind, "UnsupportedFormat")
    assert "supported formats: onnx" in error.message
    assert "sklearn" in error.message


def test_pytorch_checkpoint_is_unsupported(
    tmp_path: Path, make_plan: MakePlan, fast_bench: BenchSettings
) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    error = _fails(
        make_plan(path.as_uri()), tmp_path, fast_bench, "supported formats", "UnsupportedFormat"
    )
    assert "PyTorch" in error.message


def test_pickle_without_opt_in(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="allowPickle"):
        ModelSource(uri="file:///m.pkl", format=ModelFormat.SKLEARN)
    # Even a plan that slipped past validation is refused before anything is unpickled.
    marker = tmp_path / "unpickled"
    payload = tmp_path / "evil.pkl"
    payload.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    source = ModelSource.model_construct(
        uri=payload.as_uri(), format=ModelFormat.SKLEARN, allow_pickle=False, inputs=None
    )
    with pytest.raises(BuildError, match="allowPickle: true") as e:
        convert_sklearn(payload, source, tmp_path / "out.onnx")
    assert e.value.reason == "PickleNotAllowed"
    assert not marker.exists()


def test_unreachable_url(tmp_path: Path, make_plan: MakePlan, fast_bench: BenchSettings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = make_plan(f"https://127.0.0.1:{port}/model.onnx")
    io_settings = IOSettings(http_attempts=2, http_backoff_s=0.01)
    _fails(plan, tmp_path, fast_bench, "could not download", "FetchFailed", io=io_settings)


def test_accuracy_budget_not_met_names_the_figure(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    plan = make_plan(
        tiny_model.as_uri(),
        precision=Precision.INT8_DYNAMIC,
        accuracy=AccuracySpec(min=0.5, max_abs_error=1e-9),
    )
    error = _fails(plan, tmp_path, fast_bench, "variant int8-dynamic rejected", "AccuracyBudget")
    assert "max abs error" in error.message
    assert "exceeds the budget" in error.message


def _job(
    plan_json: str, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan_json)
    log = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "modelship_runtime", "build", "--plan", str(plan_path),
         "--termination-log", str(log)],
        capture_output=True, text=True, timeout=300,
        env={"MODELSHIP_BENCH_SECONDS": "0.05", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    message = json.loads(log.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == message
    return proc, message


@pytest.mark.slow
def test_job_reports_success_in_termination_log(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path
) -> None:
    plan = make_plan(tiny_model.as_uri())
    proc, message = _job(plan.model_dump_json(by_alias=True), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(message) == {"digest", "uri", "variant", "reused", "modelSha256"}
    model = Path(str(message["uri"]).removeprefix("file://")) / "model.onnx"
    assert message["modelSha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert str(message["uri"]).startswith((tmp_path / "store").as_uri())
    assert message["variant"] in ("fp32", "int8-dynamic")
    assert "fetching" in proc.stderr  # progress goes to stderr


@pytest.mark.slow
def test_job_reports_failure_in_termination_log(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path
) -> None:
    plan = make_plan(tiny_model.as_uri(), sha256="1" * 64)
    proc, message = _job(plan.model_dump_json(by_alias=True), tmp_path)
    assert proc.returncode == 1
    assert message["reason"] == "SourceDigestMismatch"
    assert "spec pins" in str(message["error"])


def test_job_rejects_invalid_plan(tmp_path: Path) -> None:
    plan = {"source": {"uri": "file:///m.bin", "format": "caffe"}, "store": {"uri": "file:///s"}}
    proc, message = _job(json.dumps(plan), tmp_path)
    assert proc.returncode == 2
    assert message["reason"] == "InvalidPlan"
    assert "'onnx', 'sklearn', 'pytorch', 'tensorflow', 'keras' or 'tflite'" in str(
        message["error"]
    )
