"""Names, labels, annotations and ownerReferences of everything the operator creates.

One module decides them so that the desired-state builders, the Kubernetes layer and the tests
agree, and so that a name derived from a digest is the same in every operator process (that is
what makes Job creation idempotent across ModelDeployments and restarts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelship.api import v1alpha1 as api

MANAGER = "modelship"
"""The field manager of every server-side apply and the value of the managed-by label."""

PREFIX = "modelship.io"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_DEPLOYMENT = f"{PREFIX}/deployment"
"""Name of the owning ModelDeployment on serving objects and pods."""
LABEL_BUILD = f"{PREFIX}/build"
"""Build key (digest or request key, shortened) on build Jobs and their pods."""
LABEL_REVISION = f"{PREFIX}/revision"
"""The revision (a short hash of what the pods run) on revision Deployments and their pods."""
LABEL_POD_TEMPLATE_HASH = "pod-template-hash"
"""Set by the Deployment controller on every pod of a ReplicaSet: how the Deployment that
predates revisions is told apart from revision Deployments without touching its pods."""

ANNOTATION_APPLIED_HASH = f"{PREFIX}/applied-hash"
"""Hash of the desired object as last applied: equal hash means nothing to write."""
ANNOTATION_DIGEST = f"{PREFIX}/artifact-digest"
ANNOTATION_ARTIFACT = f"{PREFIX}/artifact"
"""The served artifact (JSON) on the Deployment: what it serves, without reading the store."""
ANNOTATION_REQUEST_KEY = f"{PREFIX}/request-key"
ANNOTATION_PLAN_KEY = f"{PREFIX}/plan-key"
ANNOTATION_PLAN = f"{PREFIX}/plan"
"""The build plan JSON on the builder pod, projected into a file by the downward API."""
ANNOTATION_RETIRED_AT = f"{PREFIX}/retired-at"
"""On a revision Deployment scaled to zero after a release: when, so it is deleted later."""

ANNOTATION_PROMOTE = f"{PREFIX}/promote"
ANNOTATION_PROMOTE_FULL = f"{PREFIX}/promote-full"
ANNOTATION_ABORT = f"{PREFIX}/abort"
ANNOTATION_RETRY = f"{PREFIX}/retry"
MANUAL_ANNOTATIONS = {
    "promote": ANNOTATION_PROMOTE,
    "promote-full": ANNOTATION_PROMOTE_FULL,
    "abort": ANNOTATION_ABORT,
    "retry": ANNOTATION_RETRY,
}
"""Manual release control on the ModelDeployment (people and GitOps set them, never we).
The value is the canary's revision, optionally followed by ``@<token>``; each acts once per
value, so a leftover annotation cannot act on the next release or twice on this one."""
REVISION_LENGTH = 10

INDEX_CONFIGMAP = "modelship-artifacts"
MIRROR_CONFIGMAP = "modelship-mirror"
"""One per namespace, like the index: key ``<name>.json`` is the MirrorPlan of ModelDeployment
``<name>`` (absent: nothing mirrored). Fixed names keep the operator's ConfigMap access to two
names."""
"""Per-namespace record of published artifacts (see docs/operator.md, "Artifact index")."""

COMPONENT_SERVER = "server"
COMPONENT_BUILDER = "builder"
RUNTIME_APP = "modelship-runtime"
BUILD_KEY_LENGTH = 20
"""80 bits of the digest: collisions are out of reach while the Job name stays short."""


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment an object belongs to."""

    name: str
    namespace: str
    uid: str

    def reference(self, *, controller: bool = True) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": controller,
            "blockOwnerDeletion": True,
        }


def hex_of(digest: str) -> str:
    """The hex part of ``sha256:<hex>`` (or the value itself when it has no algorithm)."""
    return digest.split(":", 1)[-1]


def build_key(digest_or_key: str) -> str:
    return hex_of(digest_or_key)[:BUILD_KEY_LENGTH]


def build_job_name(digest_or_key: str) -> str:
    """``build-<key>``: the same for every ModelDeployment asking for the same artifact."""
    return f"build-{build_key(digest_or_key)}"


def serving_name(owner_name: str) -> str:
    """The client Service, HPA and PDB share the ModelDeployment's name (a DNS-1035 label), and
    so did the one Deployment of operators before revisions (adopted as the stable revision)."""
    return owner_name


def revision_deployment_name(owner_name: str, revision: str) -> str:
    """``<name>-<revision>``: at most 40 + 1 + 10 characters."""
    return f"{owner_name}-{revision}"


def stable_service_name(owner_name: str) -> str:
    return f"{owner_name}-stable"


def canary_service_name(owner_name: str) -> str:
    return f"{owner_name}-canary"


def mirror_key(owner_name: str) -> str:
    """The key of MIRROR_CONFIGMAP holding what a ModelDeployment's stable pods mirror."""
    return f"{owner_name}.json"


def revision_selector(owner_name: str, revision: str) -> dict[str, str]:
    return selector_labels(owner_name) | {LABEL_REVISION: revision}


def common_labels(component: str) -> dict[str, str]:
    return {
        LABEL_NAME: RUNTIME_APP,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_PART_OF: "modelship",
    }


def selector_labels(owner_name: str) -> dict[str, str]:
    """Pod selector of the serving Deployment: immutable, so as small as it can be."""
    return {LABEL_DEPLOYMENT: owner_name, LABEL_COMPONENT: COMPONENT_SERVER}


def selector_string(owner_name: str) -> str:
    """The selector in label-query form, for status.selector (the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner_name).items()))


def serving_labels(owner_name: str) -> dict[str, str]:
    return common_labels(COMPONENT_SERVER) | selector_labels(owner_name)


def build_labels(key: str) -> dict[str, str]:
    return common_labels(COMPONENT_BUILDER) | {LABEL_BUILD: build_key(key)}


def build_selector(key: str) -> dict[str, str]:
    """The pods of the build Job of ``key``."""
    return {LABEL_BUILD: build_key(key), LABEL_COMPONENT: COMPONENT_BUILDER}


def build_policy_name(owner_name: str) -> str:
    """``<name>-build``: the NetworkPolicy of the ModelDeployment's build pods."""
    return f"{owner_name}-build"


def rest_endpoint(owner: Owner, port: int) -> str:
    return f"http://{serving_name(owner.name)}.{owner.namespace}.svc:{port}"


def grpc_endpoint(owner: Owner, port: int) -> str:
    return f"{serving_name(owner.name)}.{owner.namespace}.svc:{port}"


def index_key_for_digest(digest: str) -> str:
    """ConfigMap data keys allow ``[-._a-zA-Z0-9]``, so ``sha256:`` becomes ``sha256-``."""
    return "sha256-" + hex_of(digest)


def index_key_for_request(request_key: str) -> str:
    return "request-" + request_key
