"""Helm for the chart tests: the binary from hack/build-k8s.sh; `helm template` as objects."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modelship"
RELEASE = "modelship"
NAMESPACE = "modelship-system"


@functools.cache
def helm_binary() -> str:
    """Built from Go modules once (minutes) and cached by version; prints helm=<path>."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-k8s.sh"), "helm"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    for line in out.splitlines():
        if line.startswith("helm="):
            return line.removeprefix("helm=")
    raise RuntimeError(f"hack/build-k8s.sh helm printed no helm=<path>: {out!r}")


@functools.cache
def _helm_home() -> str:
    # helm keeps repositories and plugins under these; tests need neither, so keep them private.
    home = tempfile.mkdtemp(prefix="modelship-helm-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm (never raises); ``values`` goes in as one more values file."""
    home = _helm_home()
    env = {
        "HELM_CACHE_HOME": f"{home}/cache",
        "HELM_CONFIG_HOME": f"{home}/config",
        "HELM_DATA_HOME": f"{home}/data",
        "HOME": home,  # helm's Kubernetes client caches discovery in ~/.kube
        "PATH": "/usr/bin:/bin",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra:
        json.dump(values or {}, extra)
        extra.flush()
        return subprocess.run(
            [helm_binary(), *args, "--values", extra.name],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )


def template_text(
    values: dict[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    crds: bool = False,
    api_versions: tuple[str, ...] = (),
) -> str:
    """``api_versions``: what the cluster serves beyond the built-in kinds (``--api-versions``)."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if crds:
        args.append("--include-crds")
    for api in api_versions:
        args += ["--api-versions", api]
    result = helm(*args, values=values)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return result.stdout


def template(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template_text(values, **kwargs)) if d]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


POD_NAME = "modelship-operator-5d9c7-x2x4q"


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The operator container's environment as the kubelet would set it (downward API too)."""
    deployment = one(objects, "Deployment")
    pod = {"metadata": {"name": POD_NAME, "namespace": deployment["metadata"]["namespace"]}}
    env = {}
    for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]  # only fieldRefs are used
            section, key = field.split(".")
            env[e["name"]] = pod[section][key]
    return env


MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
MONITORING_APIS = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in MONITORING_KINDS)
"""The Prometheus Operator's kinds the monitoring kit renders where the cluster serves them."""
MONITORING_PARTS = ("podMonitor", "serviceMonitor", "rules", "dashboard")


def with_monitoring(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``values`` with every part of the monitoring kit enabled (its own settings kept)."""
    values = dict(values or {})
    monitoring = dict(values.get("monitoring") or {})
    for part in MONITORING_PARTS:
        monitoring[part] = {"enabled": True} | (monitoring.get(part) or {})
    return values | {"monitoring": monitoring}


def rule_groups(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's PrometheusRule as a Prometheus rule file (``{"groups": [...]}``)."""
    objects = template(with_monitoring(values), api_versions=MONITORING_APIS)
    return {"groups": one(objects, "PrometheusRule")["spec"]["groups"]}
