"""The server loads only the bytes the builder published: the model's sha256 the operator
recorded, the manifest of the artifact it was told to serve, and file names that stay in the
artifact folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import modelfactory
import pytest

from modelship_runtime.serve.artifact import ArtifactError, load_manifest, model_file, verify_model
from modelship_runtime.serve.settings import ServeSettings

DIGEST = "sha256:" + "0" * 64  # the digest modelfactory's manifest names


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(model_dir: Path, **fields: object) -> ServeSettings:
    return ServeSettings(model_dir=model_dir, **fields)  # type: ignore[arg-type]


def test_the_recorded_sha256_is_checked_before_loading(tmp_path: Path) -> None:
    directory = modelfactory.artifact(tmp_path / "a")
    manifest = load_manifest(directory)
    path = model_file(directory, manifest)
    good = _sha256(path)
    verify_model(path, manifest, _settings(directory, model_sha256=good, artifact_digest=DIGEST))
    with pytest.raises(ArtifactError, match="the operator recorded"):
        verify_model(path, manifest, _settings(directory, model_sha256="f" * 64))


def test_without_a_recorded_sha256_the_manifests_is_checked(tmp_path: Path) -> None:
    directory = modelfactory.artifact(tmp_path / "a")
    data = json.loads((directory / "manifest.json").read_text())
    data["model_sha256"] = "e" * 64  # the model was replaced behind the manifest's back
    (directory / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(directory)
    with pytest.raises(ArtifactError, match="its manifest says"):
        verify_model(model_file(directory, manifest), manifest, _settings(directory))


def test_a_manifest_of_another_artifact_is_refused(tmp_path: Path) -> None:
    directory = modelfactory.artifact(tmp_path / "a")
    manifest = load_manifest(directory)
    other = "sha256:" + "9" * 64
    with pytest.raises(ArtifactError, match=f"not {other}"):
        verify_model(model_file(directory, manifest), manifest,
                     _settings(directory, artifact_digest=other))  # fmt: skip


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "manifest.json", ".hidden"])
def test_a_manifest_cannot_point_outside_the_artifact(tmp_path: Path, name: str) -> None:
    directory = modelfactory.artifact(tmp_path / "a")
    data = json.loads((directory / "manifest.json").read_text())
    data["model_file"] = name
    (directory / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="not a valid artifact manifest"):
        load_manifest(directory)


def test_the_server_refuses_to_start_on_other_bytes(tmp_path: Path) -> None:
    directory = modelfactory.artifact(tmp_path / "a")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    run = subprocess.run(
        [sys.executable, "-m", "modelship_runtime", "serve", "--model-dir", str(directory),
         "--host", "127.0.0.1", "--model-sha256", "f" * 64],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert "the operator recorded" in run.stderr
    assert _sha256(directory / "model.onnx") in run.stderr
