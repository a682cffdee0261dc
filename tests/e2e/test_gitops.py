"""GitOps on the real local node: Argo CD syncs ModelDeployments from a Git repository.

Argo CD v3.6.1 (built from its Go module) runs on the node with our health check, actions and
``ignoreDifferences`` merged into ``argocd-cm`` as docs/argocd.md tells users. An Application
tracks ``models/`` of a local Git repository (``file://``, read by Argo CD's repo server) with
automated sync, prune and self-heal. Every step is a ``git commit`` + ``git push``, then
``argocd app get --refresh`` (what a Git webhook does), and each test watches what Argo CD
reports — sync status, health and our message — next to the ModelDeployment itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary_models import BAD_X, GOOD_X
from e2e_models import SMALL, Models
from localkube import Cluster, argocd, stack
from localkube.load import HeyLoad, infer_body, wait_until_serving
from polling import wait_for

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE
APP_NS = argocd.NAMESPACE
INTERVAL_S = 5


@pytest.fixture(scope="module")
def gitops(modelship: Cluster) -> Cluster:
    """Argo CD on the node (started here unless `make cluster-up ARGOCD=1` already runs it)."""
    argocd.start(modelship)
    return modelship


class Git:
    """A bare repository (what Argo CD reads, as a ``file://`` URL) and a clone to commit in."""

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "models.git", root / "work"
        self.url = f"file://{self.bare}"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True)
        subprocess.run(["git", "clone", "-q", str(self.bare), str(self.work)], check=True)
        self.git("config", "user.email", "ci@modelship.io")
        self.git("config", "user.name", "Modelship CI")
        self.git("checkout", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.work), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    def commit(self, message: str, files: dict[str, Any]) -> str:
        """Write ``files`` (path -> YAML object) under models/, commit, push; the new SHA."""
        for path, obj in files.items():
            target = self.work / "models" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(obj, sort_keys=False))
            self.git("add", str(target))
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")

    def revert(self) -> str:
        self.git("revert", "--no-edit", "HEAD")
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


@pytest.fixture(scope="module")
def models(gitops: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(gitops, tmp_path_factory.mktemp("gitops-models"), "gitops")


def manifest(models: Models, name: str, version: str, seed: int, **kind: Any) -> dict[str, Any]:
    """A ModelDeployment as a user keeps it in Git (no spec.replicas: the HPA owns it)."""
    uri, sha = models.get(version, seed, **kind)
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": uri, "sha256": sha},
            "optimization": {
                "precision": "fp32",
                "calibration": {"uri": models.calibration(), "samples": 32},
            },
            "serving": {"resources": SMALL, "grpc": False},
            "scaling": {"minReplicas": 1, "maxReplicas": 3},
            "rollout": {
                "steps": [{"weight": 50}],  # no pause: a person promotes (Suspended)
                "progressDeadline": "8m",
                "scaleDownDelay": "5s",
                "analysis": {
                    "interval": f"{INTERVAL_S}s",
                    "minRequests": 10,
                    "failureLimit": 2,
                    "inconclusiveLimit": 2,
                    "onInconclusive": "promote",
                },
            },
        },
    }


@dataclass
class Seen:
    at: float
    sync: str
    health: str
    message: str
    phase: str
    revision: str


