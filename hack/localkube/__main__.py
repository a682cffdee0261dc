"""``python -m localkube up|down|status`` (what ``make cluster-up`` / ``make cluster-down`` run)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from localkube import argocd, binaries, gateway, node, prometheus
from localkube.cluster import STATE_FILE, Cluster, ClusterState, log

DEFAULT_DIR = Path(
    os.environ.get("MODELSHIP_CLUSTER_DIR", binaries.REPO_ROOT / ".cache" / "cluster")
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localkube", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cluster directory")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) control-plane binaries")
    up = sub.add_parser("up", help="start the cluster and print its KUBECONFIG")
    up.add_argument(
        "--tier",
        choices=("node", "control-plane"),
        default=os.environ.get("TIER", "node"),
        help="node: the full single node (pods run); control-plane: API semantics only",
    )
    up.add_argument(
        "--argocd",
        action="store_true",
        default=os.environ.get("ARGOCD", "0") not in ("", "0"),
        help="also run Argo CD (repo server, application controller, API server) on the node",
    )
    up.add_argument(
        "--gateway",
        action="store_true",
        default=os.environ.get("GATEWAY", "0") not in ("", "0"),
        help="also run Traefik with the Gateway API CRDs, a GatewayClass and a Gateway",
    )
    up.add_argument(
        "--prometheus",
        action="store_true",
        default=os.environ.get("PROMETHEUS", "0") not in ("", "0"),
        help="also run Prometheus, discovering the runtime and operator pods",
    )
    sub.add_parser("argocd", help="start Argo CD on the node running in --dir")
    sub.add_parser("gateway", help="start Traefik and the Gateway on the node running in --dir")
    sub.add_parser("prometheus", help="start Prometheus on the node running in --dir")
    sub.add_parser("down", help="stop every process and remove the cluster directory")
    sub.add_parser("status", help="say whether a cluster runs in --dir")
    load = sub.add_parser("load-image", help="copy Docker images into the node's containerd")
    load.add_argument("images", nargs="+", help="image references known to `docker images`")
    args = parser.parse_args(argv)

    if args.command == "build":
        for name, path in binaries.ensure(binaries.CONTROL_PLANE + binaries.NODE).items():
            print(f"{name}={path}")
        return 0
    if args.command == "up":
        started = time.monotonic()
        cluster = Cluster(args.dir, with_node=args.tier == "node")
        cluster.start()
        if args.argocd:
            argocd.start(cluster)
        if args.gateway:
            gateway.start(cluster)
        if args.prometheus:
            prometheus.start(cluster)
        log(f"`make cluster-up` took {time.monotonic() - started:.1f}s in all")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command == "down":
        Cluster(args.dir).destroy()
        if node.host_is_dirty():
            # A node whose state file is gone (a crashed `up`) still left its bridge and chains.
            node.clean_host(binaries.cached("kube-proxy"))
        log(f"removed {args.dir}")
        return 0
    addon = {"argocd": argocd.start, "gateway": gateway.start, "prometheus": prometheus.start}
    if args.command in addon:
        addon[args.command](Cluster.attach(args.dir))
        return 0
    if args.command == "load-image":
        cluster = Cluster.attach(args.dir)
        for image in args.images:
            cluster.load_docker_image(image)
        return 0
    if (args.dir / STATE_FILE).exists():
        state = ClusterState.load(args.dir)
        print(f"running at {state.server}, processes {state.pids}")
        print(f"export KUBECONFIG={args.dir / 'admin.kubeconfig'}")
        return 0
    print(f"no cluster in {args.dir}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
