"""Open Inference Protocol over HTTP/REST as a bare ASGI application.

No framework router: the hot path (POST .../infer) is a handful of string comparisons, one orjson
parse and one orjson dump, because per-request framework overhead dominates for small models.
Supports JSON tensors and the binary tensor data extension (``Inference-Header-Content-Length``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from modelship.api.serving import MIRROR_HEADER
from modelship_runtime.serve.dataplane import (
    DataPlane,
    InferRequest,
    InferResponse,
    RequestedOutput,
)
from modelship_runtime.serve.errors import ErrorKind, InferenceError, internal_error, invalid
from modelship_runtime.serve.metrics import RequestMetrics
from modelship_runtime.serve.mirror import LIVE, REPLAY
from modelship_runtime.serve.tensors import (
    InputBudget,
    InputLimits,
    Tensor,
    from_bytes,
    from_json,
    to_bytes,
    to_json_data,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]
BodyReader = Callable[[int], Awaitable[bytes]]
"""Reads the whole request body, raising 413 once it exceeds the given limit."""

JSON = b"application/json"
OCTET = b"application/octet-stream"
HEADER_LENGTH = b"inference-header-content-length"
_MIRROR_HEADER = MIRROR_HEADER.encode()
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_EMPTY: dict[str, Any] = {}


class Reply:
    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra = extra


def error_reply(kind: ErrorKind, message: str) -> Reply:
    return Reply(kind.value, orjson.dumps({"error": message}))


class RestApp:
    """ASGI app: ``await app(scope, receive, send)``."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: RequestMetrics | None,
        max_request_bytes: int,
        mirror_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.mirror_status = mirror_status
        """``GET /v2/mirror``: what the mirroring reports (None: this server never mirrors)."""
        self.draining = False
        """Set on SIGTERM: under uvicorn, every further response asks to close its connection
        (the built-in server does that itself)."""

    async def handle(
        self, method: str, path: str, headers: Headers, read_body: BodyReader
    ) -> Reply:
        """Answer one request; the transport-neutral entry point (ASGI or :mod:`.http_server`)."""
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[0] == "v2" and parts[1] == "models" and parts[-1] == "infer":
            return await self._infer_route(headers, read_body, parts, method)
        return self._get_route(parts, method)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point, for running under uvicorn (``--http-server uvicorn``)."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        reply = await self.handle(
            scope["method"],
            scope["path"],
            scope["headers"],
            lambda limit: _read_body(receive, limit),
        )
        headers = [(b"content-type", reply.content_type)]
        if reply.extra:
            headers.extend(reply.extra)
        if self.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    # --- health and metadata ---------------------------------------------------------------

    def _get_route(self, parts: list[str], method: str) -> Reply:
        plane = self.plane
        if parts[0] != "v2":
            return _no_route(parts)
        if method not in ("GET", "HEAD"):
            return Reply(405, orjson.dumps({"error": f"use GET for /{'/'.join(parts)}"}))
        n = len(parts)
        try:
            if n == 1:
                return Reply(200, orjson.dumps(plane.server_metadata()))
            if n == 3 and parts[1] == "health" and parts[2] in ("live", "ready"):
                ok = plane.live if parts[2] == "live" else plane.ready
                return Reply(200 if ok else 503, orjson.dumps({parts[2]: ok}))
            if n == 2 and parts[1] == "mirror":
                status = (
                    self.mirror_status()
                    if self.mirror_status
                    else {"enabled": False, "reason": "this server does not mirror"}
                )
                return Reply(200, orjson.dumps(status))
            if parts[1] == "models" and n >= 3:
                name, version, rest = _model_path(parts)
                if rest == []:
                    return Reply(200, orjson.dumps(plane.model_metadata(name, version)))
                if rest == ["ready"]:
                    ready = plane.model_ready(name, version)
                    return Reply(200 if ready else 503, orjson.dumps({"ready": ready}))
        except InferenceError as exc:
            return error_reply(exc.kind, exc.message)
        return _no_route(parts)

    # --- inference -------------------------------------------------------------------------

    async def _infer_route(
        self, headers: Headers, read_body: BodyReader, parts: list[str], method: str
    ) -> Reply:
        metrics = self.metrics
        started = time.perf_counter()
        mirrored = mirror_source(headers)
        if metrics is not None and mirrored is None:
            metrics.started()
        name, version, rest = _model_path(parts)
        try:
            if rest != ["infer"]:
                reply = _no_route(parts)
            elif method != "POST":
                reply = Reply(405, orjson.dumps({"error": "use POST for .../infer"}))
            else:
                response = await self._infer(headers, read_body, name, version, mirrored)
                reply = _encode(response)
        except InferenceError as exc:
            reply = error_reply(exc.kind, exc.message)
        except Exception as exc:  # a bug: answer, count, and keep the worker alive
            error = internal_error("internal error while answering an infer request", exc)
            reply = error_reply(error.kind, error.message)
        if metrics is not None:
            if mirrored is None:
                metrics.finished("rest", name, reply.status, started)
            else:
                metrics.mirror_served(name, mirrored, reply.status)
        return reply

    async def _infer(
        self,
        headers: Headers,
        read_body: BodyReader,
        name: str,
        version: str | None,
        mirrored: str | None,
    ) -> InferResponse:
        declared, header_length = request_headers(headers)
        limit = self.max_request_bytes
        if declared is not None and declared > limit:
            raise too_large(declared, limit)
        body = await read_body(limit)
        request = decode_request(body, header_length, name, version, self.plane.limits)
        request.mirrored = mirrored is not None
        return await self.plane.infer(request)


