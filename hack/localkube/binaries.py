"""Find, or build once, the Kubernetes binaries the local cluster runs.

``hack/build-k8s.sh`` owns the versions and the cache; it prints ``component=path`` for each
component on stdout and its progress on stderr, which we pass through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
NODE = ("kube-scheduler", "kubelet", "kube-proxy", "coredns", "metrics-server")


def ensure(components: tuple[str, ...] = CONTROL_PLANE) -> dict[str, Path]:
    """Paths of the binaries, building the missing ones (minutes the first time, cached after)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *components],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT.name} failed (exit {result.returncode}); its output above says why. "
            "It needs Go and the Go module proxy."
        )
    paths: dict[str, Path] = {}
    for line in result.stdout.splitlines():
        name, sep, path = line.partition("=")
        if sep:
            paths[name] = Path(path)
    missing = [c for c in components if c not in paths]
    if missing:
        raise RuntimeError(f"{BUILD_SCRIPT.name} did not report a path for {', '.join(missing)}")
    return paths


def cached(component: str) -> Path | None:
    """The newest cached build of ``component`` without building anything (for teardown)."""
    cache = Path(os.environ.get("MODELSHIP_CACHE", Path.home() / ".cache" / "modelship")) / "bin"
    found = sorted(cache.glob(f"{component}-v*"))
    return found[-1] if found else None
