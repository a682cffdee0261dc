"""Desired objects, computed by pure functions from the spec: ``spec -> dict``.

Every builder returns the full object as server-side apply wants it. ``with_hash`` stamps the hash
of the desired content on it, so the operator writes only objects whose desired content changed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlsplit

from modelship.api import v1alpha1 as api
from modelship.api.artifact import DIGEST_PATTERN, canonical_json, redact_uri
from modelship.api.quantity import parse_quantity
from modelship.api.serving import (
    GRPC_PORT,
    METRICS_PORT,
    MIRROR_DIR,
    MIRROR_KEY,
    MODEL_DIR,
    PVC_SOURCE_ROOT,
    REST_PORT,
    RUNTIME_UID,
    DownloadConfig,
    MirrorPlan,
    ServingConfig,
    SourceMounts,
)
from modelship.api.types import duration_seconds
from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import naming
from modelship.domain.naming import Owner
from modelship.domain.observation import Artifact
from modelship.domain.plan import DEFAULT_CPU, DEFAULT_MEMORY, BuildTarget, serving_threads
from modelship.domain.release import Mirroring, RevisionPlan, ServingPlan
from modelship.domain.settings import PVC_MOUNT_PATH, Settings

PLAN_DIR = "/etc/modelship"
TERMINATION_GRACE_SECONDS = 30
DRAIN_SECONDS = 5
"""preStop pause: endpoints controllers and proxies stop sending before the server stops."""
EXIT_MARGIN_SECONDS = 3
"""Left between the server's drain deadline and the kubelet's SIGKILL: the server's own exit
after its deadline (closing the model's threads, the metrics server) and the kubelet's delay
in sending SIGTERM once the preStop pause ends."""
DRAIN_DEADLINE_SECONDS = TERMINATION_GRACE_SECONDS - DRAIN_SECONDS - EXIT_MARGIN_SECONDS
"""The server's drain deadline: terminationGracePeriodSeconds counts from the start of the
preStop pause, SIGTERM comes after it, so the server has the rest, less the margin."""


class ArtifactLocationError(ValueError):
    """The artifact URI is not inside the configured store."""


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _secret_env(secret: str | None) -> list[dict[str, Any]]:
    if not secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the hash of its content in ``modelship.io/applied-hash``."""
    digest = hashlib.sha256(canonical_json(obj)).hexdigest()[:16]
    annotations = obj["metadata"].setdefault("annotations", {})
    annotations[naming.ANNOTATION_APPLIED_HASH] = digest
    return obj


def applied_hash(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    annotations: dict[str, str] = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(naming.ANNOTATION_APPLIED_HASH)


def _meta(name: str, owner: Owner, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner.reference()],
    }


# --- build ---------------------------------------------------------------------------------

SOURCES_DIR = "/work/sources"
"""The fetched sources (volume ``sources``): written by the fetch step, read-only after it."""
CONVERTED_DIR = "/work/converted"
"""Where the publish step sees the convert step's volume (``convert``, its /tmp), read-only."""
LOG_ALLOWANCE = 256 * 1024**2
"""Ephemeral storage beyond the volumes: container logs (the root filesystem is read-only)."""
VOLUME_SLACK = 16 * 1024**2
"""What the builder is told it may write stays this far below a volume's sizeLimit (filesystem
blocks and the handoff files), so it stops with a message before the kubelet evicts the pod."""


def _pvc_claims(spec: ModelDeploymentSpec) -> list[str]:
    """The claims of pvc:// sources: PersistentVolumeClaims of the spec's own namespace (a pod
    can mount no other), mounted read-only in the fetch step only."""
    uris = [spec.model.uri]
    if spec.optimization.calibration and spec.optimization.calibration.uri:
        uris.append(spec.optimization.calibration.uri)
    return sorted({urlparse(u).netloc for u in uris if u.startswith("pvc://")})


def _plan_volume() -> dict[str, Any]:
    """The build plan, projected from the pod's annotation into ``plan.json``."""
    path = f"metadata.annotations['{naming.ANNOTATION_PLAN}']"
    return {
        "name": "plan",
        "downwardAPI": {"items": [{"path": "plan.json", "fieldRef": {"fieldPath": path}}]},
    }


def _bytes(quantity: str) -> int:
    return int(parse_quantity(quantity))


def _build_volumes(spec: ModelDeploymentSpec, settings: Settings) -> list[dict[str, Any]]:
    """The build pod's volumes: the plan, the sources, the convert step's scratch (and its
    model), the other steps' scratch, the store (PVC mode), each pvc:// source."""
    download, scratch = settings.build_download_limit, settings.build_scratch_limit
    volumes: list[dict[str, Any]] = [
        _plan_volume(),
        {"name": "sources", "emptyDir": {"sizeLimit": download}},
        {"name": "convert", "emptyDir": {"sizeLimit": scratch}},
        {"name": "tmp", "emptyDir": {"sizeLimit": scratch}},
    ]
    if not settings.uses_s3:
        volumes.append(
            {"name": "store", "persistentVolumeClaim": {"claimName": settings.store_pvc}}
        )
    for i, claim in enumerate(_pvc_claims(spec)):
        volumes.append(
            {
                "name": f"source-{i}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )
    return volumes


def _step_mounts(step: str, spec: ModelDeploymentSpec, settings: Settings) -> list[dict[str, Any]]:
    """What each step sees: only the fetch step the source claims, only the publish step the
    store, and the convert step nothing it could change but its own scratch."""
    plan = {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True}
    if step == "fetch":
        claims = [
            {"name": f"source-{i}", "mountPath": str(PVC_SOURCE_ROOT / claim), "readOnly": True}
            for i, claim in enumerate(_pvc_claims(spec))
        ]
        return [
            plan,
            {"name": "sources", "mountPath": SOURCES_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *claims,
        ]
    if step == "convert":
        return [
            plan,
            {"name": "sources", "mountPath": SOURCES_DIR, "readOnly": True},
            {"name": "convert", "mountPath": "/tmp"},
        ]
    store = [] if settings.uses_s3 else [{"name": "store", "mountPath": PVC_MOUNT_PATH}]
    return [
        plan,
        {"name": "sources", "mountPath": SOURCES_DIR, "readOnly": True},
        {"name": "convert", "mountPath": CONVERTED_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *store,
    ]


def _step_args(step: str) -> list[str]:
    args = ["build", "--plan", f"{PLAN_DIR}/plan.json", "--step", step, "--sources", SOURCES_DIR]
    if step == "convert":
        args += ["--converted", "/tmp"]
    elif step == "publish":
        args += ["--converted", CONVERTED_DIR]
    return args


def _builder_container(step: str, spec: ModelDeploymentSpec, settings: Settings) -> dict[str, Any]:
    """One step of the build. Credentials: the fetch step gets the Secret the spec names for
    its source, the publish step the store's, the convert step (which may unpickle) none."""
    limits = SourceMounts(
        pvc_root=PVC_SOURCE_ROOT,
        max_download_bytes=_bytes(settings.build_download_limit) - VOLUME_SLACK,
        max_extract_bytes=_bytes(settings.build_scratch_limit) - VOLUME_SLACK,
    )
    env = limits.to_env()
    if step == "publish":
        env += _secret_env(settings.store_s3_secret)
    else:
        # No instance-metadata credentials (a node's identity) for what the spec asks to fetch.
        env.append({"name": "AWS_EC2_METADATA_DISABLED", "value": "true"})
        if step == "fetch":
            env += _secret_env(spec.model.s3.secret_name if spec.model.s3 else None)
        if step == "convert":
            # Frameworks keep caches and settings under $HOME (Keras' ~/.keras): the root
            # filesystem is read-only, so the convert step's own scratch is its home.
            env.append({"name": "HOME", "value": "/tmp"})
    storage = _bytes(settings.build_download_limit) + 2 * _bytes(settings.build_scratch_limit)
    ephemeral = f"{(storage + LOG_ALLOWANCE) // 1024**2}Mi"
    image = settings.converter_image(spec.model.format) if step == "convert" else None
    return {
        "name": "builder" if step == "publish" else step,
        "image": image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "modelship_runtime"],
        "args": _step_args(step),
        "env": env,
        "resources": {
            "requests": {
                "cpu": settings.build_cpu,
                "memory": settings.build_memory,
                "ephemeral-storage": ephemeral,
            },
            "limits": {"memory": settings.build_memory, "ephemeral-storage": ephemeral},
        },
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": _step_mounts(step, spec, settings),
    }


def build_job(
    spec: ModelDeploymentSpec, target: BuildTarget, owner: Owner, settings: Settings
) -> dict[str, Any]:
    """The builder Job. Its name comes from the digest (or request key), never from the owner.

    Its pod runs the build's three steps in three containers (docs/builder.md, "Build pods"):
    ``fetch`` and ``convert`` as init containers, then ``builder``, the publish step. Every
    container requests and is limited to the ephemeral storage of all volumes together (the
    pod's limit is the largest of its init containers' and its main container's)."""
    plan_json = target.plan.model_dump_json(by_alias=True, exclude_none=True)
    labels = naming.build_labels(target.key)
    annotations = {
        naming.ANNOTATION_PLAN_KEY: target.plan.plan_key,
        naming.ANNOTATION_REQUEST_KEY: target.request_key,
    }
    if target.pinned_digest:
        annotations[naming.ANNOTATION_DIGEST] = target.pinned_digest
    meta = _meta(target.job_name, owner, labels)
    meta["ownerReferences"] = [owner.reference(controller=False)]
    meta["annotations"] = annotations
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": settings.build_backoff_limit,
            "activeDeadlineSeconds": settings.build_deadline_seconds,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {naming.ANNOTATION_PLAN: plan_json},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": _pod_security(),
                    "initContainers": [
                        _builder_container(step, spec, settings) for step in ("fetch", "convert")
                    ],
                    "containers": [_builder_container("publish", spec, settings)],
                    "volumes": _build_volumes(spec, settings),
                },
            },
        },
    }


