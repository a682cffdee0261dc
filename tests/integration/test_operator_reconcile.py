"""The operator against a real control plane: build Jobs, serving children, status and restarts.

There is no kubelet in this tier: the job controller creates builder pods that never run, so a
build is finished by writing the builder pod's status (phase and termination message) the way a
kubelet would; the real job controller then completes or fails the Job. The operator runs as a
subprocess (``python -m modelship``) scoped to the test's namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from localkube.ports import free_port
from modelship.api.serving import MODEL_DIR
from modelship.api.v1alpha1 import GROUP, PLURAL, VERSION
from polling import wait_for

pytestmark = [
    pytest.mark.integration,
    # kubernetes 34's ApiException reads headers through urllib3's deprecated getheaders().
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
SHA = "ab" * 32
T = TypeVar("T")

class Operator:
    """``python -m modelship`` in a subprocess, watching one namespace."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, **env: str) -> None:
        self.log_path = log
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = (
            os.environ
            | {
                "KUBECONFIG": str(kubeconfig),
                "MODELSHIP_NAMESPACES": namespace,
                "MODELSHIP_POLL_SECONDS": "1",
                "MODELSHIP_RESYNC_SECONDS": "30",
                "MODELSHIP_BUILD_BACKOFF_LIMIT": "0",
                "MODELSHIP_METRICS_PORT": str(self.metrics_port),
                "MODELSHIP_HEALTH_PORT": str(self.health_port),
                "MODELSHIP_LOG_LEVEL": "INFO",
            }
            | env
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelship"], env=self.env, stdout=log, stderr=log, cwd=ROOT
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return str(r.read().decode())

    def healthz(self) -> tuple[int, str]:
        """GET /healthz as the kubelet's liveness probe would (0: not answering yet)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz") as r:
                return int(r.status), str(r.read().decode())
        except urllib.error.HTTPError as e:
            return int(e.code), str(e.read().decode())
        except OSError:
            return 0, ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@pytest.fixture
def start_operator(
    cluster: Any, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(**env: str) -> Operator:
        op = Operator(cluster.kubeconfig, namespace, tmp_path / "operator.log", **env).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
    if started:  # pytest shows captured output only when the test fails
        sys.stderr.write(f"--- operator log ---\n{started[-1].log()}\n")


class Kube:
    """Typed reads and the kubelet's part (finishing builder pods) for the tests."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.policy = client.PolicyV1Api(api)
        self.networking = client.NetworkingV1Api(api)
        self.api = api

    def apply_mdep(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        }
        # As a user would: server-side apply under our own field manager.
        self.api.call_api(
            f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}/{name}",
            "PATCH",
            query_params=[("fieldManager", "test"), ("force", "true")],
            header_params={"Content-Type": "application/apply-patch+yaml"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )

    def mdep(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return result

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        conds = (self.mdep(name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == kind), {})

    def phase(self, name: str) -> str | None:
        return (self.mdep(name).get("status") or {}).get("phase")

    def jobs(self) -> list[Any]:
        return list(self.batch.list_namespaced_job(self.ns).items)

    def get(self, read: Callable[..., T], name: str) -> T | None:
        try:
            return read(name, self.ns)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def builder_pod(self, job: str) -> Any:
        pods = self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={job}").items
        return pods[0] if pods else None

    def finish_build(self, job: str, *, ok: bool, message: str) -> None:
        """What the kubelet would write when the builder container exits."""
        pod = wait_for(lambda: self.builder_pod(job), f"the builder pod of Job {job}")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {
            "exitCode": 0 if ok else 1,
            "reason": "Completed" if ok else "Error",
            "message": message,
            "startedAt": now,
            "finishedAt": now,
        }
        status = {
            "phase": "Succeeded" if ok else "Failed",
            "containerStatuses": [
                {
                    "name": "builder",
                    "image": "modelship-runtime:0.1.0",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": status})
        condition = "Complete" if ok else "Failed"
        wait_for(
            lambda: any(
                c.type == condition and c.status == "True"
                for c in (self.batch.read_namespaced_job(job, self.ns).status.conditions or [])
            ),
            f"the job controller to mark Job {job} {condition}",
        )

    def deployments(self, name: str) -> list[Any]:
        """The revision Deployments of a ModelDeployment, oldest first."""
        items = self.apps.list_namespaced_deployment(
            self.ns, label_selector=f"modelship.io/deployment={name}"
        ).items
        return sorted(items, key=lambda d: d.metadata.creation_timestamp)

    def serving(self, name: str, digest_hex: str | None = None) -> Any:
        """The Deployment of the revision serving ``digest_hex`` (any, when None)."""
        for dep in self.deployments(name):
            digest = dep.spec.template.metadata.annotations["modelship.io/artifact-digest"]
            if digest_hex is None or digest == f"sha256:{digest_hex}":
                return dep
        return None

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        ).items
        return [e.reason for e in items]


@pytest.fixture
def kube(kube_api: client.ApiClient, namespace: str) -> Kube:
    return Kube(kube_api, namespace)


def result_json(hex_: str = "cd" * 32, variant: str = "int8-dynamic") -> str:
    return json.dumps(
        {"digest": f"sha256:{hex_}", "uri": f"file:///artifacts/{hex_}", "variant": variant}
    )


def model_spec(**extra: Any) -> dict[str, Any]:
    return {"model": {"uri": "s3://models/minilm/model.onnx", "sha256": SHA}} | extra


def seed_index(kube: Kube, data: dict[str, str]) -> None:
    """The artifact index as the operator writes it (it trusts only one with its label)."""
    meta = {"name": "modelship-artifacts", "labels": {"app.kubernetes.io/managed-by": "modelship"}}
    kube.core.create_namespaced_config_map(kube.ns, {"metadata": meta, "data": data})


def build_target_of(kube: Kube, spec: dict[str, Any]) -> Any:
    """The build target the operator computes for ``spec`` in the test's namespace."""
    from modelship.api.v1alpha1 import ModelDeploymentSpec
    from modelship.domain.plan import build_target
    from modelship.domain.settings import Settings

    store = Settings(store_pvc="modelship-artifacts").artifact_store().for_namespace(kube.ns)
    return build_target(ModelDeploymentSpec.model_validate(spec), store)


def seed_artifact(kube: Kube) -> str:
    """Index the artifact of ``model_spec()`` where the operator's own build would have put it,
    so a ModelDeployment of it skips the build."""
    target = build_target_of(kube, model_spec())
    digest = target.pinned_digest
    assert digest is not None
    entry = json.dumps({"digest": digest, "uri": target.artifact_uri(digest), "variant": "fp32"})
    seed_index(kube, {target.index_key: entry})
    return str(digest)


def only_job(kube: Kube) -> Any:
    jobs = wait_for(kube.jobs, "a build Job")
    assert len(jobs) == 1, [j.metadata.name for j in jobs]
    return jobs[0]


# --- tests ---------------------------------------------------------------------------------


def test_apply_builds_then_serves_with_the_expected_children(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    op = start_operator()
    kube.apply_mdep("sentiment", model_spec(scaling={"minReplicas": 2, "maxReplicas": 5}))
    job = only_job(kube)
    plan = json.loads(job.spec.template.metadata.annotations["modelship.io/plan"])
    assert plan["source"] == {
        "uri": "s3://models/minilm/model.onnx",
        "format": "onnx",
        "sha256": SHA,
        "allowPickle": False,
    }
    assert plan["store"]["uri"] == f"file:///artifacts/{kube.ns}", "the namespace's own part"
    assert job.spec.template.spec.automount_service_account_token is False
    assert [c.name for c in job.spec.template.spec.init_containers] == ["fetch", "convert"]
    policy = kube.networking.read_namespaced_network_policy("sentiment-build", kube.ns)
    selector = policy.spec.pod_selector.match_labels
    assert selector.items() <= job.spec.template.metadata.labels.items()
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    assert policy.metadata.owner_references[0].kind == "ModelDeployment"
    assert job.spec.template.spec.security_context.run_as_non_root is True
    assert job.metadata.owner_references[0].kind == "ModelDeployment"
    wait_for(lambda: kube.phase("sentiment") == "Building", "phase Building")
    assert kube.condition("sentiment", "ArtifactReady")["reason"] == "Building"

    kube.finish_build(job.metadata.name, ok=True, message=result_json())
    dep = wait_for(lambda: kube.serving("sentiment"), "Deployment")
    revision = dep.metadata.labels["modelship.io/revision"]
    assert dep.metadata.name == f"sentiment-{revision}"
    assert dep.spec.selector.match_labels["modelship.io/revision"] == revision
    svc = wait_for(lambda: kube.get(kube.core.read_namespaced_service, "sentiment"), "Service")
    for role in ("stable", "canary"):
        other = wait_for(
            lambda r=role: kube.get(kube.core.read_namespaced_service, f"sentiment-{r}"),
            f"Service sentiment-{role}",
        )
        assert other.spec.selector["modelship.io/revision"] == revision
    assert "modelship.io/revision" not in svc.spec.selector, "clients reach every revision"
    hpa = wait_for(
        lambda: kube.get(kube.autoscaling.read_namespaced_horizontal_pod_autoscaler, "sentiment"),
        "HPA",
    )
    pdb = wait_for(
        lambda: kube.get(kube.policy.read_namespaced_pod_disruption_budget, "sentiment"), "PDB"
    )
    uid = kube.mdep("sentiment")["metadata"]["uid"]
    for obj in (dep, svc, hpa, pdb):
        assert [(r.kind, r.uid, r.controller) for r in obj.metadata.owner_references] == [
            ("ModelDeployment", uid, True)
        ]
        assert {m.manager for m in obj.metadata.managed_fields if m.operation == "Apply"} == {
            "modelship"
        }
    assert dep.spec.replicas == 2
    pod = dep.spec.template.spec
    server = pod.containers[0]
    model = next(m for m in server.volume_mounts if m.name == "model")
    mounted = (model.mount_path, model.sub_path, model.read_only)
    assert mounted == (str(MODEL_DIR), "cd" * 32, True)
    assert server.readiness_probe.http_get.path == "/v2/health/ready"
    assert server.liveness_probe.http_get.path == "/v2/health/live"
    assert server.security_context.read_only_root_filesystem is True
    assert server.security_context.capabilities.drop == ["ALL"]
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod.termination_grace_period_seconds == 30
    assert sorted(p.port for p in svc.spec.ports) == [8080, 8081, 9090]
    assert hpa.spec.scale_target_ref.kind == "ModelDeployment"
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert pdb.spec.max_unavailable == 1

    wait_for(lambda: kube.phase("sentiment") == "Deploying", "phase Deploying")
    status = kube.mdep("sentiment")["status"]
    assert status["artifact"] == {
        "digest": f"sha256:{'cd' * 32}",
        "uri": f"file:///artifacts/{'cd' * 32}",
        "variant": "int8-dynamic",
    }
    assert (
        status["selector"] == "app.kubernetes.io/component=server,modelship.io/deployment=sentiment"
    )
    assert kube.condition("sentiment", "ArtifactReady")["status"] == "True"
    assert status["stable"]["revision"] == revision
    assert "canary" not in status, "the first revision is deployed directly"
    assert "kopf" not in (kube.mdep("sentiment")["metadata"].get("annotations") or {})
    index = kube.core.read_namespaced_config_map("modelship-artifacts", kube.ns)
    assert f"sha256-{'cd' * 32}" in index.data
    events = wait_for(
        lambda: (
            {"BuildStarted", "BuildSucceeded"} <= set(kube.events("sentiment"))
            and kube.events("sentiment")
        ),
        "build events",
    )
    assert "Deploying" in events
    metrics = op.metrics()
    assert 'modelship_operator_builds_total{outcome="succeeded"} 1.0' in metrics
    assert 'modelship_operator_objects{phase="Deploying"} 1.0' in metrics
    assert "modelship_operator_reconcile_duration_seconds_count" in metrics


def test_build_failure_is_degraded_with_the_builders_reason(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    start_operator()
    kube.apply_mdep("broken", model_spec())
    job = only_job(kube)
    kube.finish_build(
        job.metadata.name,
        ok=False,
        message=json.dumps({"error": "sha256 of the fetched model is 12ab, spec says abab"}),
    )
    wait_for(lambda: kube.phase("broken") == "Degraded", "phase Degraded")
    degraded = kube.condition("broken", "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "BuildFailed"
    assert "BackoffLimitExceeded" in degraded["message"]
    assert "sha256 of the fetched model is 12ab" in degraded["message"]
    assert kube.condition("broken", "Ready")["status"] == "False"
    wait_for(lambda: "BuildFailed" in kube.events("broken"), "a BuildFailed event")
    assert len(kube.jobs()) == 1, "a failed build must not be retried by a new Job"
    assert kube.deployments("broken") == []


def test_digest_already_in_the_store_creates_no_job(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    digest = seed_artifact(kube)
    start_operator()
    kube.apply_mdep("cached", model_spec())
    dep = wait_for(lambda: kube.serving("cached"), "Deployment")
    assert dep.spec.template.metadata.annotations["modelship.io/artifact-digest"] == digest
    assert kube.jobs() == []
    wait_for(  # the status is written after the children, in the same reconcile
        lambda: kube.condition("cached", "ArtifactReady").get("status") == "True",
        "ArtifactReady",
    )


def test_two_model_deployments_of_one_model_share_one_job(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    start_operator()
    kube.apply_mdep("a", model_spec())
    kube.apply_mdep("b", model_spec(scaling={"maxReplicas": 7}))
    job = only_job(kube)
    wait_for(
        lambda: (
            len(
                kube.batch.read_namespaced_job(job.metadata.name, kube.ns).metadata.owner_references
            )
            == 2
        ),
        "both ModelDeployments to own the shared Job",
    )
    kube.finish_build(job.metadata.name, ok=True, message=result_json())
    for name in ("a", "b"):
        wait_for(lambda n=name: kube.serving(n), f"Deployment {name}")
    assert len(kube.jobs()) == 1


def test_delete_garbage_collects_the_children(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    start_operator()
    kube.apply_mdep("gone", model_spec(scaling={"minReplicas": 2, "maxReplicas": 3}))
    job = only_job(kube)
    kube.finish_build(job.metadata.name, ok=True, message=result_json())
    wait_for(lambda: kube.get(kube.policy.read_namespaced_pod_disruption_budget, "gone"), "PDB")
    assert not kube.mdep("gone")["metadata"].get("finalizers"), "no finalizer is needed"
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, kube.ns, PLURAL, "gone")
    wait_for(lambda: not kube.deployments("gone"), "GC of the revision Deployments")
    for svc in ("gone", "gone-stable", "gone-canary"):
        wait_for(
            lambda n=svc: kube.get(kube.core.read_namespaced_service, n) is None, f"GC of {svc}"
        )
    reads = (
        kube.autoscaling.read_namespaced_horizontal_pod_autoscaler,
        kube.policy.read_namespaced_pod_disruption_budget,
    )
    for read in reads:
        wait_for(lambda r=read: kube.get(r, "gone") is None, f"GC of {read.__name__}")
    wait_for(lambda: not kube.jobs(), "GC of the build Job")


def test_spec_changes_update_what_they_touch_and_a_new_digest_starts_a_canary(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    start_operator()
    kube.apply_mdep("up", model_spec())
    first = only_job(kube)
    kube.finish_build(first.metadata.name, ok=True, message=result_json("11" * 32))
    dep = wait_for(lambda: kube.serving("up"), "Deployment")
    wait_for(
        lambda: kube.mdep("up").get("status", {}).get("observedGeneration") == 1, "generation 1"
    )

    def hpa_max_replicas() -> int | None:
        hpa = kube.get(kube.autoscaling.read_namespaced_horizontal_pod_autoscaler, "up")
        return None if hpa is None else int(hpa.spec.max_replicas)

    kube.apply_mdep("up", model_spec(scaling={"maxReplicas": 9}))
    wait_for(lambda: hpa_max_replicas() == 9, "the HPA to follow maxReplicas")
    wait_for(
        lambda: kube.mdep("up").get("status", {}).get("observedGeneration") == 2, "generation 2"
    )
    after = kube.apps.read_namespaced_deployment(dep.metadata.name, kube.ns)
    assert after.metadata.generation == dep.metadata.generation, (
        "maxReplicas must not touch the Deployment"
    )
    assert len(kube.jobs()) == 1

    kube.apply_mdep(
        "up", model_spec(scaling={"maxReplicas": 9}, optimization={"precision": "fp16"})
    )
    jobs = wait_for(lambda: len(kube.jobs()) == 2 and kube.jobs(), "a second build Job")
    second = next(j for j in jobs if j.metadata.name != first.metadata.name)
    wait_for(lambda: kube.phase("up") == "Building", "phase Building")
    assert [d.metadata.name for d in kube.deployments("up")] == [dep.metadata.name]
    kube.finish_build(second.metadata.name, ok=True, message=result_json("22" * 32, "fp16"))
    canary = wait_for(lambda: kube.serving("up", "22" * 32), "the canary revision's Deployment")
    assert canary.metadata.name != dep.metadata.name
    assert canary.spec.replicas == 1, "the canary has at least one pod"
    stable = kube.apps.read_namespaced_deployment(dep.metadata.name, kube.ns)
    assert stable.metadata.generation == dep.metadata.generation, (
        "the stable revision's Deployment is not touched"
    )
    status = wait_for(
        lambda: (s := kube.mdep("up").get("status", {})).get("canary") and s, "status.canary"
    )
    assert status["phase"] == "Progressing"
    assert status["canary"]["revision"] == canary.metadata.labels["modelship.io/revision"]
    assert status["canary"]["desiredWeight"] == 10
    assert status["stable"]["revision"] == dep.metadata.labels["modelship.io/revision"]
    canary_svc = kube.core.read_namespaced_service("up-canary", kube.ns)
    assert canary_svc.spec.selector["modelship.io/revision"] == status["canary"]["revision"]
    wait_for(lambda: "CanaryStarted" in kube.events("up"), "a CanaryStarted event")
    wait_for(
        lambda: kube.mdep("up").get("status", {}).get("observedGeneration") == 3, "generation 3"
    )


def test_crash_looping_pod_degrades_and_recovery_clears_it(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    start_operator()
    kube.apply_mdep("sick", model_spec())
    job = only_job(kube)
    kube.finish_build(job.metadata.name, ok=True, message=result_json())
    pod = wait_for(
        lambda: (
            kube.core.list_namespaced_pod(
                kube.ns, label_selector="modelship.io/deployment=sick"
            ).items
        ),
        "a serving pod",
    )[0]
    crash = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "server",
                "image": "modelship-runtime:0.1.0",
                "imageID": "",
                "ready": False,
                "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "OOMKilled",
                        "startedAt": "2025-01-01T00:00:00Z",
                        "finishedAt": "2025-01-01T00:00:01Z",
                    }
                },
            }
        ],
    }
    kube.core.patch_namespaced_pod_status(pod.metadata.name, kube.ns, {"status": crash})
    wait_for(lambda: kube.phase("sick") == "Degraded", "phase Degraded")
    degraded = kube.condition("sick", "Degraded")
    assert degraded["reason"] == "OOMKilled"
    assert pod.metadata.name in degraded["message"]
    wait_for(lambda: "OOMKilled" in kube.events("sick"), "an OOMKilled event")
    kube.core.delete_namespaced_pod(pod.metadata.name, kube.ns, grace_period_seconds=0)
    wait_for(lambda: kube.phase("sick") != "Degraded", "recovery from Degraded")
    assert kube.condition("sick", "Degraded")["status"] == "False"


def reconciled_once(op: Operator) -> bool:
    """The (new) operator process finished at least one reconcile."""
    try:
        text = op.metrics()
    except OSError:
        return False
    line = next(
        (
            x
            for x in text.splitlines()
            if x.startswith('modelship_operator_reconciles_total{outcome="ok"}')
        ),
        "",
    )
    return bool(line) and float(line.split()[-1]) >= 1


def test_killed_at_each_phase_converges_without_duplicates_and_status_never_lies(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    spec = model_spec(scaling={"minReplicas": 2, "maxReplicas": 3})
    kube.apply_mdep("r", spec)  # before any operator runs: Pending, no status at all
    op = start_operator()
    job = only_job(kube)
    wait_for(lambda: kube.phase("r") == "Building", "phase Building")

    op.kill()  # killed while building
    op = start_operator()
    wait_for(lambda: reconciled_once(op), "a reconcile by the restarted operator")
    assert [j.metadata.name for j in kube.jobs()] == [job.metadata.name]

    op.kill()  # the build finishes while no operator runs
    kube.finish_build(job.metadata.name, ok=True, message=result_json())
    assert kube.phase("r") == "Building", "nobody has observed the build yet"
    op = start_operator()
    dep = wait_for(lambda: kube.serving("r"), "Deployment")
    wait_for(lambda: kube.get(kube.policy.read_namespaced_pod_disruption_budget, "r"), "PDB")
    wait_for(lambda: kube.phase("r") == "Deploying", "phase Deploying")

    op.kill()  # killed while deploying, then the spec changes with nobody watching
    generation = kube.mdep("r")["metadata"]["generation"]
    kube.apply_mdep("r", model_spec(scaling={"minReplicas": 2, "maxReplicas": 4}))
    changed = kube.mdep("r")
    assert changed["metadata"]["generation"] == generation + 1
    assert changed["status"]["observedGeneration"] == generation, "status must not claim it"
    op = start_operator()
    wait_for(
        lambda: kube.mdep("r").get("status", {}).get("observedGeneration") == generation + 1,
        "observedGeneration to catch up",
    )
    hpa = kube.autoscaling.read_namespaced_horizontal_pod_autoscaler("r", kube.ns)
    assert hpa.spec.max_replicas == 4
    after = kube.apps.read_namespaced_deployment(dep.metadata.name, kube.ns)
    assert after.metadata.generation == dep.metadata.generation, "no rollout from a restart"
    assert len(kube.apps.list_namespaced_replica_set(kube.ns).items) == 1
    assert len(kube.apps.list_namespaced_deployment(kube.ns).items) == 1
    assert len(kube.core.list_namespaced_service(kube.ns).items) == 3
    assert len(kube.autoscaling.list_namespaced_horizontal_pod_autoscaler(kube.ns).items) == 1
    assert len(kube.policy.list_namespaced_pod_disruption_budget(kube.ns).items) == 1
    assert len(kube.jobs()) == 1


def test_an_unschedulable_builder_pod_is_reported_in_the_status(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    start_operator()
    kube.apply_mdep("stuck", model_spec())
    job = only_job(kube)
    pod = wait_for(lambda: kube.builder_pod(job.metadata.name), "the builder pod")
    # What the scheduler writes when no node fits the builder's requests.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
        "lastTransitionTime": now,
    }
    kube.core.patch_namespaced_pod_status(
        pod.metadata.name, kube.ns, {"status": {"phase": "Pending", "conditions": [unschedulable]}}
    )
    ready = wait_for(
        lambda: (c := kube.condition("stuck", "Ready")).get("reason") == "BuildUnschedulable" and c,
        "the status to say the build cannot be scheduled",
    )
    assert "Insufficient cpu" in ready["message"]
    assert kube.phase("stuck") == "Building"
    wait_for(lambda: "BuildUnschedulable" in kube.events("stuck"), "a Warning event")


def test_objects_of_our_names_that_we_do_not_own_are_reported_and_left_alone(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    seed_artifact(kube)
    theirs = kube.core.create_namespaced_service(
        kube.ns,
        {
            "metadata": {"name": "taken", "labels": {"team": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
    )
    start_operator()
    kube.apply_mdep("taken", model_spec())
    degraded = wait_for(
        lambda: (c := kube.condition("taken", "Degraded")).get("reason") == "NameConflict" and c,
        "a NameConflict condition",
    )
    assert degraded["status"] == "True"
    assert f"Service {kube.ns}/taken already exists and is not owned" in degraded["message"]
    assert "delete that Service, or give the ModelDeployment another name" in degraded["message"]
    assert kube.phase("taken") == "Degraded"
    wait_for(lambda: "NameConflict" in kube.events("taken"), "a NameConflict Event")
    now = kube.core.read_namespaced_service("taken", kube.ns)
    assert now.metadata.resource_version == theirs.metadata.resource_version, "untouched"
    assert now.metadata.owner_references is None
    assert now.spec.selector == {"app": "web"}
    assert kube.deployments("taken") == [], "no serving child while a name is taken"
    read_hpa = kube.autoscaling.read_namespaced_horizontal_pod_autoscaler
    assert kube.get(read_hpa, "taken") is None

    # Its owner removes it: the operator creates its own (within its backoff) and serves.
    kube.core.delete_namespaced_service("taken", kube.ns)
    wait_for(lambda: kube.serving("taken"), "the Deployment once the name is free", timeout=60)
    svc = wait_for(lambda: kube.get(kube.core.read_namespaced_service, "taken"), "our Service")
    assert svc.metadata.owner_references[0].kind == "ModelDeployment"
    wait_for(
        lambda: kube.condition("taken", "Degraded").get("status") == "False",
        "the conflict cleared",
    )


def test_a_job_of_the_build_name_that_is_not_ours_is_never_adopted(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    name = build_target_of(kube, model_spec()).job_name
    container = {"name": "c", "image": "busybox", "command": ["true"]}
    theirs = kube.batch.create_namespaced_job(
        kube.ns,
        {
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
        },
    )
    start_operator()
    kube.apply_mdep("clash", model_spec())
    degraded = wait_for(
        lambda: (c := kube.condition("clash", "Degraded")).get("reason") == "NameConflict" and c,
        "a NameConflict condition",
    )
    assert f"Job {kube.ns}/{name} already exists" in degraded["message"]
    assert "delete that Job" in degraded["message"]
    job = kube.batch.read_namespaced_job(name, kube.ns)
    assert job.metadata.owner_references is None, "never adopted"
    assert job.metadata.resource_version == theirs.metadata.resource_version or (
        job.metadata.labels == theirs.metadata.labels  # the job controller writes its status
    )
    assert [j.metadata.name for j in kube.jobs()] == [name]


def test_a_pickle_is_refused_in_the_status_unless_the_operator_allows_pickles(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    pickled = {"model": {"uri": "s3://models/digits.joblib", "format": "sklearn",
                         "allowPickle": True, "sha256": SHA}}  # fmt: skip
    op = start_operator()
    kube.apply_mdep("pickled", pickled)
    wait_for(lambda: kube.phase("pickled") == "Degraded", "phase Degraded")
    degraded = kube.condition("pickled", "Degraded")
    assert degraded["reason"] == "BuildFailed"
    assert "MODELSHIP_ALLOW_PICKLE" in degraded["message"]
    assert kube.jobs() == [], "nothing is unpickled"
    op.stop()
    start_operator(MODELSHIP_ALLOW_PICKLE="true")
    job = only_job(kube)
    convert = job.spec.template.spec.init_containers[1]
    assert convert.name == "convert"
    assert not [e for e in convert.env if e.value_from is not None], "no credentials"


def test_an_index_entry_of_another_namespaces_artifact_is_built_again(
    kube: Kube, start_operator: Callable[..., Operator]
) -> None:
    """A user of this namespace may write the index: naming another namespace's artifact there
    gets a build of this namespace's own (which must fetch the source), never that artifact."""
    target = build_target_of(kube, model_spec())
    digest = target.pinned_digest
    foreign = json.dumps({"digest": digest, "uri": f"file:///artifacts/other-team/{digest[7:]}"})
    seed_index(kube, {target.index_key: foreign})
    start_operator()
    kube.apply_mdep("borrowed", model_spec())
    job = only_job(kube)
    plan = json.loads(job.spec.template.metadata.annotations["modelship.io/plan"])
    assert plan["store"]["uri"] == f"file:///artifacts/{kube.ns}"
    assert kube.deployments("borrowed") == []

