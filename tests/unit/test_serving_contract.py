"""The operator -> runtime contract: the pod spec the operator renders is what the runtime reads.

Each test renders the operator's own objects and runs the runtime's own settings loaders on
exactly the environment and arguments of that pod spec, so a name, default or port that the two
sides disagree on fails here rather than in a pod.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from modelship.api import serving
from modelship.api.artifact import BuildPlan
from modelship.api.quantity import parse_quantity
from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import desired
from modelship.domain.naming import Owner
from modelship.domain.observation import Artifact
from modelship.domain.plan import build_target
from modelship.domain.release import RevisionPlan
from modelship.domain.settings import Settings
from modelship_runtime.builder.cli import STEPS, job_parser
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.serve.cli import parse_settings
from modelship_runtime.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner("sentiment", "ml", "uid-1")
HEX = "3" * 64
PVC_ARTIFACT = Artifact(f"sha256:{HEX}", f"file:///artifacts/{HEX}", "int8-dynamic")
S3_ARTIFACT = Artifact(f"sha256:{HEX}", f"s3://arts/artifacts/{HEX}", "int8-dynamic")
SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def deployment(s: ModelDeploymentSpec, art: Artifact, settings: Settings) -> dict[str, Any]:
    plan = RevisionPlan("0123456789", art, 1, "req", render=True)
    return desired.revision_deployment(s, OWNER, plan, settings)


def spec(**extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"uri": "pvc://models/m.onnx", "sha256": "a" * 64}} | extra
    )


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The variables as the kubelet would set them (Secret references stand for themselves)."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["name"] in SECRET_KEYS, item
            env[item["name"]] = "from-secret"
    return env


def load_serve_settings(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> ServeSettings:
    """Run the runtime's loader (`python -m modelship_runtime serve ARGS`) on that container."""
    assert container["command"] == ["python", "-m", "modelship_runtime"]
    assert container["args"][0] == "serve"
    env = container_env(container)
    unknown = {
        n for n in env if n not in SECRET_KEYS and n.removeprefix(serving.ENV_PREFIX).lower()
        not in ServeSettings.model_fields
    }  # fmt: skip
    assert not unknown, f"the runtime does not read {unknown}"
    monkeypatch.setattr("os.environ", env)
    return parse_settings(container["args"][1:])


def mount_path(container: dict[str, Any], volume: str) -> Path:
    return Path(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume))