@dataclass
class App:
    """An Argo CD Application of the test repository, and what it reported over time."""

    cluster: Cluster
    name: str
    mdep: str
    seen: list[Seen] = field(default_factory=list)

    def get(self) -> dict[str, Any]:
        out = self.cluster.kubectl("get", "application", self.name, "-n", APP_NS, "-o", "json")
        return dict(json.loads(out.stdout))

    def refresh(self) -> None:
        """What a Git webhook does: tell Argo CD to look at the repository now."""
        argocd.cli(self.cluster, "app", "get", self.name, "--refresh", "-o", "json")

    def resource_health(self) -> dict[str, Any]:
        """Our health check's verdict on the ModelDeployment as Argo CD shows it (the UI reads
        the same resource tree from the API server)."""
        url = f"http://{argocd.server_address(self.cluster)}/api/v1/applications/{self.name}"
        try:
            with urllib.request.urlopen(f"{url}/resource-tree", timeout=10) as response:
                tree = json.load(response)
        except urllib.error.HTTPError:
            return {}  # no tree before the first comparison
        node = next((n for n in tree.get("nodes") or [] if n.get("kind") == "ModelDeployment"), {})
        return dict(node.get("health") or {})

    def observe(self) -> Seen:
        status = self.get().get("status", {})
        resource = {"health": self.resource_health()}
        mdep = self.cluster.kubectl(
            "get", "mdep", self.mdep, "-n", NS, "-o", "jsonpath={.status.phase}", check=False
        ).stdout
        seen = Seen(
            at=time.monotonic(),
            sync=status.get("sync", {}).get("status", ""),
            health=status.get("health", {}).get("status", ""),
            message=resource.get("health", {}).get("message", ""),
            phase=mdep,
            revision=status.get("sync", {}).get("revision", ""),
        )
        last = self.seen[-1] if self.seen else None
        if last is None or (last.sync, last.health, last.message, last.phase) != (
            seen.sync, seen.health, seen.message, seen.phase
        ):  # fmt: skip
            print(f"argocd {self.name}: {seen.sync}/{seen.health} mdep {seen.phase or '-'}: "
                  f"{seen.message}", file=sys.stderr)  # fmt: skip
        self.seen.append(seen)
        return seen

    def until(self, done: Callable[[Seen], bool], what: str, timeout_s: float = 600) -> Seen:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.observe()
            if done(seen):
                return seen
            assert time.monotonic() < deadline, f"{self.name}: not {what}: {self.seen[-5:]}"
            time.sleep(0.5)

    def since(self, start: float) -> list[Seen]:
        return [s for s in self.seen if s.at >= start]

    def drift(self, start: float, sha: str) -> list[Seen]:
        """What Argo CD reported OutOfSync after it had synced commit ``sha`` (seen since
        ``start``): anything here is drift caused by what the cluster wrote. Before that first
        sync, OutOfSync is just Argo CD noticing the new commit."""
        seen = self.since(start)
        first = next((i for i, s in enumerate(seen) if s.revision == sha and s.sync == "Synced"),
                     None)  # fmt: skip
        assert first is not None, f"{self.name} never synced {sha}: {seen[-5:]}"
        return [s for s in seen[first:] if s.sync != "Synced"]


def _application(git: Git, name: str, server_side_diff: bool) -> dict[str, Any]:
    annotations = {"argocd.argoproj.io/compare-options": "ServerSideDiff=true"}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": APP_NS,
            "finalizers": ["resources-finalizer.argocd.argoproj.io"],
            "annotations": annotations if server_side_diff else {},
        },
        "spec": {
            "project": "default",
            "source": {"repoURL": git.url, "targetRevision": "main", "path": "models"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": NS},
            "syncPolicy": {
                "automated": {"prune": True, "selfHeal": True},
                "syncOptions": ["RespectIgnoreDifferences=true"],
            },
        },
    }


@pytest.fixture
def app_factory(
    gitops: Cluster, tmp_path: Path
) -> Iterator[Callable[[str, dict[str, Any], bool], tuple[App, Git]]]:
    """An Application over a fresh repository whose first commit holds ``first``; the
    Application is deleted with cascade at the end, whatever the test did."""
    made: list[App] = []

    def make(name: str, first: dict[str, Any], server_side_diff: bool = False) -> tuple[App, Git]:
        git = Git(tmp_path / name)
        git.commit(f"{name}: first version", {"model.yaml": first})
        stack.apply(gitops, APP_NS, _application(git, name, server_side_diff))
        app = App(gitops, name, first["metadata"]["name"])
        made.append(app)
        return app, git

    yield make
    for app in made:
        gitops.kubectl("delete", "application", app.name, "-n", APP_NS, "--ignore-not-found",
                       "--wait=true", timeout=300)  # fmt: skip
        gitops.kubectl("delete", "mdep", app.mdep, "-n", NS, "--ignore-not-found",
                       "--wait=true", timeout=180)  # fmt: skip


def _healthy_and_synced(seen: Seen) -> bool:
    return seen.sync == "Synced" and seen.health == "Healthy"


def _jobs(cluster: Cluster, mdep: str) -> set[str]:
    out = cluster.kubectl("get", "jobs", "-n", NS, "-o", "json").stdout
    return {
        j["metadata"]["name"]
        for j in json.loads(out)["items"]
        if any(o.get("name") == mdep for o in j["metadata"].get("ownerReferences", []))
    }


