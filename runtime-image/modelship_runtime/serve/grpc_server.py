"""Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on grpc.aio.

Inputs may come as typed ``contents`` or as ``raw_input_contents``; outputs always go back as
``raw_output_contents`` (the compact form every V2 client reads).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from modelship_runtime.serve.dataplane import DataPlane, InferRequest, RequestedOutput
from modelship_runtime.serve.errors import ErrorKind, InferenceError, invalid
from modelship_runtime.serve.metrics import RequestMetrics
from modelship_runtime.serve.proto import open_inference_pb2 as pb
from modelship_runtime.serve.proto import open_inference_pb2_grpc as pb_grpc
from modelship_runtime.serve.tensors import (
    NUMPY_DTYPES,
    Tensor,
    check_datatype,
    check_shape,
    element_count,
    from_bytes,
    to_bytes,
)

STATUS = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNSUPPORTED_MEDIA: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

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


def _from_contents(tensor: Any) -> Tensor:
    name = tensor.name
    dtype = check_datatype("input", name, tensor.datatype)
    dims = check_shape("input", name, list(tensor.shape))
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise invalid(f"input '{name}': {tensor.datatype} has no typed contents; use raw contents")
    values = getattr(tensor.contents, field)
    count = element_count(dims)
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


def decode_request(request: Any) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(
            f"raw_input_contents has {len(raw)} entries but there are {len(request.inputs)} "
            "inputs; send one raw buffer per input, in the same order"
        )
    if not request.inputs:
        raise invalid("the request needs at least one input tensor")
    tensors = [
        from_bytes(t.name, t.datatype, list(t.shape), raw[i]) if raw else _from_contents(t)
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


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, metrics: RequestMetrics | None) -> None:
        self.plane = plane
        self.metrics = metrics
        self._active_infers = 0

    def pending(self) -> int:
        """ModelInfer RPCs whose handler has started and not yet returned (the data plane's
        ``Transport``). grpc.aio shows neither its connections nor RPCs it has not yet handed to
        a handler, so these are all the requests it can tell of."""
        return self._active_infers

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            return pb.ModelReadyResponse(
                ready=self.plane.model_ready(request.name, request.version or None)
            )
        except InferenceError as exc:
            await context.abort(STATUS[exc.kind], exc.message)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            meta = self.plane.model_metadata(request.name, request.version or None)
        except InferenceError as exc:
            await context.abort(STATUS[exc.kind], exc.message)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self._active_infers += 1
        try:
            return await self._answer_infer(request, context)
        finally:
            self._active_infers -= 1

    async def _answer_infer(self, request: Any, context: Any) -> Any:
        metrics = self.metrics
        started = time.perf_counter()
        if metrics is not None:
            metrics.started()
        code = 200
        try:
            response = await self.plane.infer(decode_request(request))
            reply = pb.ModelInferResponse(
                model_name=response.model_name,
                model_version=response.model_version,
                id=response.id or "",
                outputs=[
                    pb.ModelInferResponse.InferOutputTensor(
                        name=t.name, datatype=t.datatype, shape=list(t.data.shape)
                    )
                    for t in response.outputs
                ],
                raw_output_contents=[to_bytes(t.data) for t in response.outputs],
            )
        except InferenceError as exc:
            code = exc.kind.value
            error: tuple[grpc.StatusCode, str] = (STATUS[exc.kind], exc.message)
        except Exception as exc:  # a bug: answer INTERNAL and keep serving
            code = 500
            error = (grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if metrics is not None:
                metrics.finished("grpc", request.model_name, code, started)
        if code != 200:
            await context.abort(*error)
        return reply


def create_server(servicer: InferenceServicer, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server
    )
    return server
