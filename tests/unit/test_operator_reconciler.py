"""The reconciler against an in-memory API server: objects it does not own are never touched,
and every refused request reaches the status (a condition and a Warning Event with the API
server's message and what to do), without being sent again in a loop."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import artifact_index, desired, naming
from modelship.domain.observation import Artifact
from modelship.domain.plan import build_target
from modelship.domain.settings import Settings
from modelship.kube import KubeError
from modelship.metrics import OperatorMetrics
from modelship.reconciler import Reconciler

NS, NAME, UID = "ml", "m", "uid-1"
SHA = "ab" * 32
OURS = {naming.LABEL_MANAGED_BY: naming.MANAGER}
Key = tuple[str, str, str]


def api_error(status: int, message: str, reason: str = "") -> ApiException:
    error = ApiException(status=status, reason=reason or "Error")
    error.body = json.dumps({"kind": "Status", "message": message, "reason": reason})
    return error


class FakeKube:
    """The handful of calls the reconciler makes, on plain dicts; ``fail`` makes a verb on a
    kind answer with an API error, as a real API server would."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.fail: dict[tuple[str, str], ApiException] = {}
        self.events: list[tuple[str, str, str]] = []
        self.status: dict[str, Any] | None = None

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace", NS), meta["name"])] = obj
        return obj

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] not in ("get", "list")]

    def _call(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        error = self.fail.get((verb, kind))
        if error is not None:
            raise KubeError(f"{verb} {kind} {NS}/{name}", error)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get", kind, name)
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        self._call("list", kind, "")
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind
            and ns == namespace
            and selector.items() <= ((o["metadata"].get("labels") or {}).items())
        ]

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._call("apply", obj["kind"], obj["metadata"]["name"])
        return self.put(copy.deepcopy(obj))

    def create(self, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        self._call("create", obj["kind"], meta["name"])
        if (obj["kind"], meta["namespace"], meta["name"]) in self.objects:
            return False
        self.put(copy.deepcopy(obj))
        return True

    def add_owner(self, kind: str, namespace: str, name: str, reference: dict[str, Any]) -> None:
        self._call("patch", kind, name)

    def merge_data(self, namespace: str, name: str, data: dict[str, str | None]) -> None:
        self._call("patch", "ConfigMap", name)
        cm = self.objects.setdefault(
            ("ConfigMap", namespace, name),
            {"kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace,
                                               "labels": OURS}},
        )  # fmt: skip
        stored = cm.setdefault("data", {})
        for key, value in data.items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value

    def scale(self, namespace: str, name: str, replicas: int, annotations: Any) -> None:
        self._call("scale", "Deployment", name)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._call("delete", kind, name)
        self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call("patch", "status", name)
        self.status = status

    def post_event(self, owner: Any, type_: str, reason: str, message: str, component: str) -> None:
        self.events.append((type_, reason, message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = Settings(poll_seconds=10, resync_seconds=300)


def model(**extra: Any) -> dict[str, Any]:
    return {"model": {"uri": "s3://models/m.onnx", "sha256": SHA}} | extra


def body(spec: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": generation},
        "spec": spec or model(),
    }


def target(spec: dict[str, Any] | None = None) -> Any:
    return build_target(
        ModelDeploymentSpec.model_validate(spec or model()), SETTINGS.artifact_store()
    )


ART = Artifact(f"sha256:{'cd' * 32}", f"file:///artifacts/{NS}/{'cd' * 32}", "fp32")


def seed_index(kube: FakeKube, artifact: Artifact = ART, labels: dict[str, str] = OURS) -> None:
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": naming.INDEX_CONFIGMAP, "namespace": NS, "labels": labels},
            "data": {target().index_key: artifact.to_json()},
        }
    )


def world() -> tuple[FakeKube, Clock, Reconciler]:
    kube, clock = FakeKube(), Clock()
    reconciler = Reconciler(kube, SETTINGS, OperatorMetrics(), clock=clock)  # type: ignore[arg-type]
    return kube, clock, reconciler


def condition(kube: FakeKube, kind: str) -> dict[str, Any]:
    assert kube.status is not None
    return next(c for c in kube.status["conditions"] if c["type"] == kind)


def foreign(kind: str, name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": "7",
            "managedFields": [{"manager": "kubectl-create", "operation": "Update"}],
        }
        | meta,
        "spec": {"hand": "made"},
    }


# --- ownership -----------------------------------------------------------------------------


