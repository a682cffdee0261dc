"""``ModelInferRequest`` -> :class:`~.dataplane.InferRequest`, for the gRPC adapter.

Apart from :mod:`.grpc_server` because it reads messages by field name only and never imports
the generated proto module: the fuzz tests feed it messages built with another copy of the
same proto (tritonclient's), which cannot be loaded in one process with ours.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelship_runtime.serve.dataplane import InferRequest, RequestedOutput
from modelship_runtime.serve.errors import invalid
from modelship_runtime.serve.tensors import (
    NUMPY_DTYPES,
    InputBudget,
    InputLimits,
    Tensor,
    from_bytes,
    sized_shape,
)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _from_contents(tensor: Any, budget: InputBudget) -> Tensor:
    name = tensor.name
    dtype, dims, count = sized_shape(name, tensor.datatype, list(tensor.shape), budget)
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise invalid(f"input '{name}': {tensor.datatype} has no typed contents; use raw contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise invalid(
            f"input '{name}': shape {list(dims)} needs {count} values but {field} holds "
            f"{len(values)}"
        )
    for other, other_field in _CONTENTS_FIELD.items():
        if other_field != field and len(getattr(tensor.contents, other_field)):
            raise invalid(
                f"input '{name}' has datatype {tensor.datatype} but sets {other_field} "
                f"(for {other}); put the values in {field}"
            )
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        array = np.array(values, dtype=np.int64 if field == "int_contents" else None)
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise invalid(f"input '{name}': values must lie in [{info.min}, {info.max}]")
        array = array.astype(NUMPY_DTYPES[tensor.datatype], copy=False)
    return Tensor(name, tensor.datatype, array.reshape(dims))


def decode_request(request: Any, limits: InputLimits | None = None) -> InferRequest:
    """Decode a ``ModelInferRequest``. Every failure is an :class:`InferenceError` of a 4xx
    kind: the fuzz tests hold it to that."""
    budget = InputBudget(limits)
    budget.check_count(len(request.inputs))
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(
            f"raw_input_contents has {len(raw)} entries but there are {len(request.inputs)} "
            "inputs; send one raw buffer per input, in the same order"
        )
    if not request.inputs:
        raise invalid("the request needs at least one input tensor")
    tensors = [
        from_bytes(t.name, t.datatype, list(t.shape), raw[i], budget)
        if raw
        else _from_contents(t, budget)
        for i, t in enumerate(request.inputs)
    ]
    outputs = [RequestedOutput(o.name, True) for o in request.outputs] or None
    return InferRequest(
        request.model_name,
        request.model_version or None,
        tensors,
        outputs,
        request.id or None,
        True,
    )
