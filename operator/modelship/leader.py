"""Leader election on a coordination.k8s.io/v1 Lease, so that several operator replicas can run.

Only the leader runs kopf and the controller; the others wait in :meth:`LeaderElector.acquire`
and do nothing else, so there is never a second writer (kopf's own peering would pause kopf's
watches but not our work queue's timers). The rules are the ones of client-go's leaderelection,
which every controller-runtime operator uses:

- the Lease names its holder and a duration; a candidate takes it over only when the holder has
  not renewed it for that long, measured on the candidate's own monotonic clock from the moment it
  last saw the record change (no comparison of clocks between machines);
- every write is a replace at the resourceVersion read, so two candidates can never both win;
- the leader renews every ``retry_seconds``; when it has not managed to renew for
  ``renew_deadline_seconds`` (shorter than the lease) it calls ``on_lost``, which exits the
  process: a leader that cannot prove it still leads must stop writing before anyone else starts;
- a leader that stops cleanly empties ``holderIdentity`` so that a standby takes over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelship.api.timestamps import format_micro_time, now
from modelship.domain import naming
from modelship.kube import Kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease duration, got "
                f"retry={self.retry_seconds}s, renew deadline={self.renew_deadline_seconds}s, "
                f"lease={self.lease_seconds}s"
            )


def _now() -> str:
    return format_micro_time(now())


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._timing = timing
        self._clock = clock
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._last_renewed = 0.0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- one round ----------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards."""
        lease = self._kube.get_lease(self._namespace, self._name)
        now = self._clock()
        if lease is None:
            created = self._kube.write_lease(self._lease({}, transitions=0))
            if created:
                self._last_renewed = now
            return created
        spec = lease.get("spec") or {}
        record = {k: spec.get(k) for k in ("holderIdentity", "leaseDurationSeconds", "renewTime")}
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self._timing.lease_seconds)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
            log.info("taking over the lease %s/%s from %r", self._namespace, self._name, holder)
        desired = self._lease(lease, transitions, keep_acquire_time=holder == self.identity)
        if not self._kube.write_lease(desired):
            return False
        self._last_renewed = now
        return True

    def _lease(
        self, current: dict[str, Any], transitions: int, keep_acquire_time: bool = False
    ) -> dict[str, Any]:
        spec = dict(current.get("spec") or {})
        now = _now()
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=round(self._timing.lease_seconds),
            renewTime=now,
            leaseTransitions=transitions,
        )
        if not keep_acquire_time or not spec.get("acquireTime"):
            spec["acquireTime"] = now
        meta = {
            "name": self._name,
            "namespace": self._namespace,
            "labels": {naming.LABEL_MANAGED_BY: naming.MANAGER},
        }
        version = (current.get("metadata") or {}).get("resourceVersion")
        if version:
            meta["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as e:  # API down, timeouts, 403: keep trying, the deadline decides
            log.warning("leader election: %s", e)
            return False

    # -- lifecycle ----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Block until this candidate leads (or :meth:`stop` is called)."""
        waiting_for = None
        while not self._stop.is_set():
            if self._attempt():
                log.info("leading as %s (lease %s/%s)", self.identity, self._namespace, self._name)
                return
            holder = (self._observed or {}).get("holderIdentity")
            if holder != waiting_for:
                log.info("standing by: %r leads (lease %s/%s)", holder, self._namespace, self._name)
                waiting_for = holder
            self._stop.wait(self._timing.retry_seconds)

    def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew in a background thread; ``on_lost`` runs once if a renewal deadline passes."""

        def renew() -> None:
            while not self._stop.wait(self._timing.retry_seconds):
                if self._attempt():
                    continue
                holder = (self._observed or {}).get("holderIdentity")
                if holder and holder != self.identity:
                    log.error("lost the lease %s/%s to %r", self._namespace, self._name, holder)
                    on_lost()
                    return
                late = self._clock() - self._last_renewed
                if late >= self._timing.renew_deadline_seconds:
                    log.error(
                        "lost the lease %s/%s (not renewed for %.1fs)",
                        self._namespace,
                        self._name,
                        late,
                    )
                    on_lost()
                    return

        self._renewer = threading.Thread(target=renew, name="leader-election", daemon=True)
        self._renewer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()

    def release(self) -> None:
        """Stop renewing and hand the Lease over at once (only if this candidate still holds it)."""
        self.stop()
        try:
            lease = self._kube.get_lease(self._namespace, self._name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            if self._kube.write_lease(lease):
                log.info("released the lease %s/%s", self._namespace, self._name)
        except Exception as e:  # the lease then expires on its own
            log.warning("could not release the lease: %s", e)