def test_a_foreign_service_of_our_name_is_reported_and_nothing_is_written() -> None:
    kube, clock, reconciler = world()
    seed_index(kube)
    theirs = kube.put(foreign("Service", NAME))
    before = copy.deepcopy(theirs)
    outcome = reconciler.reconcile(body())
    assert kube.objects[("Service", NS, NAME)] == before, "the foreign Service is untouched"
    assert [c for c in kube.writes() if c[1] != "status"] == [], (
        "no serving child is written while one of their names is taken"
    )
    degraded = condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "NameConflict")
    assert "Service ml/m already exists and is not owned by this ModelDeployment" in (
        degraded["message"]
    )
    assert "no owner, written by kubectl-create" in degraded["message"]
    assert "delete that Service, or give the ModelDeployment another name" in degraded["message"]
    assert kube.status is not None
    assert kube.status["phase"] == "Degraded"
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "NameConflict")]
    assert outcome.phase.value == "Degraded"

    # Still there: not looked at again before the backoff is due, and not said twice.
    seen = len(kube.calls)
    reconciler.reconcile(body())
    assert ("get", "Service", NAME) not in kube.calls[seen:]
    assert len(kube.events) == 1
    # Removed by its owner: the next attempt after the backoff creates ours.
    del kube.objects[("Service", NS, NAME)]
    clock.now += SETTINGS.poll_seconds + 1
    reconciler.reconcile(body())
    svc = kube.objects[("Service", NS, NAME)]
    assert svc["metadata"]["ownerReferences"][0]["uid"] == UID
    assert kube.status["phase"] == "Deploying"


def test_a_service_owned_by_another_controller_names_it() -> None:
    kube, _, reconciler = world()
    seed_index(kube)
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u2",
           "controller": True}  # fmt: skip
    kube.put(foreign("Service", f"{NAME}-canary", ownerReferences=[ref]))
    reconciler.reconcile(body())
    assert "its controller is Deployment/web" in condition(kube, "Degraded")["message"]
    assert not [c for c in kube.writes() if c[0] == "apply"]


def test_a_foreign_deployment_with_a_revision_name_is_not_taken_over() -> None:
    clean, _, reconciler = world()
    seed_index(clean)
    reconciler.reconcile(body())
    (revision,) = [n for verb, kind, n in clean.writes() if (verb, kind) == ("apply",
                   "Deployment")]  # fmt: skip
    kube, _, reconciler = world()
    seed_index(kube)
    kube.put(foreign("Deployment", revision))
    reconciler.reconcile(body())
    assert condition(kube, "Degraded")["reason"] == "NameConflict"
    assert f"Deployment ml/{revision} already exists" in condition(kube, "Degraded")["message"]
    assert kube.objects[("Deployment", NS, revision)]["spec"] == {"hand": "made"}
    assert not [c for c in kube.writes() if c[1] != "status"]


def test_a_deployment_with_our_labels_but_another_controller_is_never_scaled_or_deleted() -> None:
    kube, _, reconciler = world()
    seed_index(kube)
    labels = {naming.LABEL_DEPLOYMENT: NAME, naming.LABEL_REVISION: "0000000000"}
    ref = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "name": NAME,
           "uid": "another-uid", "controller": True}  # fmt: skip
    kube.put(foreign("Deployment", f"{NAME}-0000000000", labels=labels, ownerReferences=[ref]))
    reconciler.reconcile(body())
    assert not [c for c in kube.writes() if c[2] == f"{NAME}-0000000000"]
    assert kube.status is not None
    assert kube.status["phase"] == "Deploying"


def test_a_foreign_pdb_we_do_not_want_is_left_alone() -> None:
    kube, _, reconciler = world()
    seed_index(kube)
    kube.put(foreign("PodDisruptionBudget", NAME))
    reconciler.reconcile(body())  # minReplicas 1: no PDB of ours should exist
    assert ("PodDisruptionBudget", NS, NAME) in kube.objects
    assert not [c for c in kube.writes() if c[1] == "PodDisruptionBudget"]
    assert kube.status is not None
    assert kube.status["phase"] == "Deploying"


def test_a_foreign_job_of_the_build_name_is_neither_adopted_nor_replaced() -> None:
    kube, _, reconciler = world()
    job = kube.put(foreign("Job", target().job_name))
    reconciler.reconcile(body())
    assert kube.objects[("Job", NS, target().job_name)] == job
    assert not [c for c in kube.writes() if c[1] == "Job"], "no create, no added owner"
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "NameConflict"
    assert f"Job ml/{target().job_name} already exists" in degraded["message"]
    assert "delete that Job" in degraded["message"]


