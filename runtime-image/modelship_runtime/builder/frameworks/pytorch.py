"""PyTorch: a ``torch.export`` archive (``.pt2``), or a whole pickled module when allowed, to
ONNX with ``torch.onnx.export(..., dynamo=True)``.

An exported program declares its inputs (names, dtypes, which dimensions are dynamic), so its
signature comes from it; a pickled module declares nothing, so it is exported here from
``spec.model.inputs`` (dimensions of -1 become dynamic). Only the convert step imports this
module, in the torch converter image.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelship.api.v1alpha1 import ModelSource, TensorSpec
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.frameworks import Converted, first_line, quiet
from modelship_runtime.builder.samples import Feed
from modelship_runtime.builder.signature import OIP_TO_NUMPY

OPSET = 18
"""The ONNX opset the exporter targets (torch.onnx's dynamo exporter starts at 18)."""
_EXAMPLE_DYNAMIC = 2
"""Size of a dynamic dimension in the example inputs: torch.export specializes 0 and 1."""


def _kind(path: Path) -> str:
    """``export`` (a torch.export archive), ``torchscript``, or ``pickle`` (torch.save)."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            raise BuildError(
                f"{path.name} is a damaged zip archive (cut short? its directory at the end is "
                "missing); upload the complete file torch.export.save wrote",
                reason="InvalidModel",
            )
        if head[:1] == b"\x80":
            return "pickle"  # torch.save's legacy (pre-1.6) format
        raise BuildError(
            f"{path.name} is not a PyTorch file (neither a torch.export archive nor a "
            "torch.save zip); save the model with torch.export.save(torch.export.export(model, "
            "example_args), 'model.pt2')",
            reason="InvalidModel",
        )
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.split("/", 1)[-1] for n in z.namelist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise BuildError(
            f"{path.name} is a damaged zip archive ({first_line(e)}); upload it again",
            reason="InvalidModel",
        ) from e
    if "archive_format" in names or "models/model.json" in names:
        return "export"
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torchscript"
    return "pickle"


def _load_export(torch: Any, path: Path) -> Any:
    try:
        with quiet():
            return torch.export.load(str(path))
    except Exception as e:  # torch raises RuntimeError, KeyError, zip errors... on bad files
        raise BuildError(
            f"{path.name} is not a readable torch.export archive ({first_line(e)}); save it "
            "again with torch.export.save (the same torch version, a complete upload)",
            reason="InvalidModel",
        ) from e


def _example(spec: TensorSpec) -> np.ndarray:
    shape = [d if d > 0 else _EXAMPLE_DYNAMIC for d in spec.shape]
    dtype = OIP_TO_NUMPY[spec.datatype]
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return np.ones(shape, dtype)


def _export_module(torch: Any, path: Path, source: ModelSource) -> Any:
    """A whole pickled module (only with allowPickle), exported from the declared inputs."""
    if not source.allow_pickle:
        raise BuildError(
            f"{path.name} is a pickle (torch.save of a whole module): loading it runs code "
            "from the file. Export the model with torch.export.export and save it with "
            "torch.export.save (.pt2), or set spec.model.allowPickle: true if you trust the "
            "source",
            reason="PickleNotAllowed",
        )
    try:
        with quiet():
            module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # unpickling raises whatever the pickled code raises
        raise BuildError(
            f"could not load {path.name} with torch.load ({first_line(e)}); a pickled module "
            "needs its class importable where it is loaded: prefer torch.export.save (.pt2), "
            "which needs no code",
            reason="InvalidModel",
        ) from e
    if isinstance(module, dict):
        raise BuildError(
            f"{path.name} holds a state_dict (weights only, no graph); export the model with "
            "torch.export.export(model, example_args) and save it with torch.export.save",
            reason="InvalidModel",
        )
    if not isinstance(module, torch.nn.Module):
        raise BuildError(
            f"{path.name} holds a {type(module).__name__}, not a torch.nn.Module",
            reason="InvalidModel",
        )
    if not source.inputs:
        raise BuildError(
            "a pickled PyTorch module declares no inputs; declare spec.model.inputs (e.g. "
            "name: image, datatype: FP32, shape: [-1, 3, 224, 224]; -1 is a dynamic dimension)",
            reason="InvalidModel",
        )
    args = tuple(torch.from_numpy(_example(t)) for t in source.inputs)
    dims = tuple(
        {i: torch.export.Dim.DYNAMIC for i, d in enumerate(t.shape) if d < 0} or None
        for t in source.inputs
    )
    try:
        with quiet():
            return torch.export.export(module.eval(), args, dynamic_shapes=dims)
    except Exception as e:  # export raises many types on code it cannot trace
        raise BuildError(
            f"torch.export could not export the module with inputs "
            f"{[(t.name, t.shape) for t in source.inputs]} ({first_line(e)}); check "
            "spec.model.inputs (a dimension the model fixes cannot be -1), or export it "
            "yourself and save a .pt2",
            reason="ConversionFailed",
        ) from e


def convert(path: Path, source: ModelSource, work: Path) -> Converted:
    import torch
    from torch.utils import _pytree

    kind = _kind(path)
    if kind == "torchscript":
        raise BuildError(
            f"{path.name} is a TorchScript archive (torch.jit.save), which torch.onnx no "
            "longer exports; export the model with torch.export.export and save it with "
            "torch.export.save (.pt2)",
            reason="UnsupportedFormat",
        )
    program = _load_export(torch, path) if kind == "export" else _export_module(torch, path, source)
    declared = [str(n) for n in program.graph_signature.user_inputs]
    names = [t.name for t in source.inputs] if source.inputs else None
    if names is not None and len(names) != len(declared):
        raise BuildError(
            f"spec.model.inputs names {len(names)} inputs, the exported program takes "
            f"{len(declared)} ({', '.join(declared)}); declare one per input, in order",
            reason="InvalidModel",
        )
    out = work / "torch.onnx"
    try:
        with quiet():
            exported = torch.onnx.export(
                program, dynamo=True, input_names=names, opset_version=OPSET, verbose=False
            )
            exported.save(str(out))
    except Exception as e:  # the exporter raises its own error types per unsupported op
        raise BuildError(
            f"torch.onnx could not convert {path.name} ({first_line(e)}); operations without "
            "an ONNX translation need a custom translation (export to ONNX yourself and use "
            "format onnx)",
            reason="ConversionFailed",
        ) from e
    graph = onnx.load(str(out), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    module = program.module()

    def run(feed: Feed) -> dict[str, np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in inputs))
        leaves = [leaf for leaf in _pytree.tree_leaves(result) if isinstance(leaf, torch.Tensor)]
        return {n: leaf.detach().numpy() for n, leaf in zip(outputs, leaves, strict=False)}

    return Converted(onnx=out, framework=f"torch {torch.__version__}", run=run)
