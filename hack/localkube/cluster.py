"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Everything a cluster owns (certificates, etcd data, logs, kubeconfigs, its state file) lives in
one directory; stopping the cluster ends every process it started, and ``destroy`` removes the
directory. Ports are chosen free at start and recorded in the state file, so several clusters
(a developer's and a test run's) can coexist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localkube import addons, binaries, node
from localkube.pki import ClusterPKI, KeyPair, create_pki
from localkube.ports import free_port

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "state.json"
_STOP_GRACE_S = 15.0
APISERVER_NAMES = (
    "127.0.0.1",
    node.NODE_IP,
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
)
"""The names and addresses the kube-apiserver's serving certificate is valid for."""


class KubectlError(RuntimeError):
    """kubectl failed; the message carries its stderr, which says why."""

    def __init__(self, args: Sequence[str], code: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {code}: {stderr.strip()}")
        self.stderr = stderr


def log(message: str) -> None:
    print(f"[localkube] {message}", file=sys.stderr, flush=True)


@dataclass
class ClusterState:
    """What a running cluster needs to be found and stopped again: ports and processes."""

    directory: str
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    node: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return node.NODE_IP if self.node else "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    def save(self) -> None:
        path = Path(self.directory) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> ClusterState:
        return cls(**json.loads((directory / STATE_FILE).read_text()))


def write_kubeconfig(path: Path, server: str, ca: Path, user: KeyPair, name: str) -> Path:
    """A kubeconfig with embedded file paths (JSON is valid YAML, so no YAML library needed)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": name,
                "user": {"client-certificate": str(user.cert), "client-key": str(user.key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
        "current-context": name,
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def wait_until(
    check: Callable[[], bool], what: str, timeout_s: float, proc_alive: Callable[[], str | None]
) -> None:
    """Poll ``check`` (bounded) until it passes; fail early if a process we depend on died."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if check():
            return
        dead = proc_alive()
        if dead:
            raise RuntimeError(f"{dead} exited while waiting for {what}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


class Cluster:
    """A control plane living in ``directory``; ``start`` it, then ``stop`` or ``destroy`` it."""

    def __init__(self, directory: Path, with_node: bool = False) -> None:
        self.directory = directory.resolve()
        self.with_node = with_node
        self.kubeconfig = self.directory / "admin.kubeconfig"
        self.state: ClusterState | None = None
        self._bins: dict[str, Path] = {}
        # Kept so the processes are reaped by us (a dropped Popen warns that it still runs).
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # --- paths ----------------------------------------------------------------------------

    @property
    def pki_dir(self) -> Path:
        return self.directory / "pki"

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def server(self) -> str:
        if self.state is None:
            raise RuntimeError("the cluster is not running")
        return self.state.server

    @property
    def kubectl_binary(self) -> Path:
        if "kubectl" not in self._bins:
            self._bins.update(binaries.ensure(("kubectl",)))
        return self._bins["kubectl"]

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def attach(cls, directory: Path) -> Cluster:
        """A handle on a cluster started earlier (by ``make cluster-up``) in ``directory``."""
        cluster = cls(directory)
        cluster.state = ClusterState.load(cluster.directory)
        cluster.with_node = cluster.state.node
        return cluster

    def start(self, timeout_s: float = 120.0) -> None:
        started = time.monotonic()
        self._bins = binaries.ensure(
            binaries.CONTROL_PLANE + (binaries.NODE if self.with_node else ())
        )
        self._fresh_directory()
        self.state = ClusterState(
            directory=str(self.directory),
            etcd_port=free_port(),
            etcd_peer_port=free_port(),
            apiserver_port=free_port(),
            controller_manager_port=free_port(),
            node=self.with_node,
        )
        if self.with_node:
            node.prepare_host()
        pki = create_pki(self.pki_dir, server_names=APISERVER_NAMES)
        write_kubeconfig(self.kubeconfig, self.state.server, pki.ca.cert, pki.admin, "admin")
        cm_kubeconfig = write_kubeconfig(
            self.directory / "controller-manager.kubeconfig",
            self.state.server,
            pki.ca.cert,
            pki.controller_manager,
            "system:kube-controller-manager",
        )
        try:
            self._start_control_plane(pki, cm_kubeconfig, timeout_s)
            self._wait_for_default_service_account(timeout_s)
            if self.with_node:
                self._start_node(pki, timeout_s)
        except BaseException:
            self.stop()
            raise
        log(f"control plane ready in {time.monotonic() - started:.1f}s at {self.state.server}")
        log(f"export KUBECONFIG={self.kubeconfig}")

    def _fresh_directory(self) -> None:
        if (self.directory / STATE_FILE).exists():
            raise RuntimeError(
                f"a cluster already lives in {self.directory}: run `make cluster-down` first"
            )
        # Leftovers of a failed start (logs, stale etcd data) would confuse this one.
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        self.log_dir.mkdir()

    def _start_control_plane(self, pki: ClusterPKI, cm_kubeconfig: Path, timeout_s: float) -> None:
        """etcd, kube-apiserver, kube-controller-manager: each started once the one before is
        healthy, and recorded in the state file as soon as it runs, so ``stop`` finds it."""
        assert self.state is not None
        self.spawn("etcd", self._etcd_args())
        self.state.save()
        self._wait_http(f"http://127.0.0.1:{self.state.etcd_port}/health", "etcd", pki, 30)
        self.spawn("kube-apiserver", self._apiserver_args(pki))
        self.state.save()
        self._wait_http(f"{self.state.server}/readyz", "kube-apiserver", pki, timeout_s)
        self.spawn("kube-controller-manager", self._controller_manager_args(pki, cm_kubeconfig))
        self.state.save()
        self._wait_http(
            f"https://127.0.0.1:{self.state.controller_manager_port}/healthz",
            "kube-controller-manager",
            pki,
            timeout_s,
        )

    def stop(self) -> None:
        """End every process this cluster started (SIGTERM, then SIGKILL after a grace period)."""
        state = self.state
        if state is None and (self.directory / STATE_FILE).exists():
            state = ClusterState.load(self.directory)
        if state is None:
            return
        for name in reversed(list(state.pids)):
            if name == "containerd":
                # Containers outlive the kubelet; remove them while containerd still answers.
                node.Images(node.NodeFiles(self.directory).socket).purge_containers()
            pid = state.pids[name]
            _terminate(pid, name, self.directory)
            proc = self._procs.pop(pid, None)
            if proc is not None:
                proc.wait()
        if state.node:
            kube_proxy = binaries.cached("kube-proxy")
            node.clean_host(kube_proxy)
            node.unmount_under(self.directory)
        (self.directory / STATE_FILE).unlink(missing_ok=True)
        self.state = None

    def stop_processes(self, names: Sequence[str]) -> None:
        """End the named processes of this cluster (an add-on that failed to start)."""
        assert self.state is not None
        for name in reversed(names):
            pid = self.state.pids.pop(name, None)
            if pid is not None:
                _terminate(pid, name, self.directory)
                proc = self._procs.pop(pid, None)
                if proc is not None:
                    proc.wait()
        self.state.save()

    def destroy(self) -> None:
        """Stop, then remove the cluster's directory (data, certificates, logs)."""
        self.stop()
        node.remove_tree(self.directory)

    # --- helpers ----------------------------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure the error includes kubectl's stderr."""
        result = subprocess.run(
            [str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stderr)
        return result

    def load_docker_image(self, image: str) -> None:
        """Import an image from the local Docker daemon into the node (skipped when present)."""
        if self.state is None or not self.state.node:
            raise RuntimeError("images need the node tier: run `make cluster-up` (TIER=node)")
        images = node.Images(node.NodeFiles(self.directory).socket)
        image_id = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        name = _qualified(image)
        label = "modelship.io/docker-id"
        same = images.ctr("images", "list", "-q", f'name=={name},labels."{label}"=={image_id}')
        if same.stdout.strip():
            log(f"{image} already on the node")
            return
        if images.ctr("images", "list", "-q", f"name=={name}").stdout.strip():
            # An older build under this name: removed first, with a synchronous garbage
            # collection, or its layers (GBs for the converter images) would stay in the cache
            # for good, one more set with every build a reused machine loads.
            images.ctr("images", "rm", "--sync", name)
            log(f"removed the older {image} from the node")
        started = time.monotonic()
        log(f"loading {image} into the node's containerd")
        with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
            assert save.stdout is not None
            node.run(
                "ctr",
                f"--address={images.socket}",
                "--namespace=k8s.io",
                "images",
                "import",
                "-",
                stdin=save.stdout,
            )
        if save.returncode != 0:
            raise RuntimeError(f"docker save {image} failed")
        images.ctr("images", "label", name, f"{label}={image_id}")
        log(f"loaded {image} in {time.monotonic() - started:.1f}s")

    def prune_content_tags(self, keep: str) -> list[str]:
        """Remove from the node the other content tags (``<repository>:<12 hex>``) of ``keep``'s
        repository that no container uses: one per build, each holding its own layers (~450 MB
        for the runtime), they would otherwise pile up in the node's cache on a reused machine.
        Returns the removed names."""
        assert self.state is not None
        assert self.state.node
        images = node.Images(node.NodeFiles(self.directory).socket)
        listed = images.ctr("images", "list", "-q").stdout.decode().split()
        used = images.ctr("containers", "list").stdout.decode().split()
        stale = stale_content_tags(listed, _qualified(keep), set(used))
        if stale:
            images.ctr("images", "rm", "--sync", *stale)
            log(f"removed {len(stale)} older content tags of {keep.split(':')[0]} from the node")
        return stale

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        program: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """Start a process of this cluster: logged to logs/<name>.log, recorded in the state
        file (the caller saves it), ended by ``stop``. ``env`` adds to this process's."""
        assert self.state is not None
        logfile = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*(program or [str(self._bins[name])]), *args],
            env={**os.environ, **env} if env else None,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI that started it; stopped via state.json
            cwd=self.directory,
        )
        logfile.close()
        self._procs[proc.pid] = proc
        self.state.pids[name] = proc.pid
        log(f"started {name} (pid {proc.pid}), log {self.log_dir / (name + '.log')}")

    def dead_process(self) -> str | None:
        assert self.state is not None
        for name, pid in self.state.pids.items():
            if not _alive(pid):
                logfile = self.log_dir / f"{name}.log"
                tail = (
                    logfile.read_text(errors="replace").splitlines()[-15:]
                    if logfile.exists()
                    else []
                )
                return name + " (last lines of its log:\n  " + "\n  ".join(tail) + "\n)"
        return None

    def _wait_http(self, url: str, what: str, pki: ClusterPKI, timeout_s: float) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        if url.startswith("https://127.0.0.1") and what != "kube-apiserver":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # it serves a self-signed certificate of its own

        def ok() -> bool:
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ok, what, timeout_s, self.dead_process)

    def _wait_for_default_service_account(self, timeout_s: float) -> None:
        # The serviceaccount controller must have run before pods/jobs can be created.
        def ok() -> bool:
            return self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0

        wait_until(ok, "the default service account", timeout_s, self.dead_process)

    def _start_node(self, pki: ClusterPKI, timeout_s: float) -> None:
        assert self.state is not None
        files = node.NodeFiles(self.directory)
        certs = node.node_certificates(self.pki_dir)
        for name in ("kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics", "scheduler"):
            self.state.ports[name] = free_port()
        kubeconfigs = self._node_kubeconfigs(pki, certs)
        self._spawn_scheduler(kubeconfigs["scheduler"])
        self.state.save()
        images = self._start_containerd(files)
        _, coredns_image, metrics_image = images.ensure_system_images(self._bins)
        files.write_cni_config()
        self._spawn_kubelet(files, pki, certs["kubelet-serving"], kubeconfigs["kubelet"])
        self.state.save()
        self._spawn_kube_proxy(files, kubeconfigs["kube-proxy"])
        self._spawn_provisioner(files)
        self.state.save()
        self.wait_kubectl(
            ["wait", "--for=condition=Ready", f"node/{node.NODE_NAME}", "--timeout=5s"],
            "the node to be Ready",
            timeout_s,
        )
        self._install_addons(coredns_image, metrics_image, timeout_s)
        log(f"node {node.NODE_NAME} ready at {node.NODE_IP}")

    def _node_kubeconfigs(self, pki: ClusterPKI, certs: dict[str, KeyPair]) -> dict[str, Path]:
        assert self.state is not None
        return {
            name: write_kubeconfig(
                self.directory / f"{name}.kubeconfig", self.state.server, pki.ca.cert, pair, name
            )
            for name, pair in (
                ("scheduler", pki.scheduler),
                ("kubelet", certs["kubelet-client"]),
                ("kube-proxy", certs["kube-proxy"]),
            )
        }

    def _spawn_scheduler(self, kubeconfig: Path) -> None:
        assert self.state is not None
        self.spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.state.ports['scheduler']}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_containerd(self, files: node.NodeFiles) -> node.Images:
        """Start containerd, wait until it answers, and clear containers a crashed run left."""
        assert self.state is not None
        self.spawn(
            "containerd", ["--config", str(files.write_containerd_config())], program=["containerd"]
        )
        self.state.save()
        images = node.Images(files.socket)
        wait_until(
            lambda: (
                files.socket.exists()
                and node.run("ctr", f"--address={files.socket}", "version", check=False).returncode
                == 0
            ),
            "containerd",
            60,
            self.dead_process,
        )
        images.purge_containers()
        return images

    def _spawn_kubelet(
        self, files: node.NodeFiles, pki: ClusterPKI, serving: KeyPair, kubeconfig: Path
    ) -> None:
        assert self.state is not None
        config = files.write_kubelet_config(
            pki, serving, self.state.ports["kubelet"], self.state.ports["kubelet_healthz"]
        )
        self.spawn(
            "kubelet",
            [
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={files.kubelet_dir}",
                f"--hostname-override={node.NODE_NAME}",
                f"--node-ip={node.NODE_IP}",
                "--v=1",
            ],
        )

    def _spawn_kube_proxy(self, files: node.NodeFiles, kubeconfig: Path) -> None:
        assert self.state is not None
        config = files.write_kube_proxy_config(
            kubeconfig, self.state.ports["proxy_healthz"], self.state.ports["proxy_metrics"]
        )
        self.spawn("kube-proxy", [f"--config={config}"])

    def _spawn_provisioner(self, files: node.NodeFiles) -> None:
        self.spawn(
            "provisioner",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--root={files.storage_dir}",
                f"--node={node.NODE_NAME}",
            ],
            program=[sys.executable, str(Path(__file__).with_name("provisioner.py"))],
        )

    def _install_addons(self, coredns_image: str, metrics_image: str, timeout_s: float) -> None:
        """Apply CoreDNS, metrics-server and the StorageClass; wait until they serve."""
        self.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": addons.manifests(coredns_image, metrics_image),
                }
            ),
        )
        for deployment in ("coredns", "metrics-server"):
            self.wait_kubectl(
                [
                    "-n",
                    "kube-system",
                    "wait",
                    "--for=condition=Available",
                    f"deployment/{deployment}",
                    "--timeout=5s",
                ],
                deployment,
                timeout_s,
            )
        self.wait_kubectl(
            [
                "wait",
                "--for=condition=Available",
                "apiservice/v1beta1.metrics.k8s.io",
                "--timeout=5s",
            ],
            "the metrics API",
            timeout_s,
        )

    def wait_kubectl(self, args: list[str], what: str, timeout_s: float) -> None:
        wait_until(
            lambda: self.kubectl(*args, check=False).returncode == 0,
            what,
            timeout_s,
            self.dead_process,
        )

    def _etcd_args(self) -> list[str]:
        assert self.state is not None
        client = f"http://127.0.0.1:{self.state.etcd_port}"
        peer = f"http://127.0.0.1:{self.state.etcd_peer_port}"
        return [
            "--name=default",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
            # A throwaway cluster: durability is not worth the fsync latency.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
        ]

    def _apiserver_args(self, pki: ClusterPKI) -> list[str]:
        assert self.state is not None
        return [
            f"--etcd-servers=http://127.0.0.1:{self.state.etcd_port}",
            f"--bind-address={self.state.host}",
            f"--advertise-address={self.state.host}",
            f"--secure-port={self.state.apiserver_port}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account.cert}",
            f"--service-account-signing-key-file={pki.service_account.key}",
            f"--service-cluster-ip-range={node.SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # Loopback cannot back the `kubernetes` Service; without a node no pod needs it.
            f"--endpoint-reconciler-type={'lease' if self.state.node else 'none'}",
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self, pki: ClusterPKI, kubeconfig: Path) -> list[str]:
        assert self.state is not None
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.state.controller_manager_port}",
            f"--cert-dir={self.directory / 'controller-manager-certs'}",
            f"--service-account-private-key-file={pki.service_account.key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--controllers=*",
            # Scale-down waits 5 minutes by default; tests and demos cannot.
            "--horizontal-pod-autoscaler-downscale-stabilization=60s",
            "--horizontal-pod-autoscaler-sync-period=10s",
            "--profiling=false",
            "--v=1",
        ]


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now (plain HTTP; for readiness polls)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as dead: reap it if it is ours.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split(") ", 1)[-1][:1] != "Z"
    return waited == 0


def _ours(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is still a process this cluster started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == str(directory) or str(directory) in cmdline


def _terminate(pid: int, name: str, directory: Path) -> None:
    if not _alive(pid) or not _ours(pid, directory):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM for {_STOP_GRACE_S:.0f}s; killing it")
        os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    log(f"stopped {name} (pid {pid})")


CONTENT_TAG = re.compile(r"[0-9a-f]{12}")


def _qualified(image: str) -> str:
    """The name containerd stores a Docker Hub style short name under."""
    return image if "/" in image.split(":")[0] else f"docker.io/library/{image}"


def stale_content_tags(listed: Sequence[str], keep: str, used: set[str]) -> list[str]:
    """The images in ``listed`` of ``keep``'s repository tagged like a content tag, other than
    ``keep`` and those in ``used`` (images of containers)."""
    repository = keep.rsplit(":", 1)[0]
    return [
        name
        for name in listed
        if name != keep
        and name not in used
        and name.rsplit(":", 1)[0] == repository
        and CONTENT_TAG.fullmatch(name.rsplit(":", 1)[-1])
    ]
