"""The single worker node: containerd, kubelet, kube-proxy, bridge CNI, and their host plumbing.

Pods get addresses from ``POD_CIDR`` on the bridge ``BRIDGE``; the host's address on that bridge
(``NODE_IP``) is the node's InternalIP and where the API server listens, so pods reach it through
the ``kubernetes`` Service like on any cluster. These names are machine-wide (a bridge, iptables
chains), so one node runs per machine at a time.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from localkube import oci
from localkube.pki import ClusterPKI, KeyPair, issue_client

NODE_NAME = "modelship-node"
BRIDGE = "mship0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CACHE = Path(os.environ.get("MODELSHIP_CACHE", Path.home() / ".cache" / "modelship"))
# Images survive clusters: a warm start re-imports nothing.
CONTAINERD_ROOT = CACHE / "containerd"
IMAGES_DIR = CACHE / "images"
HERE = Path(__file__).parent


def run(
    *args: str, check: bool = True, input: bytes | None = None, stdin: IO[bytes] | None = None
) -> subprocess.CompletedProcess[bytes]:
    if stdin is not None:
        result = subprocess.run(list(args), capture_output=True, stdin=stdin, check=False)
    else:
        result = subprocess.run(list(args), capture_output=True, input=input, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {result.returncode}: {result.stderr.decode(errors='replace')}"
        )
    return result


def prepare_host() -> None:
    """The bridge with the node address, forwarding and bridged traffic through iptables."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # Service IPs must never leave this machine: until kube-proxy has a rule for a new Service,
    # traffic to its ClusterIP would follow the default route out of the machine. Routing the
    # whole Service range onto the bridge keeps such packets local (they find nobody and fail).
    run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE)
    for key, value in (
        ("net/ipv4/ip_forward", "1"),
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/ipv4/conf/all/route_localnet", "1"),
    ):
        path = Path("/proc/sys") / key
        if path.exists():
            path.write_text(value)
    _allow_pod_to_pod()


POD_FORWARD_CHAIN = "CNI-MSHIP-FORWARD"
"""Accepts traffic between pods on the bridge; its CNI- prefix makes clean_host remove it."""


def _allow_pod_to_pod() -> None:
    """Bridged pod-to-pod packets go through the FORWARD chain (bridge-nf-call-iptables), whose
    policy Docker sets to DROP: without this rule a pod reaches Services and the host but not
    another pod's IP (the operator scraping a pod's /metrics for canary analysis)."""
    run("iptables", "-N", POD_FORWARD_CHAIN, check=False)
    run("iptables", "-F", POD_FORWARD_CHAIN)
    run("iptables", "-A", POD_FORWARD_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
    if run("iptables", "-C", "FORWARD", "-j", POD_FORWARD_CHAIN, check=False).returncode != 0:
        run("iptables", "-I", "FORWARD", "1", "-j", POD_FORWARD_CHAIN)


class NodeFiles:
    """Configuration files of the node components, all inside the cluster directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.containerd_dir = directory / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.cni_conf_dir = directory / "cni" / "net.d"
        self.cni_ipam_dir = directory / "cni" / "ipam"
        self.kubelet_dir = directory / "kubelet"
        self.storage_dir = directory / "storage"

    def write_containerd_config(self) -> Path:
        self.containerd_dir.mkdir(parents=True, exist_ok=True)
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{self.containerd_dir / "state"}"

[grpc]
  address = "{self.socket}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_unprivileged_ports = true
  # This machine withholds CAP_SYS_RESOURCE, so negative oom_score_adj values (the kubelet asks
  # -998 for sandboxes) fail with EACCES; clamp them to containerd's own score instead.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{os.environ.get("LOCALKUBE_RUNC", "runc")}"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.cni_conf_dir}"
"""
        path = self.containerd_dir / "config.toml"
        path.write_text(config)
        return path

    def write_cni_config(self) -> None:
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "modelship",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.cni_ipam_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf_dir / "10-modelship.conflist").write_text(json.dumps(conflist, indent=2))

    def write_kubelet_config(
        self, pki: ClusterPKI, serving: KeyPair, port: int, healthz: int
    ) -> Path:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        resolv = self.directory / "resolv.conf"
        resolv.write_text("# pods resolve through CoreDNS only: this machine has no upstream DNS\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "failSwapOn": False,
            "serializeImagePulls": False,
            "podPidsLimit": 4096,
            "maxPods": 110,
            # A shared development disk: evict only when it is really full.
            "evictionHard": {
                "memory.available": "200Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "shutdownGracePeriod": "0s",
        }
        path = self.kubelet_dir / "config.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def write_kube_proxy_config(self, kubeconfig: Path, healthz: int, metrics: int) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            # Leave the machine's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0},
        }
        path = self.directory / "kube-proxy.json"
        path.write_text(json.dumps(config, indent=2))
        return path


def node_certificates(pki_dir: Path) -> dict[str, KeyPair]:
    """Client certificates of the node components, and the kubelet's serving certificate."""
    from localkube.pki import CertificateAuthority

    ca = CertificateAuthority.load(pki_dir, "ca")
    return {
        "kubelet-client": issue_client(pki_dir, f"system:node:{NODE_NAME}", ("system:nodes",)),
        "kubelet-serving": ca.issue(
            pki_dir / "kubelet-serving", NODE_NAME, server_names=(NODE_IP, NODE_NAME)
        ),
        "kube-proxy": issue_client(pki_dir, "system:kube-proxy"),
    }


# --- images ---------------------------------------------------------------------------------