def _endpoint_port(endpoint: str | None) -> int:
    """The TCP port of an S3 endpoint (none: AWS S3 over https)."""
    if not endpoint:
        return 443
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        port = None
    return port or (80 if parts.scheme == "http" else 443)


def _egress_ports(spec: ModelDeploymentSpec, settings: Settings) -> list[int]:
    """The ports a build connects to: its https and s3 sources', and an S3 store's."""
    uris = [spec.model.uri]
    if spec.optimization.calibration and spec.optimization.calibration.uri:
        uris.append(spec.optimization.calibration.uri)
    ports = set()
    for uri in uris:
        parts = urlsplit(uri)
        if parts.scheme == "https":
            ports.add(_endpoint_port(f"https://{parts.netloc}"))
        elif parts.scheme == "s3":
            ports.add(_endpoint_port(spec.model.s3.endpoint if spec.model.s3 else None))
    if settings.uses_s3:
        ports.add(_endpoint_port(settings.store_s3_endpoint))
    return sorted(ports)


def _egress_peers(settings: Settings) -> list[dict[str, Any]]:
    """Anywhere but this host, link-local and the cluster's networks (unless allowed)."""
    if settings.build_internal_sources:
        return [
            {"ipBlock": {"cidr": "0.0.0.0/0"}},
            {"ipBlock": {"cidr": "::/0"}},
            {"namespaceSelector": {}},
        ]
    access = settings.build_policy().source_access
    denied = [ipaddress.ip_network(cidr) for cidr in access.denied_networks]
    return [
        {
            "ipBlock": {
                "cidr": everywhere,
                "except": sorted({str(n) for n in denied if n.version == version}),
            }
        }
        for everywhere, version in (("0.0.0.0/0", 4), ("::/0", 6))
    ]


