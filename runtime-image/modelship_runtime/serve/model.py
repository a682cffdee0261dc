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
from dataclasses import dataclass
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _GRAPH_LEVELS[config.graph_optimization]
        spin = "1" if config.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.log_severity_level = 3
        self.path = path
        self.config = config
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [_info(node) for node in self._session.get_inputs()]
        self.outputs = [_info(node) for node in self._session.get_outputs()]
        self.output_names = [info.name for info in self.outputs]
        self.warm_up_elements = sum(a.size for a in self.example_feeds(1).values())
        """Elements of the batch-1 warm-up input, the size its latency was measured at."""

    def fits_loop(self, feeds: Feeds) -> bool:
        """Whether a call on ``feeds`` may run on the event loop thread: only inputs no larger
        than the warm-up's, since the warm-up latency is all that says how long the loop would
        be blocked (a request 100 times larger would block it 100 times as long, and the health
        probes with it). BYTES inputs never do: their element count says nothing of their size.
        """
        total = 0
        for array in feeds.values():
            if array.dtype.kind == "O":
                return False
            total += array.size
        return total <= self.warm_up_elements

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


class Predictor(Protocol):
    """What the data plane awaits: validated feeds in, outputs (in ``output_names`` order) out."""

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs: ...

    async def close(self) -> None: ...


Alone = Callable[[], bool]
"""Whether the request being predicted is the only one in the server (no other request or
connection on any transport; see ``DataPlane.alone``): then running it on the event loop thread
delays nobody."""


class DirectPredictor:
    """One model call per request, serialised on a single worker thread (or run inline).

    One thread, not a pool: onnxruntime already spreads a call over ``intra_op_threads``;
    concurrent calls would only fight over the same cores. Inline mode skips the thread hop for
    models that finish faster than the hop costs; with ``alone`` set, a request that is the only
    one in the server skips it too (the hop costs ~0.1 ms of a few-ms call), while concurrent
    requests still queue for the worker in arrival order and the loop keeps parsing. Either
    shortcut applies only to inputs no larger than the warm-up's (:meth:`OnnxModel.fits_loop`).
    """

    def __init__(self, model: OnnxModel, inline: bool = False, alone: Alone | None = None) -> None:
        self.model = model
        self.inline = inline
        self.alone = alone
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ort")

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs:
        if (self.inline or (self.alone is not None and self.alone())) and self.model.fits_loop(
            feeds
        ):
            return self.model.predict(feeds, output_names)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.model.predict, feeds, output_names)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
