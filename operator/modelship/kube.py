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
- every other failure is a :class:`KubeError` that says whether it is permanent (a 4xx other than
  408/409/429: the request will fail the same way until someone changes the spec, the RBAC or the
  object in the way) and what to do about it; the reconciler turns permanent ones into a
  condition and backs off, temporary ones are retried by the controller.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
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
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    api.KIND: f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{{ns}}/{api.PLURAL}",
    "HTTPRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
    "GRPCRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/grpcroutes",
}
_TIMEOUT = (5, 30)
_LEASE_TIMEOUT = (2, 4)
"""Lease calls must fail fast: a renewal that hangs past the lease would outlive the leadership."""


class KubeError(RuntimeError):
    """An API call failed for a reason the operator cannot fix by itself."""

    def __init__(self, what: str, error: ApiException) -> None:
        detail, reason = error.reason or "", ""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            body = json.loads(error.body or "{}")
            detail, reason = body.get("message", detail), body.get("reason", "")
        self.status: int = int(error.status or 0)
        self.reason: str = reason or _REASONS.get(self.status, "ApiError")
        """The API server's StatusReason (Forbidden, Invalid, NotFound, ...)."""
        self.detail: str = detail
        """The API server's own message."""
        self.hint: str = _hint(self.status, detail)
        """What a person can do about it."""
        hint = f"; {self.hint}" if self.hint else ""
        super().__init__(f"{what}: HTTP {self.status}: {detail}{hint}")

    @property
    def permanent(self) -> bool:
        """Retrying the same request will fail the same way (it needs a person)."""
        return 400 <= self.status < 500 and self.status not in _TEMPORARY


_TEMPORARY = frozenset({408, 409, 429})
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 422: "Invalid"}


def _hint(status: int, detail: str) -> str:
    if "admission webhook" in detail:
        return (
            "an admission webhook or policy of the cluster refused it: see its message, and "
            "change the spec or ask the cluster's administrators"
        )
    if status == 403 and "exceeded quota" in detail:
        return (
            "the namespace's ResourceQuota is used up: raise it, or lower the resources the "
            "spec (or the operator's build settings) asks for"
        )
    if status == 403:
        return (
            "the operator's RBAC lacks this permission: apply the rules generated from "
            "operator/modelship/rbac.py (deploy/rbac.yaml or the chart); when the operator "
            "watches given namespaces, this namespace must be one of them"
        )
    if status in (400, 422):
        return (
            "the API server rejected what the operator made from the spec: change the field "
            "it names in the spec, or report a bug if the spec is valid"
        )
    if status == 404:
        return "the namespace (or the object) is gone; nothing is retried until it is back"
    return ""


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
        accept: str = "application/json",
        timeout: tuple[float, float] = _TIMEOUT,
    ) -> dict[str, Any]:
        self._on_request(method)
        if method != "GET":
            log.debug("%s %s", method, path)
        response = self._client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": accept},
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

    def list_model_deployments(self, namespaces: Sequence[str]) -> Sequence[dict[str, Any]]:
        """The metadata (name, uid, generation, ...) of every ModelDeployment in the namespaces,
        or in the cluster when none are given: how the controller audits its watch."""
        paths = [self._path(api.KIND, ns) for ns in namespaces] or [
            f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}"
        ]
        items: list[dict[str, Any]] = []
        for path in paths:
            try:
                page = self._call(
                    "GET",
                    path,
                    accept="application/json;as=PartialObjectMetadataList;"
                    "g=meta.k8s.io;v=v1,application/json",
                )
            except ApiException as e:
                raise KubeError(f"listing {api.PLURAL} at {path}", e) from e
            items += page.get("items", [])
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

    def json_patch(
        self, kind: str, namespace: str, name: str, operations: Sequence[dict[str, Any]]
    ) -> bool:
        """Apply a JSON patch; False when one of its ``test`` operations failed (the object
        changed since it was read: read it again next time)."""
        try:
            self._call(
                "PATCH",
                self._path(kind, namespace, name),
                body=operations,
                query=[("fieldManager", naming.MANAGER)],
                content_type="application/json-patch+json",
            )
        except ApiException as e:
            if e.status == 422 and "test operation" in str(e.body or ""):
                return False
            raise KubeError(f"patching {kind} {namespace}/{name}", e) from e
        return True

    def set_finalizer(self, namespace: str, name: str, finalizer: str, present: bool) -> None:
        """Add or remove one finalizer of a ModelDeployment, keeping the others."""
        current = self.get(api.KIND, namespace, name)
        if current is None:
            return
        finalizers: Sequence[str] = current["metadata"].get("finalizers") or []
        if (finalizer in finalizers) == present:
            return
        wanted = [*finalizers, finalizer] if present else [f for f in finalizers if f != finalizer]
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion",
             "value": current["metadata"]["resourceVersion"]},
            {"op": "replace" if "finalizers" in current["metadata"] else "add",
             "path": "/metadata/finalizers", "value": wanted},
        ]  # fmt: skip
        if not self.json_patch(api.KIND, namespace, name, patch):
            self.set_finalizer(namespace, name, finalizer, present)

    def merge_data(self, namespace: str, name: str, data: dict[str, str | None]) -> None:
        """Add keys to a ConfigMap (created on first use), and remove those whose value is
        None; other keys are left alone (a JSON merge patch: no lost updates between workers)."""
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
            "data": {k: v for k, v in data.items() if v is not None},
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
