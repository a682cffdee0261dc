"""Argo CD on the local node: the repo server, the application controller and the API server.

Argo CD is one binary built from its Go module (``hack/build-k8s.sh argocd``, cached by version)
that acts as the component named by ``ARGOCD_BINARY_NAME``. Its components run here as processes
of the cluster, as Argo CD's own local development setup runs them (``ARGOCD_FAKE_IN_CLUSTER``
makes the in-cluster destination ``https://kubernetes.default.svc`` use the kubeconfig), with
Redis from Debian's ``redis-server`` as the cache. Installed into the cluster as users install
Argo CD: its CRDs (from the module's ``manifests/crds``), the ``argocd-cm``, ``argocd-rbac-cm``
and ``argocd-secret`` settings and the ``default`` AppProject, then Modelship's customizations
merged into ``argocd-cm`` with the ``kubectl patch`` docs/argocd.md gives. The API server runs
without authentication on loopback (as in Argo CD's e2e setup), so the ``argocd`` CLI and the
resource actions go through Argo CD's own server and RBAC code paths without a login.

``python -m localkube up --argocd`` (``make cluster-up ARGOCD=1``) starts it with the node;
``python -m localkube argocd`` adds it to a running node. ``stop`` ends it with the cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localkube import binaries
from localkube.cluster import http_ok, log, wait_until
from localkube.ports import free_port

if TYPE_CHECKING:
    from localkube.cluster import Cluster

NAMESPACE = "argocd"
COMPONENTS = (
    "argocd-redis",
    "argocd-repo-server",
    "argocd-application-controller",
    "argocd-server",
)
CUSTOMIZATIONS = binaries.REPO_ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
PART_OF = {"app.kubernetes.io/part-of": "argocd"}


def running(cluster: Cluster) -> bool:
    """Whether this cluster's state records a running Argo CD."""
    return cluster.state is not None and all(c in cluster.state.pids for c in COMPONENTS)


def server_address(cluster: Cluster) -> str:
    assert cluster.state is not None
    return f"127.0.0.1:{cluster.state.ports['argocd-server']}"


def binary() -> Path:
    return binaries.ensure(("argocd",))["argocd"]


def share(argocd: Path) -> Path:
    """What hack/build-k8s.sh copies beside the binary from the same module version: crds/
    and bin/ (the helper scripts Argo CD's image puts on PATH)."""
    return Path(f"{argocd}-share")


def crds(argocd: Path) -> list[Path]:
    found = sorted((share(argocd) / "crds").glob("*-crd.yaml"))
    if not found:
        raise RuntimeError(f"no Argo CD CRDs beside {argocd}; rebuild it: hack/build-k8s.sh argocd")
    return found


def start(cluster: Cluster, timeout_s: float = 180.0) -> None:
    """Install Argo CD's resources and start its components; wait until each answers."""
    if cluster.state is None or not cluster.state.node:
        raise RuntimeError("Argo CD needs the node tier: `make cluster-up ARGOCD=1`")
    if running(cluster):
        install_customizations(cluster)
        log("Argo CD already runs on this node; its argocd-cm has our current customizations")
        return
    started = time.monotonic()
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("redis-server is missing: run `make host-deps` (Debian redis-server)")
    argocd = binary()
    _install_resources(cluster, argocd, timeout_s)
    try:
        _start_components(cluster, argocd, redis, timeout_s)
    except BaseException:
        cluster.stop_processes(COMPONENTS)
        raise
    log(
        f"Argo CD {argocd.name.removeprefix('argocd-')} ready in "
        f"{time.monotonic() - started:.1f}s; API server at {server_address(cluster)}"
    )