def _url(cluster: Cluster, name: str) -> str:
    url = f"{stack.service_url(cluster, NS, name)}/v2/models/{name}/infer"
    wait_until_serving(url, infer_body(GOOD_X))
    return url


@pytest.mark.parametrize("diff", ["default", "server-side"])
def test_argocd_syncs_builds_and_serves_and_stays_synced_while_the_operator_and_hpa_write(
    app_factory: Callable[..., tuple[App, Git]], models: Models, diff: str
) -> None:
    name = f"gitops-sync-{'ssd' if diff == 'server-side' else 'default'}"
    pushed = time.monotonic()
    app, git = app_factory(name, manifest(models, name, "v1", seed=21), diff == "server-side")
    app.until(_healthy_and_synced, "Healthy", 900)
    built = "built here" if _jobs(app.cluster, name) else "cached artifact"
    print(f"{name} ({diff} diff): push to Healthy {time.monotonic() - pushed:.1f}s ({built})",
          file=sys.stderr)  # fmt: skip
    sha = git.git("rev-parse", "HEAD")
    assert app.drift(pushed, sha) == []
    phases = {s.phase for s in app.since(pushed) if s.health == "Progressing"}
    assert phases & {"Pending", "Building", "Deploying"}, app.seen
    ready = stack.condition(stack.get_mdep(app.cluster, NS, name), "Ready")
    assert app.seen[-1].message == ready["message"], "Argo CD shows our Ready message"

    # The HPA's way of writing: the scale subresource sets spec.replicas.
    app.cluster.kubectl("scale", "mdep", name, "-n", NS, "--replicas=2")
    scaled = time.monotonic()
    stack.wait_for(app.cluster, NS, name,
                   lambda o: o["status"].get("readyReplicas") == 2 and stack.is_ready(o),
                   "serving on 2 pods", 300)  # fmt: skip
    app.refresh()
    app.until(_healthy_and_synced, "Healthy after the scale", 120)
    assert app.drift(scaled, sha) == []
    spec = stack.get_mdep(app.cluster, NS, name)["spec"]
    assert spec["replicas"] == 2, "a sync must never reset what the autoscaler chose"


def test_a_commit_starts_a_canary_that_waits_suspended_and_promote_through_argocd_completes_it(
    app_factory: Callable[..., tuple[App, Git]], models: Models
) -> None:
    name = "gitops-canary"
    app, git = app_factory(name, manifest(models, name, "v1", seed=21))
    app.until(_healthy_and_synced, "Healthy", 900)
    url = _url(app.cluster, name)
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20, duration_s=600):
        committed = time.monotonic()
        sha = git.commit(f"{name}: v2", {"model.yaml": manifest(models, name, "v2", seed=22)})
        app.refresh()
        suspended = app.until(lambda s: s.health == "Suspended", "Suspended", 600)
        assert "waits for promotion" in suspended.message, suspended
        assert "promote" in suspended.message
        release = app.since(committed)
        assert any(s.health == "Progressing" for s in release), release
        listed = argocd.cli(app.cluster, "app", "actions", "list", name,
                            "--kind", "ModelDeployment")  # fmt: skip
        assert "promote" in listed
        argocd.cli(app.cluster, "app", "actions", "run", name, "promote", "--kind",
                   "ModelDeployment", "--group", "modelship.io", "--resource-name", name,
                   "--namespace", NS)  # fmt: skip
        app.until(_healthy_and_synced, "Healthy after promote", 600)
    obj = stack.get_mdep(app.cluster, NS, name)
    assert obj["status"]["canary"]["phase"] == "Succeeded"
    assert obj["status"]["stable"]["revision"] == obj["status"]["canary"]["revision"]
    assert app.drift(committed, sha) == [], "the build, the canary and the promote never drift"


