"""Tensors on the wire: Open Inference Protocol datatypes and their numpy/onnxruntime twins.

Decoding is strict: every function either returns an array of exactly the declared datatype
and shape or raises :func:`~.errors.invalid` with a message naming the tensor and what was
expected. Nothing here knows about REST or gRPC framing.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelship.api.serving import env_name
from modelship_runtime.serve.errors import InferenceError, invalid, too_large

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
"""Protocol datatype -> numpy dtype (little-endian, as the binary extension requires)."""

ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
"""onnxruntime element type -> protocol datatype."""

_DATATYPE_BY_NUMPY = {dt: name for name, dt in NUMPY_DTYPES.items()}
_KNOWN = ", ".join(NUMPY_DTYPES)
_INT_KINDS = "iu"
_NUMBER_KINDS = "iuf"
MAX_RANK = 32


@dataclass(slots=True)
class Tensor:
    """A named array with its protocol datatype; ``data.shape`` is the tensor's shape."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The protocol datatype of an array the model produced."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return _DATATYPE_BY_NUMPY[array.dtype.newbyteorder("<")]
    except KeyError:
        raise invalid(f"the model produced an array of unsupported dtype {array.dtype}") from None


def check_datatype(kind: str, name: str, datatype: object) -> np.dtype[Any]:
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise invalid(f"{kind} '{name}': unknown datatype {datatype!r}; use one of {_KNOWN}")
    return NUMPY_DTYPES[datatype]


def check_shape(kind: str, name: str, shape: object) -> tuple[int, ...]:
    """A shape must be a list of non-negative integers (no -1 in requests)."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes) or len(shape) > MAX_RANK:
        raise invalid(
            f"{kind} '{name}': shape must be a list of at most {MAX_RANK} non-negative "
            f"integers, got {shape!r}"
        )
    dims = tuple(shape)
    for dim in dims:
        if type(dim) is not int or dim < 0:
            raise invalid(
                f"{kind} '{name}': shape must be a list of non-negative integers, got {list(dims)}"
            )
    return dims


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@dataclass(frozen=True, slots=True)
class InputLimits:
    """How large the inputs of one request may be (all inputs together), checked against the
    declared shapes before any data is decoded, so an oversized request is a 413 that costs
    nothing, never a model call that fails (a 5xx) or an allocation that kills the pod."""

    max_elements: int = 1 << 26
    """Elements over all inputs; a zero-sized dimension counts as 1 here, so a shape cannot
    hide a huge dimension behind a 0 (the model would still be asked to size outputs by it)."""
    max_bytes: int = 256 << 20
    """Decoded bytes over all inputs (elements times the datatype's size; BYTES elements count
    as 8, their strings are bounded by the request size)."""
    max_inputs: int = 1024
    """Input tensors in one request (each costs a decode before validation can reject it)."""


class InputBudget:
    """What one request may still decode under :class:`InputLimits`, taken input by input."""

    __slots__ = ("bytes", "elements", "limits")

    def __init__(self, limits: InputLimits | None = None) -> None:
        self.limits = limits or InputLimits()
        self.elements = 0
        self.bytes = 0

    def check_count(self, count: int) -> None:
        if count > self.limits.max_inputs:
            raise invalid(
                f"the request has {count} input tensors; at most {self.limits.max_inputs} are "
                "accepted (send each of the model's inputs once)"
            )

    def take(self, name: str, dims: tuple[int, ...], dtype: np.dtype[Any]) -> int:
        """The element count of ``dims``, once the request's inputs so far fit the limits."""
        volume = math.prod(max(dim, 1) for dim in dims)
        self.elements += volume
        self.bytes += volume * dtype.itemsize
        limits = self.limits
        if self.elements > limits.max_elements:
            raise _too_large(
                f"input '{name}': shape {list(dims)} brings the request to {self.elements} "
                f"elements, over the limit of {limits.max_elements}",
                "max_input_elements",
            )
        if self.bytes > limits.max_bytes:
            raise _too_large(
                f"input '{name}': shape {list(dims)} brings the request to {self.bytes} decoded "
                f"bytes, over the limit of {limits.max_bytes}",
                "max_input_bytes",
            )
        return math.prod(dims)


def _too_large(message: str, setting: str) -> InferenceError:
    return too_large(f"{message}; send smaller batches or raise {env_name(setting)}")


def sized_shape(
    name: str, datatype: object, shape: object, budget: InputBudget | None
) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """The dtype, dims and element count of an input, checked against the request's budget."""
    dtype = check_datatype("input", name, datatype)
    dims = check_shape("input", name, shape)
    count = (budget or InputBudget()).take(name, dims, dtype)
    return dtype, dims, count