def test_a_foreign_network_policy_of_the_builds_name_stops_the_build() -> None:
    kube, _, reconciler = world()
    name = naming.build_policy_name(NAME)
    theirs = kube.put(foreign("NetworkPolicy", name))
    reconciler.reconcile(body())
    assert kube.objects[("NetworkPolicy", NS, name)] == theirs
    assert not [c for c in kube.writes() if c[1] in ("NetworkPolicy", "Job")], (
        "no build pod without the policy that bounds it"
    )
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "NameConflict"
    assert f"NetworkPolicy ml/{name} already exists" in degraded["message"]


def test_a_foreign_index_configmap_is_neither_trusted_nor_written() -> None:
    kube, _, reconciler = world()
    seed_index(kube, labels={})
    before = copy.deepcopy(kube.objects[("ConfigMap", NS, naming.INDEX_CONFIGMAP)])
    reconciler.reconcile(body())
    assert kube.objects[("ConfigMap", NS, naming.INDEX_CONFIGMAP)] == before
    assert not [c for c in kube.writes() if c[1] in ("ConfigMap", "Deployment")], (
        "its entry is not trusted: nothing is served from it"
    )
    assert ("create", "Job", target().job_name) in kube.writes(), "the build goes on"
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "NameConflict"
    assert "ConfigMap ml/modelship-artifacts" in degraded["message"]


# --- refused requests ----------------------------------------------------------------------

FORBIDDEN = (
    'horizontalpodautoscalers.autoscaling "m" is forbidden: User "system:serviceaccount:'
    'modelship-system:modelship-operator" cannot patch resource "horizontalpodautoscalers"'
)


def test_a_403_is_a_condition_and_an_event_with_the_api_message_and_is_not_resent() -> None:
    kube, clock, reconciler = world()
    seed_index(kube)
    kube.fail[("apply", "HorizontalPodAutoscaler")] = api_error(403, FORBIDDEN, "Forbidden")
    reconciler.reconcile(body())
    degraded = condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Forbidden")
    assert FORBIDDEN in degraded["message"]
    assert "the operator's RBAC lacks this permission" in degraded["message"]
    assert "retried with backoff, and at once when the spec changes" in degraded["message"]
    assert condition(kube, "Ready")["reason"] == "Forbidden"
    assert [(t, r) for t, r, _ in kube.events][-1] == ("Warning", "Forbidden")
    assert FORBIDDEN in kube.events[-1][2]

    def hpa_attempts() -> int:
        return kube.calls.count(("apply", "HorizontalPodAutoscaler", NAME))

    assert hpa_attempts() == 1
    for _ in range(5):  # watch events, resyncs: nothing is sent again before it is due
        reconciler.reconcile(body())
    assert hpa_attempts() == 1
    clock.now += SETTINGS.poll_seconds + 1
    reconciler.reconcile(body())
    assert hpa_attempts() == 2
    clock.now += SETTINGS.poll_seconds + 1  # the second delay is twice as long
    reconciler.reconcile(body())
    assert hpa_attempts() == 2
    reconciler.reconcile(body(model(scaling={"maxReplicas": 4}), generation=2))
    assert hpa_attempts() == 3, "a new spec is tried at once"
    del kube.fail[("apply", "HorizontalPodAutoscaler")]
    reconciler.reconcile(body(model(scaling={"maxReplicas": 5}), generation=3))
    assert condition(kube, "Degraded")["status"] == "False"


def test_a_422_says_the_api_servers_message_and_what_to_change() -> None:
    kube, _, reconciler = world()
    seed_index(kube)
    message = 'Deployment.apps "m-1" is invalid: spec.template.spec.containers[0].resources'
    kube.fail[("apply", "Deployment")] = api_error(422, message, "Invalid")
    reconciler.reconcile(body())
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "Invalid"
    assert message in degraded["message"]
    assert "change the field it names in the spec" in degraded["message"]


def test_a_quota_and_an_admission_webhook_get_their_own_advice() -> None:
    quota = KubeError("x", api_error(403, 'pods "p" is forbidden: exceeded quota: q', "Forbidden"))
    assert "ResourceQuota" in quota.hint
    hook = KubeError("x", api_error(400, 'admission webhook "v.kyverno" denied the request'))
    assert "admission webhook or policy" in hook.hint


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (403, True), (404, True), (422, True), (409, False), (429, False),
     (408, False), (500, False), (503, False)],
)  # fmt: skip
def test_permanent_errors_are_the_4xx_but_conflicts_and_throttling(
    status: int, permanent: bool
) -> None:
    assert KubeError("x", api_error(status, "m")).permanent is permanent