class Images:
    """Builds the node's own images once (cached) and imports them into containerd."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def ctr(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return run("ctr", f"--address={self.socket}", "--namespace=k8s.io", *args, input=input)

    def present(self) -> set[str]:
        out = self.ctr("images", "list", "--quiet").stdout.decode()
        return set(out.split())

    def import_archive(self, archive: Path) -> None:
        self.ctr("images", "import", "--no-unpack", str(archive))

    def ensure_system_images(self, binaries: dict[str, Path]) -> list[str]:
        IMAGES_DIR.mkdir(parents=True, exist_ok=True)
        wanted = {
            PAUSE_IMAGE: (self._pause_binary(), "/pause", ["/pause"]),
            coredns_image(binaries["coredns"]): (
                binaries["coredns"],
                "/coredns",
                ["/coredns", "-conf", "/etc/coredns/Corefile"],
            ),
            metrics_server_image(binaries["metrics-server"]): (
                binaries["metrics-server"],
                "/metrics-server",
                ["/metrics-server"],
            ),
        }
        present = self.present()
        for name, (source, path, entrypoint) in wanted.items():
            self.ensure_binary_image(name, source, path, entrypoint, present)
        return list(wanted)

    def ensure_binary_image(
        self,
        name: str,
        binary: Path,
        path: str,
        entrypoint: list[str] | None = None,
        present: set[str] | None = None,
    ) -> None:
        """A one-binary image ``name`` on the node: written once (cached in IMAGES_DIR) and
        imported unless containerd has it already."""
        if name in (self.present() if present is None else present):
            return
        IMAGES_DIR.mkdir(parents=True, exist_ok=True)
        archive = IMAGES_DIR / (name.replace("/", "_").replace(":", "_") + ".tar")
        if not archive.exists():
            oci.write_image(archive, name, [oci.ImageFile(binary, path)], entrypoint or [path])
        self.import_archive(archive)

    @staticmethod
    def _pause_binary() -> Path:
        out = IMAGES_DIR / "pause"
        if not out.exists():
            run("gcc", "-static", "-Os", "-s", "-o", str(out), str(HERE / "images" / "pause.c"))
        return out

    def purge_containers(self) -> None:
        """Remove every container and task left in the k8s.io namespace (crash leftovers)."""
        tasks = self.ctr("tasks", "list", "--quiet").stdout.decode().split()
        for task in tasks:
            run(
                "ctr",
                f"--address={self.socket}",
                "--namespace=k8s.io",
                "tasks",
                "kill",
                "--signal=SIGKILL",
                task,
                check=False,
            )
        for task in tasks:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done = run(
                    "ctr",
                    f"--address={self.socket}",
                    "--namespace=k8s.io",
                    "tasks",
                    "delete",
                    task,
                    check=False,
                )
                if done.returncode == 0 or b"not found" in done.stderr:
                    break
                time.sleep(0.1)
        containers = self.ctr("containers", "list", "--quiet").stdout.decode().split()
        if containers:
            run(
                "ctr",
                f"--address={self.socket}",
                "--namespace=k8s.io",
                "containers",
                "delete",
                *containers,
                check=False,
            )


def coredns_image(binary: Path) -> str:
    return f"modelship.local/coredns:{binary.name.rsplit('-', 1)[-1]}"


def metrics_server_image(binary: Path) -> str:
    return f"modelship.local/metrics-server:{binary.name.rsplit('-', 1)[-1]}"


# --- teardown ---------------------------------------------------------------------------------


def unmount_under(directory: Path) -> None:
    """Unmount everything the kubelet and containerd mounted below ``directory``, deepest first."""
    prefixes = (str(directory) + "/", str(CONTAINERD_ROOT) + "/")
    mounts = [
        line.split()[1].replace("\\040", " ")
        for line in Path("/proc/mounts").read_text().splitlines()
    ]
    for mount in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
        run("umount", "-l", mount, check=False)


def clean_host(kube_proxy: Path | None) -> None:
    """Remove what the node added to the machine: iptables chains, the bridge and its veths."""
    if kube_proxy is not None:
        run(str(kube_proxy), "--cleanup", check=False)
    _remove_chains(("KUBE-", "CNI-"))
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        # Deleting the bridge alone leaves the host ends of veths; remove those first.
        for iface in Path(f"/sys/class/net/{BRIDGE}/brif").iterdir():
            run("ip", "link", "delete", iface.name, check=False)
        run("ip", "link", "delete", BRIDGE, check=False)
    for netns in Path("/var/run/netns").glob("cni-*") if Path("/var/run/netns").exists() else []:
        run("ip", "netns", "delete", netns.name, check=False)
    # Forget connections to Service IPs, or a reused IP would find the old translation.
    run("conntrack", "-D", "-d", SERVICE_CIDR, check=False)


def _remove_chains(prefixes: tuple[str, ...]) -> None:
    """Delete iptables chains with these prefixes (kubelet's, kube-proxy's, the CNI plugin's)
    and the rules in built-in chains that jump to them."""
    for table in ("filter", "nat", "mangle"):
        rules = run("iptables", "-t", table, "-S", check=False).stdout.decode().splitlines()
        chains = [
            r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefixes)
        ]
        for rule in rules:
            words = shlex.split(rule)
            if words[:1] == ["-A"] and not words[1].startswith(prefixes):
                target = words[words.index("-j") + 1] if "-j" in words else ""
                if target.startswith(prefixes):
                    run("iptables", "-t", table, "-D", *words[1:], check=False)
        for chain in chains:
            run("iptables", "-t", table, "-F", chain, check=False)
        for chain in chains:
            run("iptables", "-t", table, "-X", chain, check=False)


def host_is_dirty() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def remove_tree(path: Path) -> None:
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
