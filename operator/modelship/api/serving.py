"""The contract between the operator and the runtime image's pods: what each pod is told.

The operator renders these models into container environment variables with :meth:`to_env`;
the runtime reads them back with pydantic-settings models that inherit the same fields (see
``modelship_runtime.serve.settings``), so a variable name, a default or a type is declared once,
here. Values that both sides must agree on without being told (the image's user, where the
artifact is mounted, the ports) are constants of this module; the runtime image's Dockerfile is
checked against them by a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "MODELSHIP_"
"""Every contract field ``foo_bar`` travels as the variable ``MODELSHIP_FOO_BAR``."""

RUNTIME_UID = 65532
"""The runtime image's numeric user and group, and what every pod runs as (runAsNonRoot needs a
number). 65532 because pods of earlier releases ran as it and the artifact store they wrote must
stay writable by the builders after an upgrade (hostPath-like volumes are not chowned)."""
MODEL_DIR = Path("/models")
"""Where serving pods find the artifact (model.onnx and manifest.json)."""
PVC_SOURCE_ROOT = Path("/mnt/pvc")
"""Where build pods find ``pvc://claim/path`` sources: ``<root>/<claim>/<path>``."""
REST_PORT = 8080
GRPC_PORT = 8081
METRICS_PORT = 9090
DEFAULT_MAX_DELAY_MS = 5.0
"""How long a request waits for others to join its batch when the spec does not say."""


def env_name(field: str) -> str:
    """The environment variable of a contract field."""
    return ENV_PREFIX + field.upper()


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class PodContract(BaseModel):
    """Base of every contract model: no unknown fields, rendered as environment variables."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    def to_env(self) -> list[dict[str, str]]:
        """``[{"name": "MODELSHIP_<FIELD>", "value": ...}]`` for every field that has a value.

        Fields at their default are rendered too: the pod spec then says everything the pod
        was told, and a runtime with other defaults still does what the operator meant.
        """
        values = self.model_dump(mode="json", exclude_none=True)
        return [{"name": env_name(k), "value": _env_value(v)} for k, v in values.items()]


class ArtifactRef(PodContract):
    """Which artifact a pod works with and where it lives in the pod."""

    model_dir: Path = Field(
        default=MODEL_DIR,
        description="Artifact directory with model.onnx and (optionally) manifest.json.",
    )
    artifact_digest: str | None = Field(
        default=None,
        pattern=r"^sha256:[a-f0-9]{64}$",
        description="Content digest (sha256:<64 hex>) of the artifact: what to download, and "
        "what the server reports it serves.",
    )


class ServingConfig(ArtifactRef):
    """What the operator tells each serving pod's ``server`` container."""

    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[a-f0-9]{64}$",
        description="sha256 of the model file, as the builder reported it to the operator: "
        "the server hashes the file and refuses to load other bytes.",
    )

    model_name: str = Field(default="model", min_length=1, description="Name clients use.")
    model_version: str = Field(default="1", min_length=1, description="Version clients may use.")
    revision: str | None = Field(
        default=None,
        max_length=63,
        description="The revision the pod belongs to; a label of the server's info metric, so "
        "scrapes can be told apart by revision.",
    )
    rest_port: int = Field(default=REST_PORT, ge=0, le=65535, description="OIP v2 REST port.")
    grpc_port: int = Field(default=GRPC_PORT, ge=0, le=65535, description="OIP v2 gRPC port.")
    grpc_enabled: bool = Field(default=True, description="Serve gRPC as well as REST.")
    metrics_port: int = Field(
        default=METRICS_PORT, ge=0, le=65535, description="Port of /metrics (Prometheus)."
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="onnxruntime intra-op threads; 0 = the container's CPU limit (cgroup).",
    )
    max_batch_size: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Dynamic batching: largest merged batch; 0 or 1 = batching off.",
    )
    max_delay_ms: float = Field(
        default=DEFAULT_MAX_DELAY_MS,
        ge=0,
        le=1000,
        description="Dynamic batching: longest time a request waits for others to join it.",
    )
    drain_deadline_s: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="SIGTERM: the server has exited this many seconds later, whatever is still "
        "in flight (gRPC gets GOAWAY and every REST response Connection: close at once). The "
        "operator derives it from the pod's terminationGracePeriodSeconds minus its preStop "
        "pause, less a margin, so the kubelet never kills a draining server.",
    )
    mirror_file: Path | None = Field(
        default=None,
        description="Where the operator's mirroring plan (MirrorPlan as JSON) appears and "
        "changes while the pod runs (a ConfigMap volume): the server re-reads it, so "
        "mirroring starts and stops without restarting a pod. Unset: this pod never mirrors.",
    )