def test_a_temporary_error_is_raised_for_the_controller_to_retry() -> None:
    kube, _, reconciler = world()
    seed_index(kube)
    kube.fail[("apply", "Service")] = api_error(503, "etcd leader changed", "ServiceUnavailable")
    with pytest.raises(KubeError, match="etcd leader changed"):
        reconciler.reconcile(body())


def _finished_build(kube: FakeKube, result: Artifact) -> None:
    """The target's build Job, complete, and its pod's termination message saying ``result``."""
    t = target()
    owner = naming.Owner(NAME, NS, UID)
    job = desired.build_job(ModelDeploymentSpec.model_validate(model()), t, owner, SETTINGS)
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.put(job)
    terminated = {"message": result.to_json(), "finishedAt": "2026-01-01T00:00:00Z"}
    kube.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": "build-pod",
                "namespace": NS,
                "labels": naming.build_labels(t.key),
            },
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [{"name": "builder", "state": {"terminated": terminated}}],
            },
        }
    )


def test_an_artifact_outside_the_store_is_a_condition_not_a_crash() -> None:
    kube, _, reconciler = world()
    pinned = target().pinned_digest
    assert pinned is not None
    _finished_build(kube, Artifact(pinned, f"file:///elsewhere/{naming.hex_of(pinned)}"))
    reconciler.reconcile(body())
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "ArtifactLocationInvalid"
    assert "not in this namespace's part of the store" in degraded["message"]
    assert not [c for c in kube.writes() if c[1] not in ("status", "ConfigMap")]


def test_an_index_entry_of_another_namespace_is_built_again_here() -> None:
    """The index is the namespace's users' to edit: an artifact it names in another
    namespace's part of the store is never served here; the build fetches the source itself."""
    kube, _, reconciler = world()
    pinned = target().pinned_digest
    assert pinned is not None
    seed_index(kube, Artifact(pinned, f"file:///artifacts/other/{naming.hex_of(pinned)}"))
    reconciler.reconcile(body())
    assert [c for c in kube.writes() if c[1] != "status"] == [
        ("apply", "NetworkPolicy", naming.build_policy_name(NAME)),
        ("create", "Job", target().job_name),
    ], "the build pod's NetworkPolicy first, then the Job; nothing serves yet"
    job = kube.objects[("Job", NS, target().job_name)]
    plan = json.loads(job["spec"]["template"]["metadata"]["annotations"][naming.ANNOTATION_PLAN])
    assert plan["store"]["uri"] == f"file:///artifacts/{NS}"


def test_a_pickle_the_operator_does_not_allow_is_refused_in_the_status() -> None:
    kube, _, reconciler = world()
    pickled = model() | {
        "model": {"uri": "s3://models/m.joblib", "format": "sklearn", "allowPickle": True}
    }
    outcome = reconciler.reconcile(body(pickled))
    assert [c for c in kube.writes() if c[1] != "status"] == [], "no build Job, nothing else"
    degraded = condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "BuildFailed")
    assert "MODELSHIP_ALLOW_PICKLE" in degraded["message"]
    assert outcome.phase.value == "Degraded"


def test_a_refused_read_is_a_condition_and_backs_off() -> None:
    kube, clock, reconciler = world()
    message = 'deployments.apps is forbidden: User "op" cannot list resource "deployments"'
    kube.fail[("list", "Deployment")] = api_error(403, message, "Forbidden")
    outcome = reconciler.reconcile(body())
    assert kube.status is not None
    assert kube.status["phase"] == "Degraded"
    assert message in condition(kube, "Degraded")["message"]
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "Forbidden")]
    assert outcome.requeue_after == pytest.approx(SETTINGS.poll_seconds)
    calls = len(kube.calls)
    reconciler.reconcile(body())
    assert len(kube.calls) == calls, "nothing is read again before the backoff is due"
    clock.now += SETTINGS.poll_seconds + 1
    del kube.fail[("list", "Deployment")]
    seed_index(kube)
    reconciler.reconcile(body())
    assert kube.status["phase"] == "Deploying"


