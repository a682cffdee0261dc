"""The protocol-neutral data plane: health, metadata and validated inference for one model.

REST and gRPC adapters decode their wire formats into :class:`InferRequest` and encode
:class:`InferResponse`; everything that decides whether a request is acceptable lives here, so
both protocols reject the same inputs with the same messages. Each listener is attached as a
:class:`Transport` that says how many requests it knows of, so whether a request is alone in the
server is decided here too, over all protocols together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from modelship_runtime.serve.errors import (
    ErrorKind,
    InferenceError,
    internal_error,
    invalid,
    not_found,
)
from modelship_runtime.serve.model import Feeds, Predictor, TensorInfo
from modelship_runtime.serve.tensors import InputLimits, Tensor, datatype_of

SERVER_NAME = "modelship"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None
    """REST binary extension: None means "use the request's default"."""


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    binary_outputs: bool = False
    mirrored: bool = False
    """Sent by another pod's mirror: never mirrored on (a plan pointing a pod at its own
    Service must not feed mirrors back into themselves)."""


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[Tensor]
    binary: list[bool] = field(default_factory=list)


@dataclass(slots=True)
class ServedModel:
    """A loaded model as the data plane sees it: identity, signature, a way to predict."""

    name: str
    version: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    predictor: Predictor


class Transport(Protocol):
    """A listener that feeds the data plane, as far as deciding "alone" needs to know it."""

    def pending(self) -> int | None:
        """Requests and connections this transport knows of, the one being predicted included;
        None when it cannot tell."""
        ...


class Tap(Protocol):
    """Sees a sampled share of served requests after they are answered (canary mirroring)."""

    output: str
    """The output the tap needs, computed for sampled requests even when not asked for."""

    def sample(self) -> bool: ...

    def served(self, request_id: str | None, feeds: Feeds, output: np.ndarray[Any, Any]) -> None:
        """Called soon after the request was answered (``call_soon``); must not block."""
        ...


class DataPlane:
    def __init__(self, model: ServedModel, limits: InputLimits | None = None) -> None:
        self.model = model
        self.limits = limits or InputLimits()
        """What the protocol adapters let one request decode (checked before decoding)."""
        self.live = True
        self.ready = False
        """Readiness probe answer: true after warm-up, false again once draining starts."""
        self.serving = False
        """Whether infer is accepted: true after warm-up and stays true while draining, since
        requests keep arriving until load balancers notice readiness went false."""
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._transports: list[Transport] = []
        self.tap: Tap | None = None
        self._inputs = {info.name: info for info in model.inputs}
        self._outputs = {info.name: info for info in model.outputs}
        self._output_index = {info.name: i for i, info in enumerate(model.outputs)}
        self._input_names = ", ".join(f"'{n}'" for n in self._inputs)
        self._output_names = ", ".join(f"'{n}'" for n in self._outputs)

    # --- health and metadata ---------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def find_model(self, name: str, version: str | None) -> ServedModel:
        model = self.model
        if name != model.name:
            raise not_found(f"model '{name}' is not served here; this server serves '{model.name}'")
        if version and version != model.version:
            raise not_found(
                f"model '{name}' has no version '{version}'; the served version is "
                f"'{model.version}' (or omit the version)"
            )
        return model

    def model_ready(self, name: str, version: str | None) -> bool:
        self.find_model(name, version)
        return self.ready

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.find_model(name, version)
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": PLATFORM,
            "inputs": [info.metadata() for info in model.inputs],
            "outputs": [info.metadata() for info in model.outputs],
        }

    # --- inference -------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        model = self.find_model(request.model_name, request.model_version)
        if not self.serving:
            raise InferenceError(
                ErrorKind.UNAVAILABLE,
                f"model '{model.name}' is still warming up; retry when /v2/health/ready is 200",
            )
        feeds = self.validate_inputs(request.inputs)
        names, binary = self._requested_outputs(request)
        tap = self.tap
        call_names = names
        if tap is not None and not request.mirrored and tap.sample():
            if names is not None and tap.output not in names:
                call_names = [*names, tap.output]
        else:
            tap = None
        self.in_flight += 1
        self._idle.clear()
        try:
            arrays = await model.predictor.predict(feeds, call_names)
        except InferenceError:
            raise
        except Exception as exc:
            # The inputs match the model's signature, so a failure inside the graph (an index
            # out of range, a shape it cannot take) counts against the model, as KServe and
            # Triton count it: a new version that fails where the old one answers must show up
            # in the 5xx rate that canary analysis judges.
            raise internal_error(
                "the model failed on these inputs, which match its signature", exc
            ) from exc
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if tap is not None:
            index = call_names.index(tap.output) if call_names else self._output_index[tap.output]
            # After this task has handed the answer to its transport: mirroring never runs
            # before, nor delays, the client's answer.
            asyncio.get_running_loop().call_soon(tap.served, request.id, feeds, arrays[index])
            if call_names is not names:
                arrays = arrays[:-1]
        outputs = [
            Tensor(name, datatype_of(array), array)
            for name, array in zip(names or list(self._outputs), arrays, strict=True)
        ]
        return InferResponse(model.name, model.version, request.id, outputs, binary)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def attach(self, transport: Transport) -> None:
        self._transports.append(transport)

    def alone(self) -> bool:
        """Whether the request being predicted is the only one the server knows of: then
        running it on the event loop thread delays nobody (see
        :data:`~modelship_runtime.serve.model.Alone`).

        A transport that cannot tell makes every request "not alone": a guess would serve
        concurrent clients one by one on the loop.
        """
        if self.in_flight > 1:
            return False
        known = 0
        for transport in self._transports:
            pending = transport.pending()
            if pending is None:
                return False
            known += pending
        return known <= 1

    def validate_inputs(self, inputs: Sequence[Tensor]) -> Feeds:
        feeds: Feeds = {}
        dims: dict[str, tuple[int, str]] = {}
        for tensor in inputs:
            info = self._inputs.get(tensor.name)
            if info is None:
                raise invalid(
                    f"unknown input '{tensor.name}'; the model's inputs are {self._input_names}"
                )
            if tensor.name in feeds:
                raise invalid(f"input '{tensor.name}' is given twice; send each input once")
            if tensor.datatype != info.datatype:
                raise invalid(
                    f"input '{tensor.name}' has datatype {tensor.datatype} but the model expects "
                    f"{info.datatype}"
                )
            shape = tensor.data.shape
            if len(shape) != len(info.shape) or any(
                want >= 0 and got != want for got, want in zip(shape, info.shape, strict=True)
            ):
                raise invalid(
                    f"input '{tensor.name}' has shape {list(shape)} but the model expects "
                    f"{list(info.shape)} (-1 = any size)"
                )
            for axis, symbol in enumerate(info.dim_names):
                if symbol is None:
                    continue
                seen = dims.setdefault(symbol, (shape[axis], tensor.name))
                if seen[0] != shape[axis]:
                    raise invalid(
                        f"input '{tensor.name}' has {shape[axis]} in dimension {axis} "
                        f"('{symbol}') but input '{seen[1]}' has {seen[0]} there; inputs sharing "
                        "a named dimension must agree on its size"
                    )
            feeds[tensor.name] = tensor.data
        if len(feeds) != len(self._inputs):
            missing = ", ".join(f"'{n}'" for n in self._inputs if n not in feeds)
            raise invalid(f"missing input(s) {missing}; the model needs {self._input_names}")
        return feeds

    def _requested_outputs(self, request: InferRequest) -> tuple[list[str] | None, list[bool]]:
        if not request.outputs:
            return None, [request.binary_outputs] * len(self._outputs)
        names: list[str] = []
        binary: list[bool] = []
        for output in request.outputs:
            if output.name not in self._outputs:
                raise invalid(
                    f"unknown output '{output.name}'; the model's outputs are {self._output_names}"
                )
            names.append(output.name)
            binary.append(request.binary_outputs if output.binary is None else output.binary)
        return names, binary
