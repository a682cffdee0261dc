"""The artifact directory a server loads: its manifest, its model file, and the check that the
model is the bytes the builder published (no onnxruntime here: it runs before the session)."""

from __future__ import annotations

from pathlib import Path

from modelship.api.artifact import MANIFEST_FILE, MODEL_FILE, Manifest
from modelship.api.serving import ServingConfig, env_name
from modelship_runtime.store import file_sha256


class ArtifactError(Exception):
    """The artifact directory cannot be served; the message says what to fix."""


def load_manifest(model_dir: Path) -> Manifest | None:
    path = model_dir / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise ArtifactError(f"{path} is not a valid artifact manifest: {exc}") from exc


def model_file(model_dir: Path, manifest: Manifest | None) -> Path:
    path = model_dir / (manifest.model_file if manifest else MODEL_FILE)
    if not path.is_file():
        raise ArtifactError(
            f"no model at {path}; point --model-dir ({env_name('model_dir')}) at an artifact "
            "directory with model.onnx and manifest.json, or set --artifact-uri and "
            "--artifact-digest to download one"
        )
    return path


def verify_model(path: Path, manifest: Manifest | None, settings: ServingConfig) -> None:
    """Refuse to load bytes other than those the builder published: the model's sha256 must
    be the one the operator recorded (without one, the manifest's), and the manifest must be
    the one of the artifact the pod was told to serve."""
    told = settings.artifact_digest
    if manifest is not None and told and manifest.digest != told:
        raise ArtifactError(
            f"{path.parent} holds artifact {manifest.digest}, not {told}: the store was "
            "modified by hand; delete the artifact folder and its build Job to rebuild it"
        )
    expected = settings.model_sha256 or (manifest.model_sha256 if manifest else None)
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        source = "the operator recorded" if settings.model_sha256 else "its manifest says"
        raise ArtifactError(
            f"{path} has sha256 {actual}, but {source} {expected}: the artifact changed after "
            "it was built; delete the artifact folder and its build Job to rebuild it"
        )
