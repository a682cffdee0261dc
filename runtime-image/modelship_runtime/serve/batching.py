"""Dynamic batching: a predictor wrapper that merges concurrent requests into one model call.

Requests wait in an asyncio queue. When the model is free, the batcher takes the oldest and
keeps adding requests until the batch is full or ``max_delay`` has passed since it took that
first one; waiting is done with ``asyncio.timeout`` on the queue, never by polling. So batching
adds at most ``max_delay`` to the time a request waits for the model anyway.

The batcher only waits when waiting can pay off: while the batch holds fewer requests than were
active at once lately (the most requests in the server together, over the last few batch
cycles: the group of clients is expected again). A lone client (concurrency 1) is never made to
wait ``max_delay`` for company that is not coming, and eight clients are not made to wait for a
ninth: their batch leaves as soon as the eight are in. Counting from when the model is free,
not from enqueue time, matters for closed-loop clients: with 32 clients and batches of 32, a
batch of 16 that piled up behind a running batch of 16 would otherwise leave at once, the other
16 would pile up behind it, and the server would stay in smaller batches for good, each costing
more CPU per request than one full batch (figures: docs/benchmarks.md).

A request that is alone in the server (see :data:`~modelship_runtime.serve.model.Alone`: no
other request or connection on any transport, as ``DataPlane.alone`` decides) cannot be merged
with anything, so it runs at once on the event loop thread, without the queue and the
worker-thread hop, when the warm-up says it is short (:class:`~.model.LoopBudget`).

Only requests whose inputs agree beyond the batch dimension are merged. Results are split back
by row offsets. If a merged call fails, every request in it is retried alone, so one bad request
fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelship_runtime.serve.errors import ErrorKind, InferenceError
from modelship_runtime.serve.metrics import RequestMetrics
from modelship_runtime.serve.model import Alone, Feeds, LoopBudget, OnnxModel, Outputs

log = logging.getLogger(__name__)

RECENT_BATCHES = 4
"""How many batch cycles back the expected group size looks: one straggler batch must not shrink
it, and after the load drops only this many batches wait for clients that left."""


@dataclass(slots=True)
class _Pending:
    feeds: Feeds
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Outputs]
    enqueued: float


class BatchingPredictor:
    def __init__(
        self,
        model: OnnxModel,
        max_batch_size: int,
        max_delay_ms: float,
        metrics: RequestMetrics | None = None,
    ) -> None:
        if not model.batchable:
            raise ValueError(
                "dynamic batching needs a dynamic first (batch) dimension on every input and "
                "output; this model has fixed ones, so set max_batch_size to 0"
            )
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.metrics = metrics
        self.alone: Alone | None = None
        self.alone_budget: LoopBudget | None = None
        """Set by warm-up: a request alone in the server within this budget runs on the loop."""
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ort-batch")
        self._task: asyncio.Task[None] | None = None
        self._output_index = {name: i for i, name in enumerate(model.output_names)}
        self._active = 0
        self._peak = 0
        """The most requests active at once since the last batch left."""
        self._recent_peaks: deque[int] = deque([1], maxlen=RECENT_BATCHES)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def predict(self, feeds: Feeds, output_names: Sequence[str] | None) -> Outputs:
        loop = asyncio.get_running_loop()
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        if (
            self._active == 0
            and self.alone is not None
            and self.alone_budget is not None
            and self.alone()
            and self.alone_budget.admits(feeds)
        ):
            if self.metrics is not None:
                self.metrics.observe_batch(rows, [0.0])
            outputs = self.alone_budget.run(feeds, None)
        elif rows > self.max_batch_size or rows == 0:
            outputs = await loop.run_in_executor(self._executor, self.model.predict, feeds, None)
        else:
            key = tuple((name, a.shape[1:], a.dtype.str) for name, a in feeds.items())
            future: asyncio.Future[Outputs] = loop.create_future()
            self._queue.put_nowait(_Pending(feeds, rows, key, future, loop.time()))
            self._active += 1
            if self._active > self._peak:
                self._peak = self._active
            try:
                outputs = await future
            finally:
                self._active -= 1
        if not output_names:
            return outputs
        return [outputs[self._output_index[name]] for name in output_names]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            batch = [first]
            rows = first.rows
            deadline = loop.time() + self.max_delay
            expected = max(self._peak, *self._recent_peaks)
            while rows < self.max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or len(batch) >= expected:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            item = await self._queue.get()
                    except TimeoutError:
                        break
                if item.key != first.key or rows + item.rows > self.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            self._recent_peaks.append(self._peak)
            self._peak = self._active
            try:
                await self._execute(batch, rows)
            except Exception as exc:  # a bug here must not leave requests waiting forever
                log.exception("batch execution failed")
                for pending in batch:
                    _fail(pending, exc)

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.metrics is not None:
            self.metrics.observe_batch(rows, [now - p.enqueued for p in batch])
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {
                name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
            }
        try:
            outputs = await loop.run_in_executor(self._executor, self.model.predict, feeds, None)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
            else:
                await self._one_by_one(batch)
            return
        if any(out.ndim == 0 or out.shape[0] != rows for out in outputs):
            # The graph does not keep rows apart (it reduces over the batch): never merge.
            log.warning("model outputs do not follow the batch dimension; running requests alone")
            await self._one_by_one(batch)
            return
        start = 0
        for pending in batch:
            end = start + pending.rows
            if not pending.future.done():
                pending.future.set_result([out[start:end] for out in outputs])
            start = end

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for pending in batch:
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self.model.predict, pending.feeds, None
                )
            except Exception as exc:
                _fail(pending, exc)
            else:
                if not pending.future.done():
                    pending.future.set_result(outputs)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _fail(
                self._queue.get_nowait(),
                InferenceError(ErrorKind.UNAVAILABLE, "the server is shutting down; retry"),
            )
        self._executor.shutdown(wait=True, cancel_futures=True)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