@pytest.mark.parametrize(
    "serving_spec",
    [{}, {"batching": {"maxBatchSize": 8, "maxDelayMs": 2.5}, "grpc": False},
     {"batching": {}, "resources": {"limits": {"cpu": "3"}}}],
)  # fmt: skip
def test_the_server_reads_what_the_operator_renders(
    serving_spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = spec(serving=serving_spec)
    pod = deployment(s, PVC_ARTIFACT, Settings())["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    settings = load_serve_settings(server, monkeypatch)

    assert settings.model_dir == mount_path(server, "model")
    assert settings.model_name == OWNER.name
    assert settings.revision == "0123456789"
    assert settings.artifact_digest == PVC_ARTIFACT.digest
    assert settings.artifact_uri is None, "the server must not download: its volume is read-only"
    assert settings.download_only is False
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["http"] == settings.rest_port
    assert ports["metrics"] == settings.metrics_port
    assert ("grpc" in ports) is settings.grpc_enabled is s.serving.grpc
    if settings.grpc_enabled:
        assert ports["grpc"] == settings.grpc_port
    assert server["readinessProbe"]["httpGet"]["port"] == "http"
    batching = s.serving.batching
    assert settings.max_batch_size == (batching.max_batch_size if batching else 0)
    assert settings.max_delay_ms == (
        batching.max_delay_ms if batching else serving.DEFAULT_MAX_DELAY_MS
    )
    limit = (s.serving.resources.limits.cpu if s.serving.resources.limits else None) or "1"
    assert settings.intra_op_threads == int(limit)


def test_the_server_has_exited_before_the_kubelet_would_kill_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM comes after the preStop pause, and terminationGracePeriodSeconds counts from the
    pause's start: the server's drain deadline must end inside what is left, with room for the
    process to exit."""
    pod = deployment(spec(), PVC_ARTIFACT, Settings())["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    settings = load_serve_settings(server, monkeypatch)
    grace = pod["terminationGracePeriodSeconds"]
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert settings.drain_deadline_s == desired.DRAIN_DEADLINE_SECONDS
    assert pause + settings.drain_deadline_s + desired.EXIT_MARGIN_SECONDS <= grace
    assert desired.EXIT_MARGIN_SECONDS >= 2
    assert settings.drain_delay_s == 0, "the preStop pause already keeps the server serving"
    assert settings.drain_deadline_s > 0


def test_the_init_container_downloads_what_the_server_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", "arts")
    monkeypatch.setenv("MODELSHIP_STORE_S3_ENDPOINT", "http://minio.minio:9000")
    monkeypatch.setenv("MODELSHIP_STORE_S3_SECRET", "store-creds")
    operator_settings = Settings()
    pod = deployment(spec(), S3_ARTIFACT, operator_settings)
    pod_spec = pod["spec"]["template"]["spec"]
    (init,) = pod_spec["initContainers"]
    (server,) = pod_spec["containers"]

    fetch = load_serve_settings(init, monkeypatch)
    assert fetch.download_only is True
    assert fetch.artifact_uri == "s3://arts/artifacts"
    assert fetch.artifact_s3_endpoint == "http://minio.minio:9000"
    assert fetch.artifact_digest == S3_ARTIFACT.digest
    assert fetch.model_dir == mount_path(init, "model")
    assert {e["name"] for e in init["env"]} >= SECRET_KEYS

    served = load_serve_settings(server, monkeypatch)
    assert served.model_dir == mount_path(server, "model") == fetch.model_dir
    assert served.artifact_digest == fetch.artifact_digest
    assert served.artifact_uri is None


def build_pod(s: ModelDeploymentSpec, settings: Settings) -> dict[str, Any]:
    target = build_target(s, settings.artifact_store().for_namespace(OWNER.namespace))
    pod: dict[str, Any] = desired.build_job(s, target, OWNER, settings)["spec"]["template"]
    return pod


def test_the_builder_finds_pvc_sources_where_the_operator_mounts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetch = build_pod(spec(), Settings())["spec"]["initContainers"][0]
    assert fetch["name"] == "fetch"
    monkeypatch.setattr("os.environ", container_env(fetch))
    io = IOSettings()
    assert mount_path(fetch, "source-0") == io.pvc_root / "models"


def test_each_build_step_reads_and_writes_where_the_operator_mounts_its_volumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folders each step's arguments name are the volumes mounted there, the next step
    sees what the previous one wrote, and each step's limits fit its volumes."""
    pod = build_pod(spec(), Settings())["spec"]
    sizes = {v["name"]: parse_quantity(v["emptyDir"]["sizeLimit"])
             for v in pod["volumes"] if "emptyDir" in v}  # fmt: skip
    steps = {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}
    parsed = {}
    for name, container in steps.items():
        assert container["command"] == ["python", "-m", "modelship_runtime"]
        assert container["args"][0] == "build"
        args = job_parser().parse_args(container["args"][1:])
        parsed[name] = args
        assert Path(args.plan) == mount_path(container, "plan") / "plan.json"
        assert args.sources == mount_path(container, "sources")
        monkeypatch.setattr("os.environ", container_env(container))
        io = IOSettings()
        assert io.max_download_bytes < sizes["sources"]
        assert io.max_extract_bytes < min(sizes["convert"], sizes["tmp"])
    assert [parsed[n].step for n in ("fetch", "convert", "builder")] == list(STEPS)
    assert parsed["convert"].converted == mount_path(steps["convert"], "convert")
    assert parsed["builder"].converted == mount_path(steps["builder"], "convert")
    plan = BuildPlan.model_validate_json(
        build_pod(spec(), Settings())["metadata"]["annotations"]["modelship.io/plan"]
    )
    store = Path(plan.store.uri.removeprefix("file://"))
    assert store.is_relative_to(mount_path(steps["builder"], "store"))


def test_pods_run_as_the_runtime_image_user_with_its_model_directory() -> None:
    dockerfile = (ROOT / "runtime-image" / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert (int(user[1]), int(user[2])) == (serving.RUNTIME_UID, serving.RUNTIME_UID)
    assert f"mkdir -p /home/modelship {serving.MODEL_DIR}" in dockerfile
    expose = re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)
    assert expose is not None
    assert expose[1].split() == [
        str(p) for p in (serving.REST_PORT, serving.GRPC_PORT, serving.METRICS_PORT)
    ]
    for pod in (
        deployment(spec(), PVC_ARTIFACT, Settings())["spec"]["template"],
        build_pod(spec(), Settings()),
    ):
        security = pod["spec"]["securityContext"]
        assert security["runAsUser"] == security["runAsGroup"] == serving.RUNTIME_UID


def test_contract_fields_render_as_the_variables_pydantic_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = serving.ServingConfig(
        model_name="m",
        revision="r-1",
        max_batch_size=4,
        grpc_enabled=False,
        max_delay_ms=0.25,
        drain_deadline_s=7.5,
    )
    monkeypatch.setattr("os.environ", {e["name"]: e["value"] for e in config.to_env()})
    loaded = ServeSettings()
    assert (
        serving.ServingConfig.model_validate(
            loaded.model_dump(include=set(serving.ServingConfig.model_fields))
        )
        == config
    )


def test_the_server_is_told_the_model_sha256_the_operator_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    art = Artifact(PVC_ARTIFACT.digest, f"file:///artifacts/ml/{HEX}", model_sha256="6" * 64)
    pod = deployment(spec(), art, Settings())["spec"]["template"]
    settings = load_serve_settings(pod["spec"]["containers"][0], monkeypatch)
    assert settings.model_sha256 == "6" * 64


def test_every_serving_pod_reads_the_mirror_plan_from_its_optional_configmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = deployment(spec(), PVC_ARTIFACT, Settings())["spec"]["template"]["spec"]
    settings = load_serve_settings(pod["containers"][0], monkeypatch)
    assert settings.mirror_file == serving.MIRROR_DIR / serving.MIRROR_KEY
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "mirror")
    assert mount == {"name": "mirror", "mountPath": str(serving.MIRROR_DIR), "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "mirror")
    # Optional: a pod starts before the operator wrote its key; a ConfigMap volume (not env)
    # so the kubelet updates the file in running pods and mirroring needs no restart.
    assert volume["configMap"] == {
        "name": "modelship-mirror",
        "items": [{"key": f"{OWNER.name}.json", "path": serving.MIRROR_KEY}],
        "optional": True,
    }


def test_the_mirror_entry_is_a_plan_the_runtime_reads_back() -> None:
    from modelship.domain.release import Mirroring

    s = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://b/m.onnx"},
         "rollout": {"analysis": {"agreement": {"keepInputs": True}, "replay": {},
                                  "compareOutput": "logits"}}}
    )  # fmt: skip
    entry = desired.mirror_entry(s, OWNER, Mirroring("aaaa", "bbbb", 0.25, 30.0, 16))
    assert entry is not None
    plan = serving.MirrorPlan.model_validate_json(entry)
    assert plan == serving.MirrorPlan(
        stable="aaaa", canary="bbbb", url="http://sentiment-canary.ml.svc:8080", share=0.25,
        output="logits", keep_inputs=True, replay_interval_s=30.0, replay_samples=16,
    )  # fmt: skip
    assert desired.mirror_entry(s, OWNER, None) is None, "the key is removed"
