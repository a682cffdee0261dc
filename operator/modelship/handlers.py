"""Every kopf registration of the operator, in one place. Handlers only route events.

The ModelDeployment's own events carry its latest body to the controller; events of the children
(found by our managed-by label) wake their owner. See docs/operator.md for why there are no
create/update handlers, timers or daemons.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from modelship.api import v1alpha1 as api
from modelship.controller import Controller
from modelship.domain import naming
from modelship.domain.desired import applied_hash
from modelship.domain.settings import Settings
from modelship.kube import Kube, new_api_client
from modelship.metrics import Liveness, OperatorMetrics
from modelship.reconciler import Reconciler

OURS = {naming.LABEL_MANAGED_BY: naming.MANAGER}
SERVER_PODS = {naming.LABEL_MANAGED_BY: naming.MANAGER, naming.LABEL_COMPONENT: "server"}


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping stays in status.kopf (never annotations, which GitOps would see).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # The watched resources are known (our CRD, built-in kinds) and so are the namespaces: no
    # need to watch CRDs and Namespaces cluster-wide, so a namespaced install needs no
    # ClusterRole at all. A CRD missing at start is caught by the controller's watch audit.
    settings.scanning.disabled = True
    config = Settings()
    # Created and served by python -m modelship before the leader election.
    metrics: OperatorMetrics = memo["metrics"]
    api_client = new_api_client(pool_size=config.concurrency + 2)
    kube = Kube(api_client, metrics.count_request)
    reconciler = Reconciler(kube, config, metrics)
    controller = Controller(
        reconciler.reconcile,
        config.concurrency,
        metrics,
        lister=lambda: kube.list_model_deployments(config.namespaces),
        check_seconds=config.watch_check_seconds,
    )
    controller.start()
    liveness: Liveness = memo["liveness"]
    liveness.attach(controller.problem)
    memo["reconciler"] = reconciler
    memo["controller"] = controller
    memo["api_client"] = api_client


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo["controller"]
    await controller.stop()
    await asyncio.to_thread(memo["api_client"].close)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def model_deployment(
    event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, memo: Any, **_: Any
) -> None:
    controller: Controller = memo["controller"]
    if event["type"] == "DELETED":
        controller.remove((namespace or "", name))
        memo["reconciler"].forget(body.get("metadata", {}).get("uid", ""))
    else:
        controller.upsert(dict(event["object"]))


def _wake_owners(event: kopf.RawEvent, body: kopf.Body, namespace: str, memo: Any) -> None:
    controller: Controller = memo["controller"]
    reconciler: Reconciler = memo["reconciler"]
    kind = body.get("kind", "")
    name = body.get("metadata", {}).get("name", "")
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") != api.KIND:
            continue
        uid = ref.get("uid", "")
        if event["type"] == "DELETED" or reconciler.known_hash(uid, kind, name) != applied_hash(
            dict(body)
        ):
            reconciler.forget(uid, kind, name)
        controller.enqueue((namespace, ref.get("name", "")))


def _child(group: str, version: str, plural: str) -> None:
    async def wake(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: Any, **_: Any
    ) -> None:
        _wake_owners(event, body, namespace or "", memo)

    kopf.on.event(group, version, plural, labels=OURS, id=f"wake-from-{plural}")(wake)


for _group, _version, _plural in (
    ("batch", "v1", "jobs"),
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
):
    _child(_group, _version, _plural)


@kopf.on.event("", "v1", "pods", labels=SERVER_PODS)
async def serving_pod(body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    # Pods are owned by ReplicaSets; the owner's name is on the pod's label instead.
    owner = body.get("metadata", {}).get("labels", {}).get(naming.LABEL_DEPLOYMENT)
    if owner:
        memo["controller"].enqueue((namespace or "", owner))