def from_json(
    name: str, datatype: object, shape: object, data: object, budget: InputBudget | None = None
) -> Tensor:
    """Decode the ``data`` of a JSON tensor (flat or nested, row-major)."""
    dtype, dims, count = sized_shape(name, datatype, shape, budget)
    if datatype == "BYTES":
        return Tensor(name, "BYTES", _bytes_from_json(name, dims, data))
    if not isinstance(data, list):
        raise invalid(
            f"input '{name}': 'data' must be a list of {datatype} values "
            f"(flat or nested, row-major), got {type(data).__name__}"
        )
    try:
        array = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise invalid(
            f"input '{name}': 'data' is not a rectangular list of {datatype} numbers"
        ) from None
    if array.size != count:
        raise invalid(
            f"input '{name}': shape {list(dims)} needs {count} values but 'data' holds {array.size}"
        )
    if count:
        _check_kind(name, str(datatype), dtype, array)
    return Tensor(name, str(datatype), array.astype(dtype, copy=False).reshape(dims))


def _check_kind(
    name: str, datatype: str, dtype: np.dtype[Any], array: np.ndarray[Any, Any]
) -> None:
    kind = array.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise invalid(
                f"input '{name}': datatype BOOL needs true/false values, got {kind_name(kind)}"
            )
        return
    if dtype.kind in _INT_KINDS:
        if kind not in _INT_KINDS and kind != "b":
            raise invalid(
                f"input '{name}': datatype {datatype} needs integer values, got {kind_name(kind)}"
            )
        if array.dtype == dtype:
            return  # already held exactly in the model's dtype: nothing can be out of range
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise invalid(
                f"input '{name}': values must lie in [{info.min}, {info.max}] for {datatype}, "
                f"got a value in [{low}, {high}]"
            )
        return
    if kind not in _NUMBER_KINDS and kind != "b":
        raise invalid(f"input '{name}': datatype {datatype} needs numbers, got {kind_name(kind)}")


def kind_name(kind: str) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "floating-point numbers",
        "U": "strings",
        "S": "strings",
        "O": "mixed or non-numeric values",
    }.get(kind, f"values of numpy kind {kind!r}")


def _bytes_from_json(name: str, dims: tuple[int, ...], data: object) -> np.ndarray[Any, Any]:
    """Flatten (row-major) nested lists of strings, iteratively: nesting deeper than the shape's
    rank is refused, so no depth of nesting reaches Python's recursion limit."""
    flat: list[bytes] = []
    if not isinstance(data, list):
        data = [data]
    depth = max(len(dims), 1)
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, str):
                flat.append(value.encode())
            elif isinstance(value, list):
                if len(stack) >= depth:
                    raise invalid(
                        f"input '{name}': 'data' is nested deeper than its shape "
                        f"{list(dims)}; send it flat or nested once per dimension"
                    )
                stack.append(iter(value))
                break
            else:
                raise invalid(
                    f"input '{name}': datatype BYTES needs strings, got {type(value).__name__}"
                )
        else:
            stack.pop()
    if len(flat) != element_count(dims):
        raise invalid(
            f"input '{name}': shape {list(dims)} needs {element_count(dims)} values but 'data' "
            f"holds {len(flat)}"
        )
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(dims)


def from_bytes(
    name: str,
    datatype: object,
    shape: object,
    raw: bytes | memoryview,
    budget: InputBudget | None = None,
) -> Tensor:
    """Decode a tensor sent as raw little-endian bytes (binary extension, gRPC raw contents)."""
    dtype, dims, count = sized_shape(name, datatype, shape, budget)
    if datatype == "BYTES":
        return Tensor(name, "BYTES", _bytes_from_raw(name, dims, count, raw))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise invalid(
            f"input '{name}': shape {list(dims)} of {datatype} needs {expected} bytes of "
            f"binary data but {len(raw)} were sent"
        )
    array = np.frombuffer(raw, dtype=dtype)
    if not array.flags.aligned:
        array = array.copy()
    return Tensor(name, str(datatype), array.reshape(dims))


def _bytes_from_raw(
    name: str, dims: tuple[int, ...], count: int, raw: bytes | memoryview
) -> np.ndarray[Any, Any]:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise invalid(f"input '{name}': BYTES element {len(items)} has a truncated length")
        (size,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + size > len(view):
            raise invalid(
                f"input '{name}': BYTES element {len(items)} declares {size} bytes but only "
                f"{len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise invalid(
            f"input '{name}': shape {list(dims)} needs {count} BYTES elements but {len(items)} "
            "were sent"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(dims)


def to_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """Raw little-endian bytes of an output (BYTES: 4-byte length before each element)."""
    if array.dtype.kind in "OUS":
        parts: list[bytes] = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def to_json_data(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | list[Any]:
    """Flat row-major data for a JSON response (orjson serialises numpy arrays natively)."""
    if array.dtype.kind in "OUS":
        return [
            item.decode(errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    if array.dtype == np.float16:
        return array.astype(np.float32).reshape(-1)
    return np.ascontiguousarray(array).reshape(-1)