def mirror_source(headers: Headers) -> str | None:
    """``live`` or ``replay`` for a request another pod mirrored here (header
    ``modelship-mirror``; any other value counts as live), None for a client's. A client could
    send the header too: that only takes its own requests out of the client metrics (and out
    of mirroring)."""
    for key, value in headers:
        if key == _MIRROR_HEADER:
            return REPLAY if value.strip().lower() == REPLAY.encode() else LIVE
    return None


def request_headers(headers: Headers) -> tuple[int | None, int | None]:
    """Content-Length and Inference-Header-Content-Length of an infer request (None: absent);
    an encoded body is refused (415)."""
    header_length: int | None = None
    declared: int | None = None
    for key, value in headers:
        if key == b"content-length":
            declared = _int_header(value, "Content-Length")
        elif key == HEADER_LENGTH:
            header_length = _int_header(value, "Inference-Header-Content-Length")
        elif key == b"content-encoding" and value.strip().lower() not in (b"identity", b""):
            raise InferenceError(
                ErrorKind.UNSUPPORTED_MEDIA,
                f"Content-Encoding {value.decode(errors='replace')} is not supported; "
                "send the request body uncompressed",
            )
    return declared, header_length


def decode_request(
    body: bytes | memoryview,
    header_length: int | None,
    name: str,
    version: str | None,
    limits: InputLimits | None = None,
) -> InferRequest:
    """Decode an infer request body (JSON, or a JSON header and binary tensor data). Every
    failure is an :class:`InferenceError` of a 4xx kind: the fuzz tests hold it to that."""
    if header_length is None:
        header_length = len(body)
    elif header_length > len(body):
        raise invalid(
            f"Inference-Header-Content-Length is {header_length} but the body has only "
            f"{len(body)} bytes; the JSON header is truncated"
        )
    view = memoryview(body)
    try:
        document = orjson.loads(view[:header_length])
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    return _parse_request(document, name, version, view[header_length:], InputBudget(limits))


def _model_path(parts: list[str]) -> tuple[str, str | None, list[str]]:
    """Split ["v2","models",name,("versions",v,)...] into (name, version, rest)."""
    name = parts[2]
    if len(parts) >= 5 and parts[3] == "versions":
        return name, parts[4], parts[5:]
    return name, None, parts[3:]


