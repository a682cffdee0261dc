"""Source file -> a checked, shape-inferred ONNX model on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import uses_external_data

from modelship.api.v1alpha1 import ModelFormat, ModelSource, TensorDatatype, TensorSpec
from modelship_runtime.builder import formats
from modelship_runtime.builder.errors import BuildError

_SKL_TYPES = {
    TensorDatatype.FP32: "FloatTensorType",
    TensorDatatype.FP64: "DoubleTensorType",
    TensorDatatype.INT64: "Int64TensorType",
    TensorDatatype.INT32: "Int32TensorType",
    TensorDatatype.BOOL: "BooleanTensorType",
    TensorDatatype.BYTES: "StringTensorType",
}


def _invalid(path: Path, error: object) -> BuildError:
    return BuildError(
        f"{path.name} is not a valid ONNX model ({error}); re-export it and check it with "
        "onnx.checker.check_model before building",
        reason="InvalidModel",
    )


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a graph: initializers and attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_onnx(path: Path, out: Path, *, external_data: bool = True) -> None:
    """Check ``path`` with onnx.checker, infer shapes, and save the result to ``out``.

    The result is one self-contained file. ``external_data=False`` is for a model another
    step wrote: it must be self-contained already, since its references to "external" files
    could name anything this process can read.
    """
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning... on garbage
        kind = formats.sniff(path)
        if kind:
            raise formats.unsupported(f"{path.name} is {kind}, not ONNX") from e
        raise _invalid(path, e) from e
    if not model.graph.node:
        kind = formats.sniff(path)
        if kind:
            raise formats.unsupported(f"{path.name} is {kind}, not ONNX")
        raise _invalid(path, "the graph has no nodes")
    if not external_data and any(uses_external_data(t) for t in _tensors(model.graph)):
        raise _invalid(path, "it refers to external data files, and a converted model may not")
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise _invalid(path, str(e).splitlines()[0] if str(e) else e) from e
    onnx.save(inferred, str(out))


def _initial_types(estimator: Any, inputs: list[TensorSpec] | None) -> list[tuple[str, Any]]:
    from skl2onnx.common import data_types

    if inputs:
        return [
            (t.name, getattr(data_types, _SKL_TYPES[t.datatype])([None, *t.shape[1:]]))
            for t in inputs
        ]
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise BuildError(
            "cannot tell the input width of this scikit-learn model; declare "
            "spec.model.inputs (e.g. name: input, datatype: FP32, shape: [-1, 64])",
            reason="InvalidModel",
        )
    return [("input", data_types.FloatTensorType([None, int(n)]))]


def convert_sklearn(path: Path, source: ModelSource, out: Path) -> None:
    """Unpickle a scikit-learn estimator (only when allowed) and convert it with skl2onnx."""
    if not source.allow_pickle:
        raise BuildError(
            "format sklearn unpickles the model, which runs code from the file; set "
            "spec.model.allowPickle: true only if you trust the source",
            reason="PickleNotAllowed",
        )
    import joblib
    import skl2onnx

    try:
        estimator = joblib.load(path)
    except Exception as e:  # unpickling can raise anything the pickled code raises
        raise BuildError(
            f"could not unpickle {path.name} ({type(e).__name__}: {e}); save it with "
            "joblib.dump or pickle.dump from the same scikit-learn version",
            reason="InvalidModel",
        ) from e
    try:
        # zipmap off: probabilities as a plain float tensor, not a list of dicts.
        onx = skl2onnx.to_onnx(
            estimator,
            initial_types=_initial_types(estimator, source.inputs),
            options={"zipmap": False},
        )
    except Exception as e:  # skl2onnx raises RuntimeError/NameError/... for unknown estimators
        raise BuildError(
            f"skl2onnx cannot convert {type(estimator).__name__} ({e}); use estimators "
            "skl2onnx supports or export to ONNX yourself and use format onnx",
            reason="UnsupportedFormat",
        ) from e
    tmp = out.with_suffix(".skl2onnx.onnx")
    onnx.save(onx, str(tmp))
    check_onnx(tmp, out)
    tmp.unlink()


def to_onnx(path: Path, source: ModelSource, out: Path) -> None:
    """Write the source model at ``path`` to ``out`` as checked ONNX."""
    if source.format == ModelFormat.ONNX:
        check_onnx(path, out)
    elif source.format == ModelFormat.SKLEARN:
        convert_sklearn(path, source, out)
    else:  # the API enum and this module must grow together
        raise formats.unsupported(f"format {source.format!r} is not supported")