def _start_components(cluster: Cluster, argocd: Path, redis: str, timeout_s: float) -> None:
    assert cluster.state is not None
    state = cluster.state
    for name in (*COMPONENTS, "argocd-repo-server-metrics", "argocd-controller-metrics"):
        state.ports[name] = free_port()
    state.ports["argocd-server-metrics"] = free_port()
    home = cluster.directory / "argocd"
    for sub in ("tls", "ssh", "gpg", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / "ssh" / "ssh_known_hosts").touch()
    redis_at = f"127.0.0.1:{state.ports['argocd-redis']}"
    repo_at = f"127.0.0.1:{state.ports['argocd-repo-server']}"
    common = {
        "ARGOCD_FAKE_IN_CLUSTER": "true",
        "KUBECONFIG": str(cluster.kubeconfig),
        "ARGOCD_TLS_DATA_PATH": str(home / "tls"),
        "ARGOCD_SSH_DATA_PATH": str(home / "ssh"),
        "ARGOCD_GNUPGHOME": str(home / "gpg"),
        "ARGOCD_GPG_ENABLED": "false",
        "TMPDIR": str(home / "tmp"),
    }
    flags = ["--loglevel=info", "--logformat=text"]

    cluster.spawn(
        "argocd-redis",
        [
            "--bind",
            "127.0.0.1",
            "--port",
            str(state.ports["argocd-redis"]),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        program=[redis],
    )
    state.save()
    cluster.spawn(
        "argocd-repo-server",
        [
            *flags,
            "--address=127.0.0.1",
            f"--port={state.ports['argocd-repo-server']}",
            f"--metrics-port={state.ports['argocd-repo-server-metrics']}",
            f"--redis={redis_at}",
            "--disable-tls",
            "--client-ca-path=",
        ],
        program=[str(argocd)],
        env={
            **common,
            "ARGOCD_BINARY_NAME": "argocd-repo-server",
            "PATH": f"{share(argocd) / 'bin'}:{os.environ['PATH']}",
        },
    )
    state.save()
    cluster.spawn(
        "argocd-application-controller",
        [
            *flags,
            f"--namespace={NAMESPACE}",
            f"--repo-server={repo_at}",
            "--repo-server-plaintext",
            f"--redis={redis_at}",
            f"--metrics-port={state.ports['argocd-controller-metrics']}",
        ],
        program=[str(argocd)],
        env={**common, "ARGOCD_BINARY_NAME": "argocd-application-controller"},
    )
    state.save()
    cluster.spawn(
        "argocd-server",
        [
            *flags,
            f"--namespace={NAMESPACE}",
            "--insecure",
            "--disable-auth",
            "--address=127.0.0.1",
            f"--port={state.ports['argocd-server']}",
            f"--metrics-port={state.ports['argocd-server-metrics']}",
            f"--repo-server={repo_at}",
            "--repo-server-plaintext",
            f"--redis={redis_at}",
            "--dex-server=",
            "--staticassets=",
            "--disable-swagger-ui",
        ],
        program=[str(argocd)],
        env={**common, "ARGOCD_BINARY_NAME": "argocd-server"},
    )
    state.save()
    for name, port, path in (
        ("argocd-repo-server", state.ports["argocd-repo-server-metrics"], "/healthz"),
        ("argocd-application-controller", state.ports["argocd-controller-metrics"], "/healthz"),
        ("argocd-server", state.ports["argocd-server"], "/healthz"),
    ):
        wait_until(
            lambda port=port, path=path: http_ok(f"http://127.0.0.1:{port}{path}"),  # type: ignore[misc]
            name,
            timeout_s,
            cluster.dead_process,
        )


def _install_resources(cluster: Cluster, argocd: Path, timeout_s: float) -> None:
    """CRDs, namespace, settings and the default project; then our customizations."""
    log("installing Argo CD's CRDs, settings and default project")
    for crd in crds(argocd):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.wait_kubectl(
        [
            "wait",
            "--for=condition=Established",
            "--timeout=5s",
            "crd/applications.argoproj.io",
            "crd/appprojects.argoproj.io",
        ],
        "Argo CD's CRDs",
        timeout_s,
    )
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        _config_map("argocd-cm", {}),
        _config_map("argocd-rbac-cm", {"policy.default": "role:admin"}),
        _config_map("argocd-cmd-params-cm", {}),
        _config_map("argocd-ssh-known-hosts-cm", {}),
        _config_map("argocd-tls-certs-cm", {}),
        _config_map("argocd-gpg-keys-cm", {}),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "argocd-secret",
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/name": "argocd-secret", **PART_OF},
            },
            "stringData": {"server.secretkey": secrets.token_urlsafe(32)},
        },
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AppProject",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {
                "sourceRepos": ["*"],
                "destinations": [{"server": "*", "namespace": "*"}],
                "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
            },
        },
    ]
    # create, not apply: a restarted Argo CD keeps the secret key and settings it had.
    cluster.kubectl(
        "create",
        "-f",
        "-",
        "--save-config=false",
        check=False,
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    )
    install_customizations(cluster)


def install_customizations(cluster: Cluster) -> None:
    """Merge deploy/argocd/argocd-cm.yaml into argocd-cm, exactly as docs/argocd.md says."""
    cluster.kubectl(
        "-n",
        NAMESPACE,
        "patch",
        "configmap",
        "argocd-cm",
        "--type",
        "merge",
        "--patch-file",
        str(CUSTOMIZATIONS),
    )


def _config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": name, **PART_OF},
        },
        "data": data,
    }


def cli(cluster: Cluster, *args: str, check: bool = True, timeout: float = 120) -> str:
    """Run the ``argocd`` CLI against this node's Argo CD API server; return its stdout."""
    result = subprocess.run(
        [str(binary()), "--server", server_address(cluster), "--plaintext", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            "ARGOCD_BINARY_NAME": "argocd",
            "HOME": str(cluster.directory / "argocd"),
            "PATH": "/usr/bin:/bin",
        },
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"argocd {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout
