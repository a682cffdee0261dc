"""The only module that talks to the Kubernetes API.

Objects go in and come out as plain JSON dicts (no generated model classes: less memory, and the
domain modules stay free of the kubernetes package). The policy for errors lives here:

- reads: 404 is "absent" (``None``); anything else raises :class:`KubeError`.
- writes of children: server-side apply with the field manager ``modelship`` and ``force``, so the
  operator owns the fields it sets and nothing else (the HPA keeps ``spec.replicas`` of the
  ModelDeployment, users keep any field we do not set).
- build Jobs: create, and 409 means another ModelDeployment or an earlier operator process got
  there first, which is success.
- deletes: 404 is success.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelship.api import v1alpha1 as api
from modelship.api.timestamps import format_time, now
from modelship.domain import naming

log = logging.getLogger(__name__)

_COLLECTIONS = {
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Event": "/api/v1/namespaces/{ns}/events",
    "Lease": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    api.KIND: f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{{ns}}/{api.PLURAL}",
}
_TIMEOUT = (5, 30)
_LEASE_TIMEOUT = (2, 4)
"""Lease calls must fail fast: a renewal that hangs past the lease would outlive the leadership."""


class KubeError(RuntimeError):
    """An API call failed for a reason the operator cannot fix by itself; retried later."""

    def __init__(self, what: str, error: ApiException) -> None:
        detail = error.reason or ""
        with contextlib.suppress(TypeError, ValueError):
            detail = json.loads(error.body or "{}").get("message", detail)
        hint = ""
        if error.status == 403:
            hint = " (the operator's ClusterRole lacks this permission: apply deploy/rbac.yaml)"
        super().__init__(f"{what}: HTTP {error.status}: {detail}{hint}")
        self.status = error.status


def new_api_client(pool_size: int) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


class Kube:
    """Typed-by-kind access to the handful of resources the operator touches."""

    def __init__(
        self, api_client: client.ApiClient, on_request: Callable[[str], None] | None = None
    ) -> None:
        self._client = api_client
        self._on_request = on_request or (lambda _verb: None)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = _TIMEOUT,
    ) -> dict[str, Any]:
        self._on_request(method)
        if method != "GET":
            log.debug("%s %s", method, path)
        response = self._client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )
        data = response.data
        return json.loads(data) if data else {}

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        path = _COLLECTIONS[kind].format(ns=quote(namespace))
        return f"{path}/{quote(name)}" if name else path

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path(kind, namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise KubeError(f"reading {kind} {namespace}/{name}", e) from e

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(selector.items())))]
        try:
            items: list[dict[str, Any]] = self._call(
                "GET", self._path(kind, namespace), query=query
            ).get("items", [])
        except ApiException as e:
            raise KubeError(f"listing {kind} in {namespace}", e) from e
        return items

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as ``modelship``, taking over fields another manager set."""
        meta = obj["metadata"]
        path = self._path(obj["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", naming.MANAGER), ("force", "true")]
        try:
            return self._call(
                "PATCH", path, query=query, body=obj, content_type="application/apply-patch+yaml"
            )
        except ApiException as e:
            raise KubeError(f"applying {obj['kind']} {meta['namespace']}/{meta['name']}", e) from e

    def create(self, obj: dict[str, Any]) -> bool:
        """Create; False when it already exists (409)."""
        meta = obj["metadata"]
        try:
            self._call(
                "POST",
                self._path(obj["kind"], meta["namespace"]),
                query=[("fieldManager", naming.MANAGER)],
                body=obj,
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise KubeError(f"creating {obj['kind']} {meta['namespace']}/{meta['name']}", e) from e
        return True

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path("Lease", namespace, name), timeout=_LEASE_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise KubeError(f"reading Lease {namespace}/{name}", e) from e

    def write_lease(self, lease: dict[str, Any]) -> bool:
        """Create the Lease, or replace it at the resourceVersion read (optimistic concurrency).

        False when another writer got there first (409), so the caller lost this round.
        """
        meta = lease["metadata"]
        replace = bool(meta.get("resourceVersion"))
        path = self._path("Lease", meta["namespace"], meta["name"] if replace else None)
        try:
            self._call("PUT" if replace else "POST", path, body=lease, timeout=_LEASE_TIMEOUT)
        except ApiException as e:
            if e.status == 409:
                return False
            raise KubeError(f"writing Lease {meta['namespace']}/{meta['name']}", e) from e
        return True

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._call(
                "DELETE",
                self._path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as e:
            if e.status != 404:
                raise KubeError(f"deleting {kind} {namespace}/{name}", e) from e

    def add_owner(self, kind: str, namespace: str, name: str, reference: dict[str, Any]) -> None:
        """Append an ownerReference (JSON patch), so the object lives as long as any owner."""
        patch = [{"op": "add", "path": "/metadata/ownerReferences/-", "value": reference}]
        try:
            self._call(
                "PATCH",
                self._path(kind, namespace, name),
                body=patch,
                content_type="application/json-patch+json",
            )
        except ApiException as e:
            if e.status not in (404, 422):
                raise KubeError(f"adding an owner to {kind} {namespace}/{name}", e) from e

    def merge_data(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Add keys to a ConfigMap (created on first use); other keys are left alone."""
        body = {"data": data}
        try:
            self._call(
                "PATCH",
                self._path("ConfigMap", namespace, name),
                body=body,
                content_type="application/merge-patch+json",
            )
            return
        except ApiException as e:
            if e.status != 404:
                raise KubeError(f"updating ConfigMap {namespace}/{name}", e) from e
        created = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {naming.LABEL_MANAGED_BY: naming.MANAGER},
            },
            "data": data,
        }
        if not self.create(created):
            self.merge_data(namespace, name, data)

    def scale(
        self, namespace: str, name: str, replicas: int, annotations: dict[str, str | None]
    ) -> None:
        """Set a Deployment's replicas (and annotations; None removes one) without touching its
        pod template: how revisions other than the spec's are scaled, so their pods stay."""
        body = {"metadata": {"annotations": annotations}, "spec": {"replicas": replicas}}
        try:
            self._call(
                "PATCH",
                self._path("Deployment", namespace, name),
                body=body,
                query=[("fieldManager", naming.MANAGER)],
                content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status != 404:
                raise KubeError(f"scaling Deployment {namespace}/{name}", e) from e

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = self._path(api.KIND, namespace, name) + "/status"
        try:
            self._call(
                "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
            )
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing left to report on
                raise KubeError(f"writing the status of {namespace}/{name}", e) from e

    def post_event(
        self, owner: naming.Owner, type_: str, reason: str, message: str, component: str
    ) -> None:
        """A core/v1 Event on the ModelDeployment (what ``kubectl describe`` shows)."""
        stamp = format_time(now())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._call("POST", self._path("Event", owner.namespace), body=event)
        except ApiException as e:
            # Events are best effort: losing one must not fail the reconcile that caused it.
            log.warning(
                "could not post event %s on %s/%s: %s", reason, owner.namespace, owner.name, e
            )
