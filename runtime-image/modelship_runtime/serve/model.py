"""The model layer: one onnxruntime session, its signature, and how calls reach it.

:class:`OnnxModel` is synchronous and knows nothing about requests. :class:`Predictor` is what
the data plane awaits; :class:`DirectPredictor` runs each call alone (on the event loop for tiny
models, on one worker thread otherwise) and :mod:`.batching` provides the batched variant.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from modelship_runtime.serve.tensors import NUMPY_DTYPES, ORT_TYPES

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray[Any, Any]]
Outputs = list[np.ndarray[Any, Any]]

_GRAPH_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Name, protocol datatype and shape of a model input or output; -1 is a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = ()
    """Symbolic names of dynamic dims ("batch", "sequence"): equal names must get equal sizes."""

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _info(node: Any) -> TensorInfo:
    datatype = ORT_TYPES.get(node.type)
    if datatype is None:
        raise ValueError(
            f"tensor '{node.name}' has type {node.type}, which the Open Inference Protocol "
            "cannot carry; re-export the model with plain tensor inputs and outputs"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    names = tuple(d if isinstance(d, str) and d else None for d in node.shape)
    return TensorInfo(node.name, datatype, shape, names)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    intra_op_threads: int
    allow_spinning: bool = False
    graph_optimization: str = "all"


class OnnxModel:
    """An onnxruntime CPU session configured for serving."""

    def __init__(self, path: Path, config: SessionConfig) -> None:
        self.path = path
        self._session = self._open(path, config)
        self.config = config
        self.inputs = [_info(node) for node in self._session.get_inputs()]
        self.outputs = [_info(node) for node in self._session.get_outputs()]
        self.output_names = [info.name for info in self.outputs]
        self.warm_up_elements = sum(a.size for a in self.example_feeds(1).values())
        """Elements of the batch-1 warm-up input, the size its latency was measured at."""

    @staticmethod
    def _open(path: Path, config: SessionConfig) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _GRAPH_LEVELS[config.graph_optimization]
        spin = "1" if config.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.log_severity_level = 3
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def reconfigure(self, config: SessionConfig) -> None:
        """Open the model again with other session options (before serving: not thread-safe)."""
        if config != self.config:
            self._session = self._open(self.path, config)
            self.config = config

    def elements(self, feeds: Feeds) -> int | None:
        """Elements over all inputs, or None when an input is BYTES: their element count says
        nothing of their size, so such calls never run on the event loop thread."""
        total = 0
        for array in feeds.values():
            if array.dtype.kind == "O":
                return None
            total += array.size
        return total

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic first (batch) dimension."""
        return all(t.shape and t.shape[0] == -1 for t in [*self.inputs, *self.outputs])

    def predict(self, feeds: Feeds, output_names: Sequence[str] | None = None) -> Outputs:
        names = list(output_names) if output_names else self.output_names
        result: Outputs = self._session.run(names, feeds)
        return result

    def example_feeds(self, batch: int = 1, other_dims: int = 8) -> Feeds:
        """Synthetic inputs (zeros) for warm-up: batch for a dynamic first dim, other_dims else."""
        feeds: Feeds = {}
        for info in self.inputs:
            shape = [
                (batch if i == 0 else other_dims) if d < 0 else d for i, d in enumerate(info.shape)
            ]
            if info.datatype == "BYTES":
                feeds[info.name] = np.full(shape, "", dtype=object)
            else:
                feeds[info.name] = np.zeros(shape, dtype=NUMPY_DTYPES[info.datatype])
        return feeds

    def warm_up(self, runs: int, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run synthetic inputs; returns the median batch-1 latency in milliseconds."""
        timings: list[float] = []
        for batch in batch_sizes:
            feeds = self.example_feeds(batch)
            for _ in range(max(runs, 1)):
                start = time.perf_counter()
                self.predict(feeds)
                if batch == batch_sizes[0]:
                    timings.append((time.perf_counter() - start) * 1000)
        return statistics.median(timings)


def unspin_if_tiny(model: OnnxModel, latency_ms: float, threshold_ms: float) -> bool:
    """Open a model whose warm-up median is under ``threshold_ms`` again without onnxruntime's
    spinning; returns whether it did. Its calls end before spinning could pay off, and the
    spinning pool thread takes the core the event loop and the clients need (the MLP batched at
    c=32: +21 % req/s, 0.45x the CPU per request; docs/benchmarks.md)."""
    if latency_ms >= threshold_ms or not model.config.allow_spinning:
        return False
    model.reconfigure(replace(model.config, allow_spinning=False))
    return True


class Predictor(Protocol):
    """What the data plane awaits: validated feeds in, outputs (in ``output_names`` order) out."""

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs: ...

    async def close(self) -> None: ...


Alone = Callable[[], bool]
"""Whether the request being predicted is the only one in the server (no other request or
connection on any transport; see ``DataPlane.alone``): then running it on the event loop thread
delays nobody."""


class LoopBudget:
    """How large a call may be to run on the event loop thread, which holds every other request
    and the probes meanwhile: one expected to take at most ``budget_ms``.

    The expectation is the warm-up's: ``latency_ms`` for :attr:`OnnxModel.warm_up_elements`,
    scaled by elements (a MiniLM request of sequence 16 is twice the warm-up's sequence 8, one of
    a million elements is a thousand times a small one). A call of the warm-up's size always
    fits (that is what was measured). Each call run under the budget is timed: one that took
    longer than the budget lowers the bound below its size, so the estimate can only err once
    per size, towards the worker thread.
    """

    __slots__ = ("budget_s", "floor", "max_elements", "model")

    def __init__(self, model: OnnxModel, latency_ms: float, budget_ms: float) -> None:
        self.model = model
        self.budget_s = budget_ms / 1000
        self.floor = model.warm_up_elements
        scale = budget_ms / latency_ms if latency_ms > 0 else 1.0
        self.max_elements = max(self.floor, int(self.floor * scale))

    def admits(self, feeds: Feeds) -> bool:
        elements = self.model.elements(feeds)
        return elements is not None and elements <= self.max_elements

    def run(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs:
        """The call, on this thread, timed against the budget."""
        start = time.perf_counter()
        outputs = self.model.predict(feeds, output_names)
        if time.perf_counter() - start > self.budget_s:
            elements = self.model.elements(feeds) or 0
            if elements > self.floor:
                self.max_elements = max(self.floor, min(self.max_elements, elements - 1))
                log.info(
                    "a call of %d input elements held the event loop longer than %.1f ms: "
                    "calls over %d elements go to the worker thread",
                    elements, self.budget_s * 1000, self.max_elements,
                )  # fmt: skip
        return outputs


class DirectPredictor:
    """One model call per request, serialised on a single worker thread (or run inline).

    One thread, not a pool: onnxruntime already spreads a call over ``intra_op_threads``;
    concurrent calls would only fight over the same cores. Inline mode (``inline``, a
    :class:`LoopBudget`) runs calls on the event loop for models that finish faster than the hop
    costs; with ``alone`` set, a request that is the only one in the server skips the hop too
    (it costs ~0.1 ms of a few-ms call) within ``alone_budget``, while concurrent requests still
    queue for the worker in arrival order and the loop keeps parsing. Warm-up sets these.
    """

    def __init__(self, model: OnnxModel, inline: LoopBudget | None = None) -> None:
        self.model = model
        self.inline = inline
        self.alone: Alone | None = None
        self.alone_budget: LoopBudget | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ort")

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs:
        if self.inline is not None and self.inline.admits(feeds):
            return self.inline.run(feeds, output_names)
        if (
            self.alone is not None
            and self.alone_budget is not None
            and self.alone()
            and self.alone_budget.admits(feeds)
        ):
            return self.alone_budget.run(feeds, output_names)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.model.predict, feeds, output_names)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