def test_a_bad_version_rolls_back_degraded_and_git_revert_returns_without_a_rebuild(
    app_factory: Callable[..., tuple[App, Git]], models: Models
) -> None:
    name = "gitops-revert"
    app, git = app_factory(name, manifest(models, name, "v1", seed=21))
    app.until(_healthy_and_synced, "Healthy", 900)
    stable = stack.get_mdep(app.cluster, NS, name)["status"]["stable"]
    url = _url(app.cluster, name)
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=600), HeyLoad(url, infer_body(BAD_X), concurrency=1,
                                          qps_per_worker=20, duration_s=600):  # fmt: skip
        bad = manifest(models, name, "broken", seed=23, fails_on_positive=True)
        committed = time.monotonic()
        sha = git.commit(f"{name}: a version that fails on part of the inputs", {"model.yaml": bad})
        app.refresh()
        degraded = app.until(lambda s: s.health == "Degraded", "Degraded", 600)
    assert "success rate" in degraded.message, degraded
    assert app.drift(committed, sha) == [], "the rollback does not drift either"
    jobs = _jobs(app.cluster, name)

    reverted = time.monotonic()
    git.revert()
    app.refresh()
    app.until(_healthy_and_synced, "Healthy after git revert", 300)
    print(f"{name}: git revert to Healthy {time.monotonic() - reverted:.1f}s (cached artifact)",
          file=sys.stderr)  # fmt: skip
    obj = stack.get_mdep(app.cluster, NS, name)
    assert obj["status"]["stable"]["revision"] == stable["revision"]
    assert obj["status"]["stable"].get("artifactDigest") == stable.get("artifactDigest")
    assert _jobs(app.cluster, name) - jobs == set(), "the stable artifact is reused, not rebuilt"


def test_a_hand_edit_is_reverted_by_self_heal_and_the_operator_follows(
    app_factory: Callable[..., tuple[App, Git]], models: Models
) -> None:
    name = "gitops-selfheal"
    first = manifest(models, name, "v1", seed=21)
    app, _ = app_factory(name, first)
    app.until(_healthy_and_synced, "Healthy", 900)
    before = stack.get_mdep(app.cluster, NS, name)
    app.cluster.kubectl(
        "patch", "mdep", name, "-n", NS, "--type", "merge",
        "--patch", json.dumps({"spec": {"scaling": {"maxReplicas": 7}}}),
    )  # fmt: skip
    healed = stack.wait_for(
        app.cluster, NS, name,
        lambda o: o["metadata"]["generation"] >= before["metadata"]["generation"] + 2
        and o["spec"]["scaling"]["maxReplicas"] == first["spec"]["scaling"]["maxReplicas"],
        "put back by self-heal", 180,
    )  # fmt: skip
    stack.wait_for(
        app.cluster, NS, name,
        lambda o: stack.is_ready(o)
        and o["status"]["observedGeneration"] >= healed["metadata"]["generation"],
        "Ready for the healed generation", 180,
    )  # fmt: skip
    hpa = json.loads(app.cluster.kubectl("get", "hpa", "-n", NS, "-o", "json").stdout)["items"]
    ours = [h for h in hpa if h["spec"]["scaleTargetRef"]["name"] == name]
    assert [h["spec"]["maxReplicas"] for h in ours] == [first["spec"]["scaling"]["maxReplicas"]]
    app.until(_healthy_and_synced, "Synced and Healthy again", 120)


def test_deleting_the_application_with_cascade_removes_the_model_deployment_and_its_children(
    app_factory: Callable[..., tuple[App, Git]], models: Models
) -> None:
    name = "gitops-delete"
    app, _ = app_factory(name, manifest(models, name, "v1", seed=21))
    app.until(_healthy_and_synced, "Healthy", 900)
    uid = stack.get_mdep(app.cluster, NS, name)["metadata"]["uid"]
    pods = ["get", "pods", "-n", NS, "-l", f"modelship.io/deployment={name}", "-o", "name"]

    def children() -> list[str]:
        out = app.cluster.kubectl(
            "get", "deployments,services,hpa,pdb,jobs", "-n", NS, "-o", "json"
        ).stdout
        owned = [
            f"{o['kind']}/{o['metadata']['name']}"
            for o in json.loads(out)["items"]
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", []))
        ]
        return owned + app.cluster.kubectl(*pods).stdout.split()

    before = children()
    assert {c.split("/")[0] for c in before} >= {"Deployment", "Service", "pod"}, before
    argocd.cli(app.cluster, "app", "delete", name, "--cascade", "--yes", "--wait")
    assert app.cluster.kubectl("get", "mdep", name, "-n", NS, check=False).returncode != 0
    wait_for(lambda: children() == [] or None, f"the children to go (were {before})", 180)
