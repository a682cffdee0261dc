"""A level-triggered work queue over ModelDeployments, fed by watch events.

Watch events (the ModelDeployment itself, or any child) only mark an object dirty; a fixed pool of
workers reconciles dirty objects, one reconcile per object at a time, and each reconcile says when
to look again. This keeps the cost of a burst of events at one reconcile, needs no finalizer (kopf
timers and daemons would add one to every object) and writes nothing while nothing changes.

It also says when the operator should be restarted (:meth:`Controller.problem`, served on
``/healthz`` for the liveness probe): when its event loop stops running, a reconcile hangs, or
the watch stops delivering, which a periodic list of the ModelDeployments' metadata (uid and
generation) proves: a change the list showed that the watch has still not delivered one check
later was missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from modelship.metrics import OperatorMetrics
from modelship.reconciler import Outcome

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""

ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
HEARTBEAT_SECONDS = 5.0
STALLED_SECONDS = 60.0
"""An event loop that has not run for this long is stuck (a blocking call on it)."""
STUCK_SECONDS = 600.0
"""A reconcile is a handful of API calls, each with a timeout: this long means it hangs."""

Lister = Callable[[], Sequence[dict[str, Any]]]
"""Lists the metadata of the watched ModelDeployments (see :meth:`Controller.audit`)."""


class Controller:
    def __init__(
        self,
        reconcile: Callable[[dict[str, Any]], Outcome],
        concurrency: int,
        metrics: OperatorMetrics,
        lister: Lister | None = None,
        check_seconds: float = 60.0,
    ) -> None:
        self._reconcile = reconcile
        self._concurrency = concurrency
        self._metrics = metrics
        self._lister = lister
        self._check_seconds = check_seconds
        self._started: dict[Key, float] = {}
        """When each running reconcile started (monotonic)."""
        self._behind: dict[Key, tuple[str, int] | None] = {}
        """What the last audit listed that the watch had not delivered yet ((uid, generation),
        None for an object the list no longer had)."""
        self._wedged: str | None = None
        self._beat = time.monotonic()
        self._verdict: str | None = None
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
        self._metrics.set_phases(self._phases)
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
        self._workers.append(asyncio.create_task(self._heartbeat(), name="modelship-heartbeat"))
        if self._lister is not None:
            self._workers.append(asyncio.create_task(self._audits(), name="modelship-audit"))

    # -- liveness ---------------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the operator should be restarted, None while it works. Safe from any thread:
        the verdict is made on the event loop, so a stalled loop shows as a stale beat."""
        stalled = time.monotonic() - self._beat
        if stalled > STALLED_SECONDS:
            return f"the operator's event loop has not run for {stalled:.0f}s"
        return self._verdict

    def _diagnose(self, moment: float) -> str | None:
        if self._wedged is not None:
            return self._wedged
        hung = sorted(k for k, t in self._started.items() if moment - t > STUCK_SECONDS)
        if hung:
            return f"reconciling {'/'.join(hung[0])} has run for more than {STUCK_SECONDS:.0f}s"
        return None

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            self._verdict = self._diagnose(self._beat)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _audits(self) -> None:
        assert self._lister is not None
        while True:
            await asyncio.sleep(self._check_seconds)
            try:
                listed = await asyncio.to_thread(self._lister)
            except Exception as e:  # a failed check proves nothing either way
                log.warning("could not list ModelDeployments to check the watch: %s", e)
                continue
            self.audit(listed)

    def audit(self, listed: Sequence[dict[str, Any]]) -> None:
        """Compare what the API server lists with what the watch delivered. The watch may be a
        moment behind; what it still has not delivered at the next audit, it missed."""
        current: dict[Key, tuple[str, int]] = {}
        for item in listed:
            meta = item.get("metadata") or {}
            key = (meta.get("namespace", ""), meta.get("name", ""))
            current[key] = (meta.get("uid", ""), int(meta.get("generation") or 0))
        missed = [key for key, wanted in self._behind.items() if self._missed(key, wanted, current)]
        self._behind = {k: v for k, v in current.items() if not self._delivered(k, *v)}
        self._behind |= dict.fromkeys(self._bodies.keys() - current.keys())
        if missed and self._wedged is None:
            names = ", ".join("/".join(k) for k in sorted(missed)[:5])
            self._wedged = (
                f"the watch of ModelDeployments missed changes for more than "
                f"{self._check_seconds:.0f}s ({names}): restart the operator"
            )
            log.error("%s", self._wedged)

    def _missed(
        self, key: Key, wanted: tuple[str, int] | None, current: dict[Key, tuple[str, int]]
    ) -> bool:
        """Whether the watch still lacks what the last audit saw (``wanted``) and what this one
        sees: only then did it miss an event; anything else may still be on its way."""
        now = current.get(key)
        if now is None:  # gone from the server since two audits and still here: a lost delete
            return wanted is None and key in self._bodies
        if self._delivered(key, *now):
            return False
        return wanted is not None and not self._delivered(key, *wanted)

    def _delivered(self, key: Key, uid: str, generation: int) -> bool:
        meta = (self._bodies.get(key) or {}).get("metadata") or {}
        return bool(meta.get("uid") == uid and int(meta.get("generation") or 0) >= generation)

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
            self._started[key] = time.monotonic()
            try:
                delay = await self._run_one(key, body)
            finally:
                self._running.discard(key)
                self._started.pop(key, None)
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
            self._metrics.set_phases(self._phases)
        return outcome.requeue_after
