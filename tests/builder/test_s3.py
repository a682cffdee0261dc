"""The S3 store and s3:// sources against a real MinIO server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server, minio

from builder_helpers import manifest_for, run_all_at_once
from modelship.api.artifact import MANIFEST_FILE, MODEL_FILE, ArtifactStore, BuildPlan
from modelship.api.serving import MODEL_DIR, REPLAY_FILE, env_name
from modelship.api.v1alpha1 import ModelDeploymentSpec, Precision, S3Settings
from modelship.domain import desired
from modelship.domain.naming import Owner
from modelship.domain.observation import Artifact
from modelship.domain.release import RevisionPlan
from modelship.domain.settings import Settings
from modelship_runtime.builder.benchmark import BenchSettings
from modelship_runtime.builder.pipeline import build
from modelship_runtime.s3client import make_client
from modelship_runtime.store import IndexEntry, S3Store, StoreError, file_sha256, open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with minio(tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    # Credentials reach the builder the way a Secret does in a pod: as environment variables.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    client = make_client(S3Settings(endpoint=s3_server.endpoint))
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name, client


def test_store_roundtrip(bucket: tuple[str, Any], s3_server: S3Server, tmp_path: Path) -> None:
    name, client = bucket
    store = open_store(
        ArtifactStore(uri=f"s3://{name}/artifacts", s3=S3Settings(endpoint=s3_server.endpoint))
    )
    assert isinstance(store, S3Store)
    digest = "sha256:" + "ab" * 32
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model-bytes" * 100)
    assert not store.exists(digest)
    assert store.get_manifest(digest) is None

    uri = store.publish(digest, model, manifest_for(model, digest))

    assert uri == f"s3://{name}/artifacts/{'ab' * 32}"
    assert store.exists(digest)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"])
    assert keys == [f"artifacts/{'ab' * 32}/manifest.json", f"artifacts/{'ab' * 32}/model.onnx"]
    got = store.download(digest, tmp_path / "dest")
    assert (tmp_path / "dest" / "model.onnx").read_bytes() == model.read_bytes()
    assert got.model_sha256 == file_sha256(model)

    key = "12" * 32
    assert store.get_index(key) is None
    store.put_index(key, IndexEntry(digest=digest, source_sha256="cd" * 32, source_uri="s3://x/y"))
    entry = store.get_index(key)
    assert entry is not None
    assert entry.digest == digest

    assert not (tmp_path / "dest" / REPLAY_FILE).exists()  # published without a golden set
    with_golden = "sha256:" + "ef" * 32
    golden = tmp_path / REPLAY_FILE
    golden.write_bytes(b"golden-bytes")
    store.publish(with_golden, model, manifest_for(model, with_golden), golden)
    store.download(with_golden, tmp_path / "dest")
    assert (tmp_path / "dest" / REPLAY_FILE).read_bytes() == b"golden-bytes"

    # Bytes replaced behind the manifest's back are refused, not served.
    client.put_object(Bucket=name, Key=f"artifacts/{'ab' * 32}/model.onnx", Body=b"tampered")
    with pytest.raises(StoreError, match="do not match"):
        store.download(digest, tmp_path / "dest2")


def test_concurrent_publishes_settle_on_one_intact_artifact(
    bucket: tuple[str, Any], tmp_path: Path
) -> None:
    name, client = bucket
    digest = "sha256:" + "cd" * 32
    models = []
    for i in range(6):
        path = tmp_path / f"{i}.onnx"
        path.write_bytes(f"variant-{i}".encode() * 5000)
        models.append(path)

    def publish(model: Path) -> None:
        S3Store(f"s3://{name}/a", client).publish(digest, model, manifest_for(model, digest))

    run_all_at_once(publish, models)
    got = S3Store(f"s3://{name}/a", client).download(digest, tmp_path / "dest")
    assert got.model_sha256 == file_sha256(tmp_path / "dest" / "model.onnx")


def test_build_from_s3_source_into_s3_store(
    bucket: tuple[str, Any],
    s3_server: S3Server,
    tiny_model: Path,
    make_plan: Callable[..., BuildPlan],
    tmp_path: Path,
    fast_bench: BenchSettings,
) -> None:
    name, client = bucket
    client.upload_file(str(tiny_model), name, "models/tiny.onnx")
    s3 = S3Settings(endpoint=s3_server.endpoint)
    plan = make_plan(
        f"s3://{name}/models/tiny.onnx", store=f"s3://{name}/store", s3=s3, precision=Precision.AUTO
    )
    plan = plan.model_copy(update={"store": ArtifactStore(uri=f"s3://{name}/store", s3=s3)})

    result = build(plan, bench=fast_bench, workdir=tmp_path)

    assert not result.reused
    assert result.digest == plan.artifact_digest(file_sha256(tiny_model))
    assert result.uri == f"s3://{name}/store/{result.digest.removeprefix('sha256:')}"
    store = open_store(plan.store)
    index = store.get_index(plan.request_key)
    assert index is not None
    assert index.digest == result.digest
    # Unpinned source: fetched and hashed again, then found in the store.
    again = build(plan, bench=fast_bench, workdir=tmp_path)
    assert again.reused
    assert again.digest == result.digest


def test_serving_init_container_downloads_the_artifact_from_s3(
    bucket: tuple[str, Any],
    s3_server: S3Server,
    tiny_model: Path,
    make_plan: Callable[..., BuildPlan],
    tmp_path: Path,
    fast_bench: BenchSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch-artifact init container, run as the operator writes it, against real S3."""
    name, _client = bucket
    s3 = S3Settings(endpoint=s3_server.endpoint)
    plan = make_plan(tiny_model.as_uri(), precision=Precision.FP32)
    plan = plan.model_copy(update={"store": ArtifactStore(uri=f"s3://{name}/artifacts", s3=s3)})
    built = build(plan, bench=fast_bench, workdir=tmp_path)

    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", name)
    monkeypatch.setenv("MODELSHIP_STORE_S3_ENDPOINT", s3_server.endpoint)
    pod = desired.revision_deployment(
        ModelDeploymentSpec.model_validate({"model": {"uri": "s3://m/model.onnx"}}),
        Owner("mlp", "ml", "uid-1"),
        RevisionPlan("0123456789", Artifact(built.digest, built.uri), 1, "request-key"),
        Settings(),
    )["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    model_dir = tmp_path / "model"  # the emptyDir the server container mounts
    args = init["args"]
    env = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    assert env[env_name("model_dir")] == str(MODEL_DIR)
    env[env_name("model_dir")] = str(model_dir)
    # The Secret's keys, as the pod's secretKeyRef would set them.
    env |= {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    env |= {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path)}

    def fetch(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelship_runtime", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    run = fetch(args)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == [REPLAY_FILE, MANIFEST_FILE, MODEL_FILE]
    assert file_sha256(model_dir / "model.onnx") == built.manifest.model_sha256

    env[env_name("artifact_digest")] = "sha256:" + "0" * 64
    run = fetch(args)
    assert run.returncode == 1
    assert "download failed" in run.stderr
    assert "0" * 64 in run.stderr, run.stderr
