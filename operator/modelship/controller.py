"""A level-triggered work queue over ModelDeployments, fed by watch events.

Watch events (the ModelDeployment itself, or any child) only mark an object dirty; a fixed pool of
workers reconciles dirty objects, one reconcile per object at a time, and each reconcile says when
to look again. This keeps the cost of a burst of events at one reconcile, needs no finalizer (kopf
timers and daemons would add one to every object) and writes nothing while nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from modelship.metrics import OperatorMetrics
from modelship.reconciler import Outcome

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""

ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Controller:
    def __init__(
        self,
        reconcile: Callable[[dict[str, Any]], Outcome],
        concurrency: int,
        metrics: OperatorMetrics,
    ) -> None:
        self._reconcile = reconcile
        self._concurrency = concurrency
        self._metrics = metrics
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._phases: dict[Key, str] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._errors: Counter[Key] = Counter()
        self._workers: list[asyncio.Task[None]] = []

    # -- event side -------------------------------------------------------------------------

    def upsert(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._bodies[key] = body
        self.enqueue(key)

    def remove(self, key: Key) -> None:
        self._bodies.pop(key, None)
        self._phases.pop(key, None)
        self._errors.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()

    def enqueue(self, key: Key) -> None:
        if key not in self._bodies:
            return
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_later(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        previous = self._timers.get(key)
        due = loop.time() + delay
        if previous is not None and previous.when() <= due:
            return
        if previous is not None:
            previous.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    # -- worker side ------------------------------------------------------------------------

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"modelship-worker-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            body = self._bodies.get(key)
            if body is None:
                continue
            self._running.add(key)
            try:
                delay = await self._run_one(key, body)
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.enqueue(key)
            elif key in self._bodies:
                self.enqueue_later(key, delay)

    async def _run_one(self, key: Key, body: dict[str, Any]) -> float:
        started = time.perf_counter()
        try:
            outcome = await asyncio.to_thread(self._reconcile, body)
        except Exception:
            self._errors[key] += 1
            delay = ERROR_BACKOFF[min(self._errors[key], len(ERROR_BACKOFF)) - 1]
            log.exception("reconciling %s/%s failed; retrying in %.0fs", *key, delay)
            self._metrics.reconciles.labels("error").inc()
            return delay
        finally:
            self._metrics.reconcile_seconds.observe(time.perf_counter() - started)
        self._errors.pop(key, None)
        self._metrics.reconciles.labels("ok").inc()
        if key in self._bodies:
            self._phases[key] = outcome.phase.value
            self._metrics.set_phases(Counter(self._phases.values()))
        return outcome.requeue_after