def build_network_policy(
    spec: ModelDeploymentSpec, target: BuildTarget, owner: Owner, settings: Settings
) -> dict[str, Any]:
    """The NetworkPolicy of the ModelDeployment's build pods: no ingress; egress only to DNS
    and the ports of its sources and store outside the cluster (nothing at all for pvc://
    sources and a PVC store), plus the operator's extra rules. The builder checks every
    address itself too; this keeps the convert step (which may run the model file's code) in
    the same bounds."""
    ports = _egress_ports(spec, settings)
    egress: list[dict[str, Any]] = []
    if ports:
        egress += [
            {
                "to": [{"namespaceSelector": {}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
            {
                "to": _egress_peers(settings),
                "ports": [{"protocol": "TCP", "port": port} for port in ports],
            },
        ]
    egress += settings.build_extra_egress
    name = naming.build_policy_name(owner.name)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, owner, naming.build_labels(target.key)),
        "spec": {
            "podSelector": {"matchLabels": naming.build_selector(target.key)},
            "policyTypes": ["Ingress", "Egress"],
            "egress": egress,
        },
    }


# --- serving -------------------------------------------------------------------------------


def desired_replicas(spec: ModelDeploymentSpec) -> int:
    """spec.replicas (written by the HPA through the scale subresource) within the bounds."""
    scaling = spec.scaling
    return min(max(spec.replicas, scaling.min_replicas), scaling.max_replicas)


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    res = spec.serving.resources
    requests = {"cpu": DEFAULT_CPU, "memory": DEFAULT_MEMORY}
    if res.requests:
        requests |= {k: v for k, v in res.requests.model_dump().items() if v is not None}
    out: dict[str, Any] = {"requests": requests}
    if res.limits:
        limits = {k: v for k, v in res.limits.model_dump().items() if v is not None}
        if limits:
            out["limits"] = limits
    return out


def artifact_path(artifact: Artifact, store_uri: str, namespace: str) -> str:
    """Where the artifact is below the store's root: ``<namespace>/<hex>``, the namespace's
    own part of the store, or ``<hex>`` for artifacts published before the store had parts.
    Anything else (another namespace's part, another store) is refused."""
    root = store_uri.rstrip("/")
    if re.fullmatch(DIGEST_PATTERN, artifact.digest):
        hex_ = naming.hex_of(artifact.digest)
        for path in (f"{namespace}/{hex_}", hex_):
            if artifact.uri.rstrip("/") == f"{root}/{path}":
                return path
    raise ArtifactLocationError(
        f"artifact {artifact.digest} is at {redact_uri(artifact.uri)}, not in this namespace's "
        f"part of the store ({root}/{namespace}/): it was published by another namespace, or "
        "the store settings changed since it was built; delete the build Job to rebuild it"
    )


def _artifact_volume(
    artifact: Artifact, settings: Settings, namespace: str
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(volume, mount, init containers) that put the artifact at MODEL_DIR, read-only."""
    store_uri = settings.artifact_store().uri
    path = artifact_path(artifact, store_uri, namespace)
    if settings.uses_s3:
        # The runtime's storage-initializer mode: download, verify, exit.
        download = DownloadConfig(
            model_dir=MODEL_DIR,
            artifact_digest=artifact.digest,
            artifact_uri=f"{store_uri.rstrip('/')}/{path}".rsplit("/", 1)[0],
            artifact_s3_endpoint=settings.store_s3_endpoint or None,
            artifact_s3_region=settings.store_s3_region or None,
            download_only=True,
        )
        fetch = {
            "name": "fetch-artifact",
            "image": settings.runtime_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["python", "-m", "modelship_runtime"],
            "args": ["serve"],
            "env": download.to_env() + _secret_env(settings.store_s3_secret),
            "securityContext": _container_security(),
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "volumeMounts": [
                {"name": "model", "mountPath": str(MODEL_DIR)},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        return (
            {"name": "model", "emptyDir": {}},
            {"name": "model", "mountPath": str(MODEL_DIR), "readOnly": True},
            [fetch],
        )
    return (
        {
            "name": "model",
            "persistentVolumeClaim": {"claimName": settings.store_pvc, "readOnly": True},
        },
        {"name": "model", "mountPath": str(MODEL_DIR), "subPath": path, "readOnly": True},
        [],
    )


def serving_config(
    spec: ModelDeploymentSpec, owner: Owner, artifact: Artifact, revision: str | None = None
) -> ServingConfig:
    """What the server container is told (rendered into its environment)."""
    batching = spec.serving.batching
    return ServingConfig(
        model_dir=MODEL_DIR,
        model_name=owner.name,
        artifact_digest=artifact.digest,
        model_sha256=artifact.model_sha256,
        revision=revision,
        intra_op_threads=serving_threads(spec),
        rest_port=REST_PORT,
        grpc_port=GRPC_PORT,
        metrics_port=METRICS_PORT,
        grpc_enabled=spec.serving.grpc,
        max_batch_size=batching.max_batch_size if batching else 0,
        drain_deadline_s=DRAIN_DEADLINE_SECONDS,
        mirror_file=MIRROR_DIR / MIRROR_KEY,
        **({"max_delay_ms": batching.max_delay_ms} if batching else {}),
    )


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _serving_ports(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    ports = [
        {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
    ]
    if spec.serving.grpc:
        ports.insert(1, {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"})
    return ports


def _serving_pod_spec(
    spec: ModelDeploymentSpec,
    owner: Owner,
    artifact: Artifact,
    settings: Settings,
    revision: str | None = None,
) -> dict[str, Any]:
    volume, mount, init = _artifact_volume(artifact, settings, owner.namespace)
    server = {
        "name": "server",
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "modelship_runtime"],
        "args": ["serve"],
        "env": serving_config(spec, owner, artifact, revision).to_env(),
        "ports": _serving_ports(spec),
        "resources": _resources(spec),
        "securityContext": _container_security(),
        "startupProbe": _probe("/v2/health/live", 2, 60),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "volumeMounts": [
            mount,
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "mirror", "mountPath": str(MIRROR_DIR), "readOnly": True},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": _pod_security(),
        "containers": [server],
        "volumes": [
            volume,
            {"name": "tmp", "emptyDir": {}},
            # Changes reach running pods (the kubelet rewrites the files): mirroring starts and
            # stops without a restart. Optional: a pod never waits for it.
            {
                "name": "mirror",
                "configMap": {
                    "name": naming.MIRROR_CONFIGMAP,
                    "items": [{"key": naming.mirror_key(owner.name), "path": MIRROR_KEY}],
                    "optional": True,
                },
            },
        ],
    }
    if init:
        pod_spec["initContainers"] = init
    return pod_spec


def revision_deployment(
    spec: ModelDeploymentSpec,
    owner: Owner,
    plan: RevisionPlan,
    settings: Settings,
    retired_at: str | None = None,
) -> dict[str, Any]:
    """The Deployment of one revision, rendered from the spec (only ever for the revision the
    spec asks for: other revisions keep their template and get only their replicas patched)."""
    revision, artifact = plan.revision, plan.artifact
    name = naming.revision_deployment_name(owner.name, revision)
    labels = naming.serving_labels(owner.name) | {naming.LABEL_REVISION: revision}
    meta = _meta(name, owner, labels)
    meta["annotations"] = {naming.ANNOTATION_ARTIFACT: artifact.to_json()}
    if plan.request_key:
        meta["annotations"][naming.ANNOTATION_REQUEST_KEY] = plan.request_key
    if retired_at:
        meta["annotations"][naming.ANNOTATION_RETIRED_AT] = retired_at
    return with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": plan.replicas,
                "selector": {"matchLabels": naming.revision_selector(owner.name, revision)},
                "revisionHistoryLimit": 2,
                "progressDeadlineSeconds": max(
                    1, math.ceil(duration_seconds(spec.rollout.progress_deadline))
                ),
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                },
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {naming.ANNOTATION_DIGEST: artifact.digest},
                    },
                    "spec": _serving_pod_spec(spec, owner, artifact, settings, revision),
                },
            },
        }
    )


def pod_selector(owner: Owner, plan: RevisionPlan) -> dict[str, str]:
    """The pods of one revision; the legacy Deployment's by its pods' template hash."""
    if plan.legacy_name is None:
        return naming.revision_selector(owner.name, plan.revision)
    if plan.template_hash is None:
        return naming.selector_labels(owner.name)
    return naming.selector_labels(owner.name) | {naming.LABEL_POD_TEMPLATE_HASH: plan.template_hash}


def service(
    spec: ModelDeploymentSpec, owner: Owner, name: str, selector: dict[str, str]
) -> dict[str, Any]:
    ports = [
        {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
    ]
    if spec.serving.grpc:
        ports.insert(
            1,
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            },
        )
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, owner, naming.serving_labels(owner.name)),
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
        }
    )


def services(spec: ModelDeploymentSpec, owner: Owner, plan: ServingPlan) -> list[dict[str, Any]]:
    """``<name>`` for clients (every revision's pods: the replica router), ``<name>-stable`` and
    ``<name>-canary`` (the canary's pods during a release, the stable's otherwise)."""
    stable = pod_selector(owner, plan.stable)
    canary = pod_selector(owner, plan.canary) if plan.canary else stable
    # A shadow step: clients reach the stable's pods only; the canary gets mirrored requests.
    clients = stable if plan.shadow else naming.selector_labels(owner.name)
    return [
        service(spec, owner, naming.serving_name(owner.name), clients),
        service(spec, owner, naming.stable_service_name(owner.name), stable),
        service(spec, owner, naming.canary_service_name(owner.name), canary),
    ]


def mirror_plan(
    spec: ModelDeploymentSpec, owner: Owner, mirroring: Mirroring | None
) -> MirrorPlan | None:
    """What the stable's pods read from the mirror ConfigMap."""
    if mirroring is None:
        return None
    analysis = spec.rollout.analysis
    agreement = analysis.agreement
    return MirrorPlan(
        stable=mirroring.stable,
        canary=mirroring.canary,
        url=f"http://{naming.canary_service_name(owner.name)}.{owner.namespace}.svc:{REST_PORT}",
        share=mirroring.share,
        output=analysis.compare_output,
        keep_inputs=agreement.keep_inputs if agreement else False,
        replay_interval_s=mirroring.replay_interval_s,
        replay_samples=mirroring.replay_samples,
    )


def mirror_entry(
    spec: ModelDeploymentSpec, owner: Owner, mirroring: Mirroring | None
) -> str | None:
    """The ModelDeployment's key of the mirror ConfigMap: the MirrorPlan as JSON, or None (the
    key removed) while nothing is mirrored."""
    plan = mirror_plan(spec, owner, mirroring)
    return None if plan is None else plan.model_dump_json(exclude_none=True)


def autoscaler(spec: ModelDeploymentSpec, owner: Owner) -> dict[str, Any]:
    """HPA on the ModelDeployment's scale subresource (see docs/operator.md, "Scaling")."""
    scaling = spec.scaling
    name = naming.serving_name(owner.name)
    return with_hash(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(name, owner, naming.serving_labels(owner.name)),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": api.API_VERSION,
                    "kind": api.KIND,
                    "name": owner.name,
                },
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {
                                "type": "Utilization",
                                "averageUtilization": scaling.target_cpu_utilization,
                            },
                        },
                    }
                ],
            },
        }
    )


