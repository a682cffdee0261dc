"""``python -m modelship``: run the operator with settings from MODELSHIP_* variables."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import kopf

from modelship import handlers  # noqa: F401  (registers the handlers)
from modelship.domain.settings import Settings
from modelship.kube import Kube, new_api_client
from modelship.leader import LeaderElector, Timing
from modelship.metrics import Liveness, OperatorMetrics

log = logging.getLogger("modelship")


def _elector(settings: Settings) -> LeaderElector:
    timing = Timing(
        lease_seconds=settings.leader_election_lease_seconds,
        renew_deadline_seconds=settings.leader_election_renew_deadline_seconds,
        retry_seconds=settings.leader_election_retry_seconds,
    )
    # Unique even when a restarted container keeps its pod name: a restarted leader must not
    # mistake the lease of its previous life for its own.
    identity = f"{settings.pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return LeaderElector(
        Kube(new_api_client(pool_size=1)),
        settings.leader_election_namespace or "",  # the settings' validator filled it in
        settings.leader_election_lease,
        identity,
        timing,
    )


def _lost() -> None:
    # Another replica may already be writing: stop at once, without kopf's graceful shutdown;
    # the kubelet restarts the container, which then stands by as a candidate.
    logging.shutdown()
    os._exit(1)


def main() -> None:
    settings = Settings()  # fail fast, before connecting, when the settings are wrong
    logging.basicConfig(
        level=os.environ.get("MODELSHIP_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every handled watch event at INFO; at scale that costs more CPU than the work.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Served from the start, so a standby answers scrapes too (modelship_operator_leader 0).
    metrics = OperatorMetrics()
    metrics.serve(settings.metrics_port)
    # /healthz answers from the start too: a standby is alive; the leader's controller takes
    # the answer over once it runs (handlers.start).
    liveness = Liveness()
    liveness.serve(settings.health_port)
    elector = _elector(settings) if settings.leader_election else None
    if elector is not None:
        elector.acquire()
        elector.keep(on_lost=_lost)
    metrics.leader.set(1)
    try:
        kopf.run(
            standalone=True,  # kopf's peering is replaced by the Lease above
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            memo=kopf.Memo(metrics=metrics, liveness=liveness),
        )
    finally:
        if elector is not None:
            elector.release()


if __name__ == "__main__":
    main()