MIRROR_DIR = Path("/etc/modelship/mirror")
"""Where serving pods mount the ModelDeployment's mirror ConfigMap (optional: may be absent)."""
MIRROR_KEY = "mirror.json"
"""The ConfigMap key, and the file name under MIRROR_DIR, holding the MirrorPlan."""
MIRROR_HEADER = "modelship-mirror"
"""Request header a mirroring pod sets (value ``live`` or ``replay``): the canary counts such
requests apart from its clients' (``modelship_mirror_served_total``), so its request metrics,
and the analysis that reads them, see clients only."""
REPLAY_LABELS = "labels"
"""The array of true classes (one per sample) in a calibration file and in the golden set; an
input of that name stays an input."""
REPLAY_FILE = "golden.npz"
"""The artifact's golden set (the samples the build calibrated and validated with, one array
per input name): what a mirroring pod replays to the canary."""


class MirrorPlan(BaseModel):
    """What the stable revision's pods are told to mirror to the canary, as a JSON file (key
    ``<name>.json`` of the namespace's ConfigMap ``modelship-mirror``, mounted as
    ``mirror.json``). Pods of any other revision ignore it;
    an empty or missing file means no mirroring. Every figure it causes is labelled with the
    revision pair, so a plan for a new canary never mixes with the previous one's."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    stable: str = Field(
        min_length=1, max_length=63, description="The revision whose pods mirror (the stable)."
    )
    canary: str = Field(
        min_length=1,
        max_length=63,
        description="The revision receiving mirrored requests: the 'canary' label of the "
        "mirroring metrics.",
    )
    url: str = Field(
        max_length=2048,
        pattern=r"^https?://\S+$",
        description="REST base URL of the canary Service (http://<name>-canary:8080).",
    )
    share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of served client requests mirrored (0-1, sampled per request).",
    )
    output: str | None = Field(
        default=None,
        max_length=256,
        description="Output tensor compared; unset: the model's first float output.",
    )
    queue: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Requests waiting to be mirrored at most; beyond it they are dropped (and "
        "counted), never waited for.",
    )
    keep_inputs: bool = Field(
        default=False,
        description="Keep the inputs of mismatching examples (GET /v2/mirror); false: only "
        "their sha256.",
    )
    replay_interval_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Every this many seconds, send the artifact's golden set (REPLAY_FILE) to "
        "the canary and compare, as source=replay; unset: no replay.",
    )
    replay_samples: int = Field(
        default=32, ge=1, le=1024, description="Golden samples sent per replay round at most."
    )


class DownloadConfig(ArtifactRef):
    """What the ``fetch-artifact`` init container is told (artifact store in S3 mode)."""

    artifact_uri: str | None = Field(
        default=None,
        description="s3://bucket/prefix of the artifact store; with artifact_digest, the "
        "artifact <prefix>/<digest>/ is downloaded into model_dir and verified.",
    )
    artifact_s3_endpoint: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (empty: AWS S3)."
    )
    artifact_s3_region: str | None = Field(default=None, description="Region of the bucket.")
    download_only: bool = Field(
        default=False,
        description="Download the artifact and exit (the init container's mode).",
    )


class SourceMounts(PodContract):
    """What the build pod is told about the volumes the operator mounted for it."""

    pvc_root: Path = Field(
        default=PVC_SOURCE_ROOT,
        description="pvc://<claim>/<path> is read from <pvc_root>/<claim>/<path>.",
    )
    max_download_bytes: int = Field(
        default=20 * 1024**3,
        gt=0,
        description="Most bytes fetched (model and calibration data together); build pods are "
        "told what their download volume holds.",
    )
    max_extract_bytes: int = Field(
        default=20 * 1024**3,
        gt=0,
        description="Largest total size unpacked from an archive; build pods are told what "
        "their scratch volume holds.",
    )
