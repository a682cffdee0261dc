"""The three steps of a build pod: fetch, convert (may unpickle), publish (holds the store),
and the golden set every artifact carries (the samples its variants were judged on).

The publish step treats what the convert step wrote as untrusted input: a link, external data
or a forged failure report gets it nothing. The pod spec that keeps credentials and the store
away from the convert container is tested with the operator's Job (test_operator_desired.py).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelship.api.artifact import MANIFEST_FILE, MODEL_FILE, BuildPlan, Signature
from modelship.api.serving import REPLAY_FILE
from modelship.api.v1alpha1 import CalibrationSpec, Precision, TensorDatatype, TensorSpec
from modelship_runtime.builder import handoff, samples
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.cli import as_build_error, job_main
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.pipeline import build, convert_step, fetch_step, publish_step
from modelship_runtime.builder.signature import signature_of
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.store import DirectoryStore, digest_hex, file_sha256

MakePlan = Callable[..., BuildPlan]


def _quiet(_: str) -> None:
    pass


@pytest.fixture
def pvc_io(tmp_path: Path) -> IOSettings:
    return IOSettings(pvc_root=tmp_path / "pvc")


@pytest.fixture
def pvc_model(tiny_model: Path, pvc_io: IOSettings) -> str:
    """The tiny model on the claim ``models``, as the fetch step sees it."""
    claim = pvc_io.pvc_root / "models"
    claim.mkdir(parents=True)
    (claim / "tiny.onnx").write_bytes(tiny_model.read_bytes())
    return "pvc://models/tiny.onnx"


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    sources, converted = tmp_path / "sources", tmp_path / "converted"
    converted.mkdir()
    return sources, converted


def _published(tmp_path: Path) -> list[str]:
    store = tmp_path / "store"
    return sorted(p.name for p in store.iterdir() if p.name != "index") if store.exists() else []


def test_the_three_steps_build_what_one_process_builds(
    tmp_path: Path,
    make_plan: MakePlan,
    pvc_model: str,
    pvc_io: IOSettings,
    tiny_model: Path,
    fast_bench: BenchSettings,
) -> None:
    plan = make_plan(pvc_model, precision=Precision.FP32)
    sources, converted = _dirs(tmp_path)
    fetch_step(plan, sources, pvc_io, _quiet)
    fetched = handoff.read_sources(sources)
    assert fetched.model.path.parent == sources, "copied off the claim: later steps lack it"
    assert fetched.model.sha256 == file_sha256(tiny_model)
    convert_step(plan, sources, converted, pvc_io, _quiet)
    result = publish_step(plan, sources, converted, io=pvc_io, bench=fast_bench)
    assert result.digest == plan.artifact_digest(file_sha256(tiny_model))
    assert not result.reused
    store = DirectoryStore(tmp_path / "store")
    assert store.get_manifest(result.digest) is not None
    # The golden set: the generated samples the variants were judged on, stacked per input.
    with np.load(tmp_path / "store" / digest_hex(result.digest) / REPLAY_FILE) as golden:
        assert golden.files == ["input"]
        want = samples.generate(signature_of(tiny_model), samples.GENERATED_SAMPLES)
        assert np.array_equal(golden["input"], np.concatenate([f["input"] for f in want]))
    again = publish_step(plan, sources, converted, io=pvc_io, bench=fast_bench)
    assert again.reused


def test_the_golden_set_is_the_calibration_rows_the_build_used(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    rows = np.random.default_rng(5).normal(size=(50, 8)).astype(np.float32)
    np.savez(tmp_path / "calibration.npz", input=rows, unused=np.zeros(3))
    calibration = CalibrationSpec(uri=(tmp_path / "calibration.npz").as_uri(), samples=20)
    plan = make_plan(tiny_model.as_uri(), precision=Precision.FP32, calibration=calibration)
    result = build(plan, bench=fast_bench, workdir=tmp_path)
    served = tmp_path / "served"
    DirectoryStore(tmp_path / "store").download(result.digest, served)  # what a pod gets
    assert sorted(p.name for p in served.iterdir()) == sorted(
        [MANIFEST_FILE, MODEL_FILE, REPLAY_FILE]
    )
    with np.load(served / REPLAY_FILE) as golden:
        assert golden.files == ["input"]
        assert np.array_equal(golden["input"], rows[:20])  # at most the samples asked for


def test_the_golden_set_carries_the_labels_of_the_rows_the_build_used(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    rows = np.random.default_rng(6).normal(size=(30, 8)).astype(np.float32)
    labels = np.arange(30) % 3
    np.savez(tmp_path / "calibration.npz", input=rows, labels=labels.astype(np.float32))
    calibration = CalibrationSpec(uri=(tmp_path / "calibration.npz").as_uri(), samples=12)
    plan = make_plan(tiny_model.as_uri(), precision=Precision.FP32, calibration=calibration)
    result = build(plan, bench=fast_bench, workdir=tmp_path)
    with np.load(tmp_path / "store" / digest_hex(result.digest) / REPLAY_FILE) as golden:
        assert sorted(golden.files) == ["input", "labels"]
        assert np.array_equal(golden["input"], rows[:12])
        assert golden["labels"].dtype == np.int64
        assert np.array_equal(golden["labels"], labels[:12])


SIGNATURE = Signature(
    inputs=[TensorSpec(name="input", datatype=TensorDatatype.FP32, shape=[-1, 8])], outputs=[]
)


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        (
            np.zeros(31, np.int64),
            r"'labels' has 31 values for 32 samples: give one class index "
            r"per sample",
        ),
        (
            np.eye(32, 3),
            r"'labels' has shape \[32, 3\]: give one class index per sample, "
            r"shape \[32\] \(for one-hot or score rows, save labels.argmax",
        ),
        (np.full(32, 0.5), r"'labels' holds values that are not class indices"),
        (np.full(32, -1), r"'labels' holds values that are not class indices"),
        (np.full(32, np.nan), r"'labels' holds values that are not class indices"),
        (np.array(["cat"] * 32), r"'labels' is <U3: give integer class indices"),
        (np.ones(32, bool), r"'labels' is bool: give integer class indices"),
    ],
)
def test_a_labels_array_that_is_no_class_per_sample_fails_the_build(
    tmp_path: Path, labels: np.ndarray, error: str
) -> None:
    rows = np.zeros((32, 8), np.float32)
    np.savez(tmp_path / "calibration.npz", input=rows, labels=labels)
    with pytest.raises(BuildError, match=error) as failed:
        samples.load_npz(tmp_path / "calibration.npz", SIGNATURE, limit=8)
    assert failed.value.reason == "InvalidCalibration"


def test_an_input_named_labels_stays_an_input(tmp_path: Path) -> None:
    signature = Signature(
        inputs=[TensorSpec(name="labels", datatype=TensorDatatype.INT64, shape=[-1, 2])],
        outputs=[],
    )
    ids = np.arange(12).reshape(6, 2)
    np.savez(tmp_path / "calibration.npz", labels=ids)
    drawn = samples.load_npz(tmp_path / "calibration.npz", signature, limit=4)
    assert drawn.labels is None
    assert [f["labels"].tolist() for f in drawn.feeds] == [[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]]
    assert samples.write_golden_set(drawn, tmp_path / REPLAY_FILE) is not None
    with np.load(tmp_path / REPLAY_FILE) as golden:
        assert golden.files == ["labels"]
        assert np.array_equal(golden["labels"], ids[:4])


def test_a_model_with_a_fixed_batch_above_one_gets_no_golden_set(tmp_path: Path) -> None:
    """Its samples cannot be sent one by one, as replay sends them."""
    feeds = [{"x": np.zeros((4, 3), np.float32)}]
    assert samples.write_golden_set(samples.Samples(feeds), tmp_path / REPLAY_FILE) is None
    assert not (tmp_path / REPLAY_FILE).exists()


def test_a_converted_model_that_is_a_link_is_refused(
    tmp_path: Path, make_plan: MakePlan, pvc_model: str, pvc_io: IOSettings, tiny_model: Path
) -> None:
    """The convert step could point its output at any file the publish container can read."""
    plan = make_plan(pvc_model, precision=Precision.FP32)
    sources, converted = _dirs(tmp_path)
    fetch_step(plan, sources, pvc_io, _quiet)
    (converted / handoff.ORIGINAL_FILE).symlink_to(tiny_model)
    with pytest.raises(BuildError, match="links are refused") as e:
        publish_step(plan, sources, converted, io=pvc_io)
    assert e.value.reason == "InvalidModel"
    assert _published(tmp_path) == []


def test_a_converted_model_may_not_refer_to_external_data(
    tmp_path: Path, make_plan: MakePlan, pvc_model: str, pvc_io: IOSettings
) -> None:
    """External data would be read relative to where the publish step puts the model; a
    reference like ../../proc/self/environ would copy its credentials into the artifact."""
    plan = make_plan(pvc_model, precision=Precision.FP32)
    sources, converted = _dirs(tmp_path)
    fetch_step(plan, sources, pvc_io, _quiet)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [8, 3], vals=np.zeros(24, np.float32))
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("float_data")
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "../../proc/self/environ"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (converted / handoff.ORIGINAL_FILE).write_bytes(model.SerializeToString())
    with pytest.raises(BuildError, match="external data") as e:
        publish_step(plan, sources, converted, io=pvc_io)
    assert e.value.reason == "InvalidModel"
    assert _published(tmp_path) == []


def test_the_convert_steps_failure_is_only_ever_a_message(
    tmp_path: Path, make_plan: MakePlan, pvc_model: str, pvc_io: IOSettings
) -> None:
    plan = make_plan(pvc_model, precision=Precision.FP32)
    sources, converted = _dirs(tmp_path)
    fetch_step(plan, sources, pvc_io, _quiet)
    forged = {"error": "all good", "reason": "Published"}
    (converted / handoff.FAILED_FILE).write_text(json.dumps(forged))
    with pytest.raises(BuildError, match="all good") as e:
        publish_step(plan, sources, converted, io=pvc_io)
    assert e.value.reason == "BuildFailed", "a reason the builder does not know is not passed on"

    # A failure report that is a link is not followed (it could lead to the store's secrets).
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"error": "AWS_SECRET_ACCESS_KEY=hunter2", "reason": "X"}))
    (converted / handoff.FAILED_FILE).unlink()
    (converted / handoff.FAILED_FILE).symlink_to(secret)
    with pytest.raises(BuildError, match="wrote no model") as e:
        publish_step(plan, sources, converted, io=pvc_io)
    assert "hunter2" not in e.value.message


def _job(tmp_path: Path, plan: BuildPlan, *args: str) -> tuple[int, dict[str, object]]:
    plan_path, log = tmp_path / "plan.json", tmp_path / "termination-log"
    plan_path.write_text(plan.model_dump_json())
    code = job_main(["--plan", str(plan_path), "--termination-log", str(log), *args])
    return code, json.loads(log.read_text())


def test_a_failed_step_leaves_its_failure_for_the_publish_step_to_report(
    tmp_path: Path,
    make_plan: MakePlan,
    pvc_model: str,
    pvc_io: IOSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSHIP_PVC_ROOT", str(pvc_io.pvc_root))
    plan = make_plan(pvc_model, sha256="0" * 64)
    sources, converted = _dirs(tmp_path)
    code, message = _job(tmp_path, plan, "--step", "fetch", "--sources", str(sources))
    assert (code, message["reason"]) == (0, "SourceDigestMismatch"), "the pod goes on"
    dirs = ["--sources", str(sources), "--converted", str(converted)]
    assert _job(tmp_path, plan, "--step", "convert", *dirs)[0] == 0
    code, message = _job(tmp_path, plan, "--step", "publish", *dirs)
    assert (code, message["reason"]) == (1, "SourceDigestMismatch")
    assert "but the spec pins" in str(message["error"])


def test_build_pods_refuse_file_sources(tmp_path: Path, make_plan: MakePlan) -> None:
    plan = make_plan("file:///etc/passwd")
    code, message = _job(tmp_path, plan, "--step", "fetch", "--sources", str(tmp_path / "s"))
    assert (code, message["reason"]) == (2, "InvalidPlan")
    assert "command line only" in str(message["error"])
    assert not (tmp_path / "s").exists()


def test_the_index_never_records_credentials(
    tmp_path: Path, make_plan: MakePlan, tiny_model: Path, fast_bench: BenchSettings
) -> None:
    from modelship_runtime.builder.pipeline import build

    plan = make_plan(f"{tiny_model.as_uri()}?X-Amz-Signature=s3cret", precision=Precision.FP32)
    lines: list[str] = []
    build(plan, bench=fast_bench, workdir=tmp_path, progress=lines.append)
    (entry,) = (tmp_path / "store" / "index").iterdir()
    recorded = json.loads(entry.read_text())
    assert recorded["source_uri"].endswith("?X-Amz-Signature=***")
    assert not [line for line in lines if "s3cret" in line], lines


def test_unexpected_errors_say_what_to_do() -> None:
    full = as_build_error(OSError(errno.ENOSPC, "No space left on device", "/tmp/x.onnx"))
    assert full.reason == "OutOfSpace"
    assert "/tmp/x.onnx" in full.message
    assert "build.scratchLimit" in full.message
    assert "build.memory" in as_build_error(MemoryError()).message
    assert "UID 65532" in as_build_error(PermissionError(errno.EACCES, "denied", "/a")).message


def test_a_converted_model_must_be_a_checked_onnx_model(
    tmp_path: Path, make_plan: MakePlan, pvc_model: str, pvc_io: IOSettings
) -> None:
    plan = make_plan(pvc_model, precision=Precision.FP32)
    sources, converted = _dirs(tmp_path)
    fetch_step(plan, sources, pvc_io, _quiet)
    broken = onnx.ModelProto()
    (converted / handoff.ORIGINAL_FILE).write_bytes(broken.SerializeToString())
    with pytest.raises(BuildError, match="not a valid ONNX model"):
        publish_step(plan, sources, converted, io=pvc_io)


@pytest.mark.slow
def test_the_operators_build_pod_builds_when_each_container_runs_as_rendered(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Every container of the operator's Job, run in order with exactly its arguments and
    environment, each volume a folder here: the artifact lands in the namespace's part."""
    import os
    import subprocess
    import sys

    from modelship.api.v1alpha1 import ModelDeploymentSpec
    from modelship.domain import desired, naming
    from modelship.domain.plan import build_target
    from modelship.domain.settings import Settings

    settings = Settings()
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "pvc://models/tiny.onnx"}, "optimization": {"precision": "fp32"}}
    )
    target = build_target(spec, settings.artifact_store().for_namespace("ml"))
    owner = naming.Owner("tiny", "ml", "uid-1")
    pod = desired.build_job(spec, target, owner, settings)["spec"]["template"]
    volumes = {v["name"]: tmp_path / "volumes" / v["name"] for v in pod["spec"]["volumes"]}
    for folder in volumes.values():
        folder.mkdir(parents=True)
    (volumes["source-0"] / "tiny.onnx").write_bytes(tiny_model.read_bytes())
    plan = pod["metadata"]["annotations"][naming.ANNOTATION_PLAN]
    (volumes["plan"] / "plan.json").write_text(plan.replace("/artifacts", str(volumes["store"])))

    def run(container: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))

        def here(value: str) -> str:
            for mount in mounts:
                if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                    return str(volumes[mount["name"]]) + value[len(mount["mountPath"]) :]
            return value

        env = {e["name"]: here(e["value"]) for e in container["env"] if "value" in e}
        env["MODELSHIP_PVC_ROOT"] = str(tmp_path / "volumes")  # claims mount as source-<i>
        (tmp_path / "volumes" / "models").symlink_to(volumes["source-0"])
        env |= {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path),
                "TMPDIR": here("/tmp"), "MODELSHIP_BENCH_SECONDS": "0.05"}  # fmt: skip
        log = tmp_path / f"{container['name']}.log"
        args = [here(a) for a in container["args"]]
        done = subprocess.run(
            [sys.executable, "-m", "modelship_runtime", *args, "--termination-log", str(log)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        (tmp_path / "volumes" / "models").unlink()
        assert done.returncode == 0 or container["name"] == "builder", done.stderr
        return done.returncode, json.loads(log.read_text())

    for init in pod["spec"]["initContainers"]:
        assert run(init)[1] == {"step": init["name"], "ok": True}
    code, result = run(pod["spec"]["containers"][0])
    assert code == 0, result
    published = volumes["store"] / "ml" / naming.hex_of(str(result["digest"]))
    assert result["uri"] == published.as_uri()
    assert result["modelSha256"] == file_sha256(published / "model.onnx")
