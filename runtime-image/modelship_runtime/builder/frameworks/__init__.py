"""Models from other frameworks (PyTorch, TensorFlow, Keras, TF Lite) as ONNX.

Each framework's exporter (``torch.onnx``, ``tf2onnx``) writes the ONNX model, and the original
model stays loaded in its own framework so the build can run both on the same samples and fail
a conversion that changed what the model computes (:func:`verify`). The frameworks are only in
the converter images (the operator picks one per format for the build's convert step); this
package imports them lazily, so the runtime image imports it without them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.defs

from modelship.api.artifact import Accuracy
from modelship.api.v1alpha1 import AccuracySpec, ModelFormat, ModelSource
from modelship_runtime.agreement import cosine, max_abs_error
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.samples import Feed
from modelship_runtime.builder.validate import compare, verdict

Run = Callable[[Feed], dict[str, np.ndarray]]
"""The original model on one feed (ONNX input names): its outputs by ONNX output name."""

_TORCH = ("pytorch", "torch", "torch")
_TF = ("tensorflow", "tensorflow", "tensorflow")
_MODULES = {
    ModelFormat.PYTORCH: _TORCH,
    ModelFormat.TENSORFLOW: _TF,
    ModelFormat.KERAS: _TF,
    ModelFormat.TFLITE: _TF,
}
"""Per format: the converting module (in this package), the framework it imports and the
family of its converter image."""
_KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


@dataclass(frozen=True)
class Converted:
    """What a framework exporter made of the source, and the source, runnable."""

    onnx: Path
    """The exporter's ONNX model (not yet checked)."""
    framework: str
    """The framework and its version, e.g. ``torch 2.15.0``."""
    run: Run


def convert(path: Path, source: ModelSource, work: Path) -> Converted:
    """Convert the framework model at ``path`` to ONNX in ``work``."""
    module_name, framework, family = _MODULES[source.format]
    if importlib.util.find_spec(framework) is None:  # not imported here: TF reads its env first
        raise BuildError(
            f"format {source.format.value} needs {framework}, which this image lacks; "
            f"the operator runs the convert step of such builds in its {family} converter "
            f"image (MODELSHIP_{family.upper()}_CONVERTER_IMAGE, chart value "
            f"converterImages.{family}): set it to an image with {framework}",
            reason="ConversionFailed",
        )
    work.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"{__name__}.{module_name}")
    converted: Converted = module.convert(path, source, work)
    missing = unconverted_ops(onnx.load(str(converted.onnx), load_external_data=False))
    if missing:
        raise BuildError(
            f"the {converted.framework} model has operations the exporter could not convert to "
            f"ONNX: {', '.join(missing)}; replace them with standard operations (or export "
            "to ONNX yourself with custom-op handlers and use format onnx)",
            reason="ConversionFailed",
        )
    return converted


def first_line(e: BaseException) -> str:
    """An exception's type and the first line of its message (frameworks' run on for pages)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Frameworks and exporters print progress to stdout, the build's result channel, and
    warn freely: their output goes to stderr, their warnings nowhere."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def unconverted_ops(model: onnx.ModelProto) -> list[str]:
    """Node types ONNX (and ONNX Runtime's own domains) do not define: what an exporter left
    as it was because it had no conversion for it (tf2onnx does so for TF Lite)."""
    found: dict[str, int] = {}
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in _KNOWN_DOMAINS or (
            domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)
        ):
            label = f"{domain}.{node.op_type}" if domain else node.op_type
            found[label] = found.get(label, 0) + 1
    return [f"{name} (x{n})" if n > 1 else name for name, n in sorted(found.items())]


def rename_io(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename graph inputs and outputs (and every reference to them) in place."""
    graph = model.graph
    for value in (*graph.input, *graph.output):
        if value.name in names:
            value.name = names[value.name]
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]


def _per_output(
    names: Sequence[str], reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]
) -> list[str]:
    """Per output, the worst cosine and the max abs error over the samples, worst first."""
    figures = []
    for i, name in enumerate(names):
        pairs = [
            (ref[i].reshape(-1), got[i].reshape(-1))
            for ref, got in zip(reference, candidate, strict=True)
        ]
        worst = min(cosine(a, b) for a, b in pairs)
        err = max(max_abs_error(a, b) for a, b in pairs)
        figures.append((worst, f"{name}: cosine min {worst:.4f}, max abs error {err:.4g}"))
    return [text for _, text in sorted(figures)]


def verify(
    converted: Converted,
    output_names: Sequence[str],
    onnx_outputs: list[list[np.ndarray]],
    feeds: list[Feed],
    spec: AccuracySpec,
) -> Accuracy:
    """Compare the ONNX model's outputs (``onnx_outputs``, one list per feed in
    ``output_names`` order) with the original's on the same feeds, under the build's accuracy
    budget; fail the build, naming the worst output, when the conversion changed them."""
    reference = []
    for feed in feeds:
        try:
            outs = converted.run(feed)
        except Exception as e:  # the framework raises its own types on inputs it refuses
            raise BuildError(
                f"the {converted.framework} model failed on the validation samples "
                f"({first_line(e)}); give "
                "optimization.calibration with real inputs, or declare spec.model.inputs",
                reason="ConversionFailed",
            ) from e
        missing = [n for n in output_names if n not in outs]
        if missing:
            raise BuildError(
                f"the converted model's outputs {missing} do not match the {converted.framework} "
                f"model's ({sorted(outs)})",
                reason="ConversionMismatch",
            )
        reference.append(outs)
    floats = [i for i, n in enumerate(output_names) if onnx_outputs[0][i].dtype.kind == "f"]
    names = [output_names[i] for i in floats]
    ref = [[np.asarray(r[n], np.float64) for n in names] for r in reference]
    got = [[np.asarray(o[i], np.float64) for i in floats] for o in onnx_outputs]
    for r, g in zip(ref, got, strict=True):
        for name, a, b in zip(names, r, g, strict=True):
            if a.shape != b.shape:
                raise BuildError(
                    f"output {name} of the converted model has shape {list(b.shape)}, the "
                    f"{converted.framework} model's {list(a.shape)}",
                    reason="ConversionMismatch",
                )
    accuracy = compare(ref, got, spec)
    problem = verdict(accuracy, spec)
    if problem is not None:
        worst = _per_output(names, ref, got)
        raise BuildError(
            f"the converted ONNX model does not compute what the {converted.framework} model "
            f"does: {problem} (per output, worst first: {'; '.join(worst)}); the exporter "
            "changed the model (unsupported or data-dependent operations?): export it to ONNX "
            "yourself and check it, then use format onnx",
            reason="ConversionMismatch",
        )
    return accuracy
