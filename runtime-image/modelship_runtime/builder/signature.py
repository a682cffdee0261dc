"""The model's input/output signature in API terms (Open Inference Protocol datatypes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from modelship.api.artifact import Signature
from modelship.api.v1alpha1 import TensorDatatype, TensorSpec

_ONNX_TO_OIP: dict[int, TensorDatatype] = {
    onnx.TensorProto.BOOL: TensorDatatype.BOOL,
    onnx.TensorProto.UINT8: TensorDatatype.UINT8,
    onnx.TensorProto.INT8: TensorDatatype.INT8,
    onnx.TensorProto.INT16: TensorDatatype.INT16,
    onnx.TensorProto.INT32: TensorDatatype.INT32,
    onnx.TensorProto.INT64: TensorDatatype.INT64,
    onnx.TensorProto.FLOAT16: TensorDatatype.FP16,
    onnx.TensorProto.FLOAT: TensorDatatype.FP32,
    onnx.TensorProto.DOUBLE: TensorDatatype.FP64,
    onnx.TensorProto.STRING: TensorDatatype.BYTES,
}
OIP_TO_NUMPY: dict[TensorDatatype, type[np.generic]] = {
    TensorDatatype.BOOL: np.bool_,
    TensorDatatype.UINT8: np.uint8,
    TensorDatatype.INT8: np.int8,
    TensorDatatype.INT16: np.int16,
    TensorDatatype.INT32: np.int32,
    TensorDatatype.INT64: np.int64,
    TensorDatatype.FP16: np.float16,
    TensorDatatype.FP32: np.float32,
    TensorDatatype.FP64: np.float64,
    TensorDatatype.BYTES: np.object_,
}


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    datatype = _ONNX_TO_OIP.get(tensor.elem_type, TensorDatatype.BYTES)
    return TensorSpec(name=value.name, datatype=datatype, shape=shape)


def signature_of(model_path: Path) -> Signature:
    # Weights are not needed for the signature; skip loading them (MiniLM: 90 MB).
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return Signature(
        inputs=[_spec(v) for v in model.graph.input if v.name not in initializers],
        outputs=[_spec(v) for v in model.graph.output],
    )
