"""Which source formats the builder reads, and how to recognise the ones it does not."""

from __future__ import annotations

from pathlib import Path

from modelship.api.v1alpha1 import ModelFormat
from modelship_runtime.builder.errors import BuildError

SUPPORTED = (
    "onnx (an ONNX ModelProto, .onnx, optionally inside a .tar/.tar.gz/.zip), "
    "sklearn (a pickled or joblib scikit-learn estimator or pipeline; needs allowPickle: true), "
    "pytorch (a torch.export archive, .pt2), tensorflow (a SavedModel directory in a "
    ".tar/.tar.gz/.zip), keras (a .keras file), tflite (a .tflite flatbuffer)"
)
MODEL_SUFFIXES = {
    ModelFormat.ONNX: (".onnx",),
    ModelFormat.SKLEARN: (".pkl", ".pickle", ".joblib"),
    ModelFormat.PYTORCH: (".pt2", ".pt", ".pth"),
    ModelFormat.TENSORFLOW: (".pb",),
    ModelFormat.KERAS: (".keras",),
    ModelFormat.TFLITE: (".tflite",),
}
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
"""What marks a SavedModel's directory."""


def unsupported(what: str) -> BuildError:
    return BuildError(
        f"{what}; supported formats: {SUPPORTED}. Save the model in one of them and set "
        "spec.model.format",
        reason="UnsupportedFormat",
    )


def sniff(path: Path) -> str | None:
    """Name of a well-known non-ONNX format ``path`` is in, if it is one."""
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (legacy Keras .h5: save it with model.save('model.keras'))"
    if head.startswith(b"GGUF"):
        return "a GGUF file (llama.cpp)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch .pt2 or a Keras .keras? set format pytorch or keras)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (use format sklearn with allowPickle if it is scikit-learn)"
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file (weights only, no graph)"
    return None


def _saved_model(root: Path, archive: str) -> Path:
    marks = (p for p in root.rglob("*") if p.is_file() and p.name in SAVED_MODEL_FILES)
    dirs = sorted({p.parent for p in marks})
    if len(dirs) == 1:
        return dirs[0]
    if not dirs:
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
        raise BuildError(
            f"archive {archive} holds no SavedModel (no saved_model.pb; it holds: "
            f"{', '.join(names) or 'nothing'}); pack the directory tf.saved_model.save or "
            "model.export wrote (tar czf model.tar.gz -C <dir> .)",
            reason="InvalidModel",
        )
    found = ", ".join(str(d.relative_to(root)) for d in dirs[:10])
    raise BuildError(
        f"archive {archive} holds several SavedModels ({found}); pack one per archive",
        reason="InvalidModel",
    )


def locate(root: Path, fmt: ModelFormat, archive: str) -> Path:
    """The model inside an unpacked archive (a SavedModel: its directory)."""
    if fmt == ModelFormat.TENSORFLOW:
        return _saved_model(root, archive)
    suffixes = MODEL_SUFFIXES[fmt]
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes)
    if len(found) == 1:
        return found[0]
    named = [p for p in found if p.stem == "model"]
    if len(named) == 1:
        return named[0]
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    if not found:
        raise unsupported(
            f"archive {archive} has no {'/'.join(suffixes)} file for format {fmt.value} "
            f"(it holds: {', '.join(names) or 'nothing'})"
        )
    raise BuildError(
        f"archive {archive} has several {'/'.join(suffixes)} files "
        f"({', '.join(str(p.relative_to(root)) for p in found[:10])}); name the one to serve "
        "model" + suffixes[0],
        reason="InvalidModel",
    )