def _no_route(parts: list[str]) -> Reply:
    return Reply(
        404,
        orjson.dumps(
            {
                "error": f"no endpoint /{'/'.join(parts)}; see /v2, /v2/health/{{live,ready}}, "
                "/v2/models/<name>[/versions/<v>][/ready|/infer], /v2/mirror"
            }
        ),
    )


def _int_header(value: bytes, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise invalid(f"header {name} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise invalid(f"header {name} must be a non-negative integer, got {number}")
    return number


def too_large(size: int, limit: int) -> InferenceError:
    return InferenceError(
        ErrorKind.TOO_LARGE,
        f"request body of {size} bytes exceeds the limit of {limit} bytes; send smaller "
        "batches or raise MODELSHIP_MAX_REQUEST_BYTES",
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(len(body), limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        if message["type"] == "http.disconnect":
            raise invalid("the client disconnected before sending the whole body")
        if size > limit:
            raise too_large(size, limit)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)


def _parse_request(
    document: object, name: str, version: str | None, binary: memoryview, budget: InputBudget
) -> InferRequest:
    if not isinstance(document, dict):
        raise invalid("the request body must be a JSON object with an 'inputs' list")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("the request needs a non-empty 'inputs' list of tensors")
    budget.check_count(len(inputs))
    parameters = _parameters(document, "request")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise invalid("request parameter 'binary_data_output' must be true or false")
    tensors: list[Tensor] = []
    offset = 0
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise invalid(f"inputs[{index}] must be an object with name, shape, datatype, data")
        tensor_name = item.get("name")
        if not isinstance(tensor_name, str):
            raise invalid(f"inputs[{index}] needs a string 'name'")
        shape = item.get("shape")
        datatype = item.get("datatype")
        size = _parameters(item, f"input '{tensor_name}'").get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise invalid(
                    f"input '{tensor_name}' has neither 'data' nor a binary_data_size parameter"
                )
            tensors.append(from_json(tensor_name, datatype, shape, item["data"], budget))
            continue
        if type(size) is not int or size < 0:
            raise invalid(f"input '{tensor_name}': binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise invalid(
                f"input '{tensor_name}': binary_data_size is {size} but only "
                f"{len(binary) - offset} bytes of binary data remain; the body is truncated"
            )
        raw = binary[offset : offset + size]
        tensors.append(from_bytes(tensor_name, datatype, shape, raw, budget))
        offset += size
    if offset != len(binary):
        raise invalid(
            f"the body carries {len(binary) - offset} bytes of binary data that no input claims; "
            "check each input's binary_data_size"
        )
    outputs = _requested_outputs(document.get("outputs"))
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    return InferRequest(name, version, tensors, outputs, request_id, binary_default)


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters")
    if parameters is None:
        return _EMPTY
    if not isinstance(parameters, dict):
        raise invalid(f"{where}: 'parameters' must be an object")
    return parameters


def _requested_outputs(outputs: object) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise invalid("'outputs' must be a list of {name, parameters} objects")
    requested: list[RequestedOutput] = []
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"outputs[{index}] must be an object with a string 'name'")
        parameters = _parameters(item, f"output '{item['name']}'")
        if "classification" in parameters:
            raise invalid(
                f"output '{item['name']}': the classification extension is not supported; "
                "request the raw output and take the top classes client-side"
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise invalid(f"output '{item['name']}': binary_data must be true or false")
        requested.append(RequestedOutput(item["name"], binary))
    return requested


def _encode(response: InferResponse) -> Reply:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in zip(response.outputs, response.binary, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if binary:
            blob = to_bytes(tensor.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json_data(tensor.data)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    header = orjson.dumps(document, option=_NUMPY)
    if not blobs:
        return Reply(200, header)
    return Reply(
        200,
        b"".join([header, *blobs]),
        OCTET,
        [(b"inference-header-content-length", str(len(header)).encode())],
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
