"""Operator settings, read from ``MODELSHIP_*`` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelship.api.artifact import (
    ALWAYS_DENIED_NETWORKS,
    CLUSTER_NETWORKS,
    ArtifactStore,
    SourceAccess,
)
from modelship.api.quantity import parse_quantity
from modelship.api.v1alpha1 import ModelFormat, S3Settings
from modelship.domain.plan import BuildPolicy

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
PVC_MOUNT_PATH = "/artifacts"
"""Where build Jobs mount the store PVC; the artifact URIs the builder reports start here."""


class Settings(BaseSettings):
    """Everything an operator deployment can tune; the chart sets these as env vars."""

    model_config = SettingsConfigDict(env_prefix="MODELSHIP_", extra="ignore")

    runtime_image: str = Field(
        default="modelship-runtime:0.1.0",
        description="Image with the builder and the server (python -m modelship_runtime).",
    )
    torch_converter_image: str = Field(
        default="modelship-convert-torch:0.1.0",
        description="Image of the convert step of builds with format pytorch: the runtime "
        "image plus PyTorch (CPU) and onnxscript.",
    )
    tensorflow_converter_image: str = Field(
        default="modelship-convert-tensorflow:0.1.0",
        description="Image of the convert step of builds with format tensorflow, keras or "
        "tflite: the runtime image plus TensorFlow (CPU) and tf2onnx.",
    )
    image_pull_policy: str = Field(default="IfNotPresent")
    store_pvc: str | None = Field(
        default="modelship-artifacts",
        description="PersistentVolumeClaim holding artifacts, in each namespace with "
        "ModelDeployments. Ignored when store_s3_bucket is set.",
    )
    store_s3_bucket: str | None = Field(default=None, description="S3 bucket of the store.")
    store_s3_prefix: str = Field(default="artifacts", description="Key prefix in the bucket.")
    store_s3_endpoint: str | None = Field(default=None, description="S3 endpoint URL.")
    store_s3_region: str | None = Field(default=None)
    store_s3_secret: str | None = Field(
        default=None,
        description="Secret (in each namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.",
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated namespaces to watch; empty watches the whole cluster.",
    )
    metrics_port: int = Field(default=9095, ge=0, le=65535, description="0 disables metrics.")
    health_port: int = Field(
        default=8086,
        ge=0,
        le=65535,
        description="Port of GET /healthz (the liveness probe); 0 disables it.",
    )
    watch_check_seconds: float = Field(
        default=60,
        gt=0,
        description="Period of the check that the watch still delivers: a change it has not "
        "delivered one period after a list showed it fails /healthz.",
    )
    concurrency: int = Field(default=8, ge=1, le=128, description="Parallel reconciles.")
    resync_seconds: float = Field(
        default=300, gt=0, description="Period of the idle re-check of every ModelDeployment."
    )
    poll_seconds: float = Field(
        default=10,
        gt=0,
        description="Re-check period while something is in progress (build, rollout, fault).",
    )
    build_backoff_limit: int = Field(default=2, ge=0, le=10, description="Builder pod retries.")
    build_deadline_seconds: int = Field(default=3600, ge=60, description="Longest build.")
    build_cpu: str = Field(default="2")
    build_memory: str = Field(default="4Gi")
    build_download_limit: str = Field(
        default="2Gi",
        description="Most a build fetches (model and calibration data together): the size "
        "limit of its download volume.",
    )
    build_scratch_limit: str = Field(
        default="4Gi",
        description="Size limit of each of a build's two scratch volumes (unpacking and "
        "conversion; variants). Build pods request and are limited to the download volume "
        "plus both scratch volumes of ephemeral storage.",
    )
    allow_pickle: bool = Field(
        default=False,
        description="Build specs with format sklearn (allowPickle: true). Unpickling runs code "
        "from the model file: it runs in the build pod's convert container, which holds no "
        "store credentials and cannot write the store.",
    )
    build_internal_sources: bool = Field(
        default=False,
        description="Let builds fetch from loopback, link-local (cloud metadata) and "
        "cluster_cidrs addresses; the builders' NetworkPolicy then lets them out there too.",
    )
    cluster_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(CLUSTER_NETWORKS),
        description="Comma-separated CIDRs of the cluster's service and pod networks: builds "
        "never fetch from them. The default covers the private and shared ranges.",
    )
    build_extra_egress: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More NetworkPolicy egress rules (JSON list) for build pods, e.g. to an "
        "S3 store inside the cluster.",
    )
    ready_grace_seconds: float = Field(
        default=60,
        ge=0,
        description="How long a started pod may stay unready before it counts as a fault.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Base URL of the Prometheus HTTP API that canary analysis with source: "
        "prometheus queries, e.g. http://prometheus.monitoring:9090; empty: such analyses are "
        "Inconclusive, saying so.",
    )

    leader_election: bool = Field(
        default=False,
        description="Elect one leader among the operator's replicas on a Lease; the others "
        "stand by. The chart turns it on.",
    )
    leader_election_namespace: str | None = Field(
        default=None,
        description="Namespace of the Lease; in a pod, defaults to the pod's own namespace.",
    )
    leader_election_lease: str = Field(default="modelship-operator", description="Lease name.")
    leader_election_lease_seconds: float = Field(default=15, gt=0)
    leader_election_renew_deadline_seconds: float = Field(default=10, gt=0)
    leader_election_retry_seconds: float = Field(default=2, gt=0)
    pod_name: str | None = Field(
        default=None, description="This pod's name (downward API); part of the leader identity."
    )

    def converter_image(self, fmt: ModelFormat) -> str:
        """The image of a build's convert step: a framework's converter image for framework
        formats, the runtime image (skl2onnx, onnx) for the others."""
        if fmt == ModelFormat.PYTORCH:
            return self.torch_converter_image
        if fmt in (ModelFormat.TENSORFLOW, ModelFormat.KERAS, ModelFormat.TFLITE):
            return self.tensorflow_converter_image
        return self.runtime_image

    @field_validator("namespaces", "cluster_cidrs", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("prometheus_url", mode="before")
    @classmethod
    def _prometheus_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None
        if isinstance(value, str) and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not a Prometheus URL: give http://host:port (or https://), "
                "with the path prefix if Prometheus serves under one"
            )
        return value

    @field_validator("cluster_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(v, strict=False)) for v in value]

    @field_validator("build_download_limit", "build_scratch_limit")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if parse_quantity(value) < 64 * 1024**2:
            raise ValueError(f"{value} is too small for a build: give at least 64Mi")
        return value

    @model_validator(mode="after")
    def _one_store(self) -> Settings:
        if not self.store_s3_bucket and not self.store_pvc:
            raise ValueError(
                "no artifact store: set MODELSHIP_STORE_PVC to a PersistentVolumeClaim name "
                "or MODELSHIP_STORE_S3_BUCKET to a bucket"
            )
        return self

    @model_validator(mode="after")
    def _election_namespace(self) -> Settings:
        if self.leader_election and not self.leader_election_namespace:
            try:
                self.leader_election_namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
            except OSError:
                raise ValueError(
                    "leader election needs the Lease's namespace: set "
                    "MODELSHIP_LEADER_ELECTION_NAMESPACE (in a pod it is read from "
                    f"{SERVICE_ACCOUNT_NAMESPACE})"
                ) from None
        return self

    @property
    def uses_s3(self) -> bool:
        return bool(self.store_s3_bucket)

    def build_policy(self) -> BuildPolicy:
        """What builds may do, whatever the spec asks."""
        access = SourceAccess(
            internal=self.build_internal_sources,
            denied_networks=[*ALWAYS_DENIED_NETWORKS, *self.cluster_cidrs],
        )
        return BuildPolicy(allow_pickle=self.allow_pickle, source_access=access)

    def artifact_store(self) -> ArtifactStore:
        """The whole store; each namespace builds into and serves from its own part of it
        (:meth:`ArtifactStore.for_namespace`)."""
        if self.store_s3_bucket:
            prefix = self.store_s3_prefix.strip("/")
            uri = (
                f"s3://{self.store_s3_bucket}/{prefix}"
                if prefix
                else f"s3://{self.store_s3_bucket}"
            )
            s3 = S3Settings(
                endpoint=self.store_s3_endpoint,
                region=self.store_s3_region,
                secret_name=self.store_s3_secret,
            )
            return ArtifactStore(uri=uri, s3=s3)
        return ArtifactStore(uri=f"file://{PVC_MOUNT_PATH}")
