"""Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on grpc.aio.

Inputs may come as typed ``contents`` or as ``raw_input_contents``; outputs always go back as
``raw_output_contents`` (the compact form every V2 client reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from modelship_runtime.serve.dataplane import DataPlane
from modelship_runtime.serve.errors import ErrorKind, InferenceError, internal_error
from modelship_runtime.serve.grpc_decoding import decode_request
from modelship_runtime.serve.metrics import RequestMetrics
from modelship_runtime.serve.proto import open_inference_pb2 as pb
from modelship_runtime.serve.proto import open_inference_pb2_grpc as pb_grpc
from modelship_runtime.serve.tensors import to_bytes

STATUS = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNSUPPORTED_MEDIA: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


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
            response = await self.plane.infer(decode_request(request, self.plane.limits))
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
            bug = internal_error("internal error while answering an infer request", exc)
            error = (grpc.StatusCode.INTERNAL, bug.message)
        finally:
            if metrics is not None:
                metrics.finished("grpc", request.model_name, code, started)
        if code != 200:
            await context.abort(*error)
        return reply


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """What one gRPC server accepts at once; RPCs over ``max_concurrent_rpcs`` are refused
    with RESOURCE_EXHAUSTED by grpc itself, before any handler (or metric) sees them."""

    max_message_bytes: int = 64 << 20
    max_concurrent_rpcs: int = 256
    max_metadata_bytes: int = 16 << 10
    handshake_timeout_s: float = 10.0


def create_server(servicer: InferenceServicer, limits: GrpcLimits) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.max_metadata_size", limits.max_metadata_bytes),
            ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout_s * 1000)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server
    )
    return server
