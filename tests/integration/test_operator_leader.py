"""Leader election on a real API server: one leader, hand-over, takeover, and two operators.

The elector's clock is injected where a test needs a lease to expire, so no test waits out a
lease duration; the two-process test uses short real timings instead.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_operator_reconcile import (
    Kube,
    Operator,
    model_spec,
)

from modelship.kube import Kube as OperatorKube
from modelship.kube import KubeError
from modelship.leader import LeaderElector, Timing
from polling import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning"),
]

LEASE = "modelship-operator"
FAST = Timing(lease_seconds=3, renew_deadline_seconds=2, retry_seconds=0.1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Partitionable(OperatorKube):
    """The real client, until the test cuts this candidate off from the API server."""

    cut = False

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.cut:
            raise ConnectionError("network partition (test)")
        return super().get_lease(namespace, name)


@pytest.fixture
def elector(kube_api: Any, namespace: str) -> Iterator[Callable[..., LeaderElector]]:
    made: list[LeaderElector] = []

    def make(identity: str, clock: Callable[[], float] = time.monotonic) -> LeaderElector:
        e = LeaderElector(Partitionable(kube_api), namespace, LEASE, identity, FAST, clock)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def holder(kube_api: Any, namespace: str) -> dict[str, Any]:
    lease = OperatorKube(kube_api).get_lease(namespace, LEASE)
    assert lease is not None
    spec: dict[str, Any] = lease["spec"]
    return spec


def test_one_leader_then_hand_over_on_release(
    elector: Callable[..., LeaderElector], kube_api: Any, namespace: str
) -> None:
    a, b = elector("a"), elector("b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew(), "the holder renews"
    assert not b.try_acquire_or_renew()
    first = holder(kube_api, namespace)
    assert first["holderIdentity"] == "a"
    assert first["leaseDurationSeconds"] == 3
    assert first["leaseTransitions"] == 0

    a.release()
    assert holder(kube_api, namespace)["holderIdentity"] == ""
    assert b.try_acquire_or_renew(), "a released lease is free at once"
    second = holder(kube_api, namespace)
    assert second["holderIdentity"] == "b"
    assert second["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()


def test_a_silent_leader_is_replaced_only_after_the_lease_expires(
    elector: Callable[..., LeaderElector], kube_api: Any, namespace: str
) -> None:
    clock = Clock()
    a, b = elector("a"), elector("b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b starts timing the record it saw
    clock.now += 2.9
    assert not b.try_acquire_or_renew(), "taken over before the lease expired"
    assert a.try_acquire_or_renew()  # a renews: the record changes, b's timer restarts
    clock.now += 2.9
    assert not b.try_acquire_or_renew(), "b saw the renewal just now"
    clock.now += 2.9
    assert not b.try_acquire_or_renew()
    clock.now += 0.2  # 3.1s since b saw a's last renewal: longer than the lease
    assert b.try_acquire_or_renew()
    assert holder(kube_api, namespace)["holderIdentity"] == "b"
    assert not a.try_acquire_or_renew(), "the old leader must not take it back"


def test_a_leader_gives_up_when_another_holds_the_lease(
    elector: Callable[..., LeaderElector], kube_api: Any, namespace: str
) -> None:
    a = elector("a")
    a.acquire()
    lost = threading.Event()
    a.keep(on_lost=lost.set)
    # Someone else took the lease (e.g. after a partition the leader did not notice).
    kube = OperatorKube(kube_api)

    def steal() -> bool:  # False when a renewal moved the resourceVersion in between
        lease = kube.get_lease(namespace, LEASE)
        assert lease is not None
        lease["spec"]["holderIdentity"] = "usurper"
        return kube.write_lease(lease)

    wait_for(steal, "a write of another holder")
    assert lost.wait(timeout=5), "the leader kept going after losing the lease"


def test_a_partitioned_leader_gives_up_within_its_renew_deadline(
    elector: Callable[..., LeaderElector],
) -> None:
    a = elector("a")
    a.acquire()
    lost = threading.Event()
    a.keep(on_lost=lost.set)
    assert not lost.wait(timeout=FAST.renew_deadline_seconds + 0.5), "lost while connected"
    a._kube.cut = True  # type: ignore[attr-defined]
    assert lost.wait(timeout=FAST.renew_deadline_seconds + 2)


def test_write_lease_reports_a_conflict_and_raises_on_denial(kube_api: Any, namespace: str) -> None:
    kube = OperatorKube(kube_api)
    a = LeaderElector(kube, namespace, LEASE, "a", FAST)
    assert a.try_acquire_or_renew()
    stale = kube.get_lease(namespace, LEASE)
    assert stale is not None
    assert a.try_acquire_or_renew()  # moves the resourceVersion on
    assert not kube.write_lease(stale), "a write at an old resourceVersion must lose"
    with pytest.raises(KubeError, match="writing Lease"):
        kube.write_lease(stale | {"metadata": {"name": "Bad_Name", "namespace": namespace}})


def test_two_operators_one_reconciles_and_the_other_takes_over(
    cluster: Any, namespace: str, tmp_path: Path, kube_api: Any
) -> None:
    kube = Kube(kube_api, namespace)
    election = {
        "MODELSHIP_LEADER_ELECTION": "true",
        "MODELSHIP_LEADER_ELECTION_NAMESPACE": namespace,
        "MODELSHIP_LEADER_ELECTION_LEASE_SECONDS": "4",
        "MODELSHIP_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "3",
        "MODELSHIP_LEADER_ELECTION_RETRY_SECONDS": "0.5",
    }
    ops = {
        name: Operator(
            cluster.kubeconfig,
            namespace,
            tmp_path / f"{name}.log",
            MODELSHIP_POD_NAME=name,
            **election,
        ).start()
        for name in ("op-a", "op-b")
    }
    try:
        lead = wait_for(
            lambda: (
                (OperatorKube(kube_api).get_lease(namespace, LEASE) or {})
                .get("spec", {})
                .get("holderIdentity")
            ),
            "a leader",
        )
        leader = lead.rsplit("_", 1)[0]
        standby = "op-b" if leader == "op-a" else "op-a"
        kube.apply_mdep("first", model_spec())
        wait_for(kube.jobs, "the leader to create a build Job")
        wait_for(lambda: "standing by" in ops[standby].log(), "the standby to say so")
        assert "leading as" not in ops[standby].log()
        # Both answer scrapes; only the leader says it leads.
        assert "modelship_operator_leader 0.0" in ops[standby].metrics()
        assert "modelship_operator_leader 1.0" in ops[leader].metrics()

        ops[leader].kill()  # no hand-over: the standby waits for the lease to expire
        new = wait_for(
            lambda: (h := holder(kube_api, namespace)["holderIdentity"]).startswith(standby) and h,
            "the standby to take over",
            timeout=15,
        )
        assert new.startswith(f"{standby}_")
        wait_for(
            lambda: "modelship_operator_leader 1.0" in ops[standby].metrics(),
            "the new leader's metrics to say so",
        )
        kube.apply_mdep(
            "second", model_spec(model={"uri": "s3://models/b.onnx", "sha256": "cd" * 32})
        )
        wait_for(lambda: len(kube.jobs()) == 2, "the new leader to create the second build Job")

        ops[standby].stop()  # SIGTERM: kopf stops, then the lease is handed back
        assert ops[standby].proc is not None
        assert ops[standby].proc.returncode == 0
        assert holder(kube_api, namespace)["holderIdentity"] == ""
    finally:
        for name, op in ops.items():
            op.stop()
            sys.stderr.write(f"--- {name} log ---\n{op.log()}\n")  # shown when the test fails
