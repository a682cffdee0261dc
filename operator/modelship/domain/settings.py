"""Operator settings, read from ``MODELSHIP_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelship.api.artifact import ArtifactStore
from modelship.api.v1alpha1 import S3Settings

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
    ready_grace_seconds: float = Field(
        default=60,
        ge=0,
        description="How long a started pod may stay unready before it counts as a fault.",
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

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
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

    def artifact_store(self) -> ArtifactStore:
        """The store as the build plan names it."""
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