def test_a_refused_status_write_is_an_event_once() -> None:
    kube, _, reconciler = world()
    seed_index(kube)
    kube.fail[("patch", "status")] = api_error(422, "status.phase: Unsupported value", "Invalid")
    for _ in range(3):
        with pytest.raises(KubeError):
            reconciler.reconcile(body())
    rejected = [e for e in kube.events if e[1] == "StatusRejected"]
    assert len(rejected) == 1
    assert "Unsupported value" in rejected[0][2]


# --- the artifact index stays bounded ------------------------------------------------------


def finished_build(kube: FakeKube, result: Artifact) -> None:
    t = target()
    kube.put(
        {
            "kind": "Job",
            "metadata": {
                "name": t.job_name,
                "namespace": NS,
                "labels": OURS,
                "ownerReferences": [{"apiVersion": "modelship.io/v1alpha1",
                                     "kind": "ModelDeployment", "name": NAME, "uid": UID}],
            },
            "status": {"conditions": [{"type": "Complete", "status": "True"}]},
        }
    )
    kube.put(
        {
            "kind": "Pod",
            "metadata": {"name": "builder", "namespace": NS,
                         "labels": {naming.LABEL_BUILD: naming.build_key(t.key)}},
            "status": {"phase": "Succeeded", "containerStatuses": [
                {"name": "builder", "state": {"terminated": {
                    "message": result.to_json(), "finishedAt": "2026-12-01T00:00:00Z"}}}]},
        }
    )


def old_entry(n: int) -> tuple[str, str]:
    art = Artifact(f"sha256:{n:064x}", f"file:///artifacts/{n:064x}")
    value = json.dumps(art.to_status() | {"recordedAt": f"2026-01-{n + 1:02d}T00:00:00Z"})
    return naming.index_key_for_digest(art.digest), value


def test_a_full_index_evicts_the_oldest_records_no_deployment_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(artifact_index, "MAX_KEYS", 4)
    kube, _, reconciler = world()
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": naming.INDEX_CONFIGMAP, "namespace": NS, "labels": OURS},
            "data": dict(old_entry(n) for n in range(4)),
        }
    )
    # The oldest one is still served by another ModelDeployment's Deployment.
    served = Artifact(f"sha256:{0:064x}", f"file:///artifacts/{0:064x}")
    kube.put(
        {
            "kind": "Deployment",
            "metadata": {"name": "other-1", "namespace": NS, "labels": OURS,
                         "annotations": {naming.ANNOTATION_ARTIFACT: served.to_json()}},
        }
    )
    finished_build(kube, ART)
    reconciler.reconcile(body())
    data = kube.objects[("ConfigMap", NS, naming.INDEX_CONFIGMAP)]["data"]
    assert len(data) <= 4
    assert old_entry(0)[0] in data, "an artifact in use is never evicted"
    assert old_entry(1)[0] not in data, "the oldest unused one goes first"
    assert naming.index_key_for_digest(ART.digest) in data
    assert json.loads(data[naming.index_key_for_digest(ART.digest)])["recordedAt"]


def test_an_index_full_of_served_artifacts_is_a_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_index, "MAX_KEYS", 2)
    kube, _, reconciler = world()
    entries = dict(old_entry(n) for n in range(2))
    kube.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": naming.INDEX_CONFIGMAP, "namespace": NS, "labels": OURS},
            "data": entries,
        }
    )
    for n in range(2):
        served = Artifact(f"sha256:{n:064x}", f"file:///artifacts/{n:064x}")
        kube.put(
            {
                "kind": "Deployment",
                "metadata": {"name": f"other-{n}", "namespace": NS, "labels": OURS,
                             "annotations": {naming.ANNOTATION_ARTIFACT: served.to_json()}},
            }
        )
    finished_build(kube, ART)
    reconciler.reconcile(body())
    assert kube.objects[("ConfigMap", NS, naming.INDEX_CONFIGMAP)]["data"] == entries
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "ArtifactIndexFull"
    assert "is full (2 keys)" in degraded["message"]
    assert ("apply", "Deployment") in {(v, k) for v, k, _ in kube.writes()}, "it still serves"


def test_the_api_server_refusing_a_bigger_index_is_a_condition() -> None:
    kube, _, reconciler = world()
    kube.fail[("patch", "ConfigMap")] = api_error(
        422, 'ConfigMap "modelship-artifacts" is invalid: []: Too long: must have at most '
        "1048576 bytes", "Invalid",
    )  # fmt: skip
    finished_build(kube, ART)
    reconciler.reconcile(body())
    degraded = condition(kube, "Degraded")
    assert degraded["reason"] == "ArtifactIndexFull"
    assert "Too long" in degraded["message"]