def disruption_budget(spec: ModelDeploymentSpec, owner: Owner) -> dict[str, Any] | None:
    """A PDB keeping all but one pod during voluntary disruptions, when there are two or more."""
    if spec.scaling.min_replicas < 2:
        return None
    name = naming.serving_name(owner.name)
    return with_hash(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(name, owner, naming.serving_labels(owner.name)),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": naming.selector_labels(owner.name)},
            },
        }
    )


@dataclass(frozen=True)
class Scale:
    """A replica count (and annotations) patched onto a Deployment we do not re-render."""

    name: str
    replicas: int
    annotations: dict[str, str | None]
    """None removes the annotation."""


@dataclass(frozen=True)
class ServingObjects:
    apply: list[dict[str, Any]]
    """Objects to server-side apply when their content hash changed."""
    scale: list[Scale]
    delete: list[tuple[str, str]]
    """(kind, name) of objects that must not exist."""


def serving_objects(
    spec: ModelDeploymentSpec,
    owner: Owner,
    plan: ServingPlan,
    settings: Settings,
    now: str,
) -> ServingObjects:
    """Every serving child for a serving plan."""
    apply: list[dict[str, Any]] = []
    scale: list[Scale] = []
    for revision in (plan.stable, plan.canary):
        if revision is None:
            continue
        if revision.render:
            apply.append(revision_deployment(spec, owner, revision, settings))
        else:
            name = revision.legacy_name or naming.revision_deployment_name(
                owner.name, revision.revision
            )
            scale.append(Scale(name, revision.replicas, {naming.ANNOTATION_RETIRED_AT: None}))
    for retired in plan.retire:
        stamp = retired.retired_at or now
        scale.append(Scale(retired.name, 0, {naming.ANNOTATION_RETIRED_AT: stamp}))
    apply += services(spec, owner, plan)
    apply.append(autoscaler(spec, owner))
    delete = [("Deployment", name) for name in plan.delete]
    pdb = disruption_budget(spec, owner)
    if pdb is None:
        delete.append(("PodDisruptionBudget", naming.serving_name(owner.name)))
    else:
        apply.append(pdb)
    return ServingObjects(apply, scale, delete)
