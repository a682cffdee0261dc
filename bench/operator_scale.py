"""Operator scale benchmark: N ModelDeployments on the local control plane.

For each N (default 100 500 1000) on a fresh control plane (etcd, kube-apiserver,
kube-controller-manager; no kubelet, so pods stay Pending and the end state is phase Deploying):

- time to steady state: from the first apply until every ModelDeployment reports
  observedGeneration 1, phase Deploying and status.replicas 1 (Deployment, ReplicaSet and pod
  exist; the Service and HPA are applied before the Deployment's status can say so);
- operator RSS (VmRSS of ``python -m modelship``) at steady state;
- API requests per object sent by the reconciler (the operator's
  ``modelship_operator_api_requests_total``, watches excluded) and the API server's own
  ``apiserver_request_total`` delta per object (all clients: the controller-manager included);
- writes during idle resyncs: with MODELSHIP_RESYNC_SECONDS=15, requests the operator sends in the
  45 s after steady state (target: 0 writes).

Every ModelDeployment pins the same model and the artifact index is pre-seeded, so no build Jobs
run: this measures the operator, not the builder.

    .venv/bin/python bench/operator_scale.py [--sizes 100 500 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from kubernetes import client, config  # noqa: E402

from localkube import Cluster  # noqa: E402
from localkube.ports import free_port  # noqa: E402
from modelship.api import v1alpha1 as api  # noqa: E402
from modelship.api.artifact import ArtifactStore, BuildPlan  # noqa: E402
from modelship.api.v1alpha1 import ModelSource  # noqa: E402

NS = "bench"
SHA = "ef" * 32
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
IDLE_WINDOW_S = 45.0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def operator_requests(port: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in scrape(f"http://127.0.0.1:{port}/metrics").splitlines():
        m = re.match(r'modelship_operator_api_requests_total\{method="(\w+)"\} (\S+)', line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def apiserver_requests(api: client.ApiClient) -> float:
    text = api.call_api(
        "/metrics",
        "GET",
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    ).data.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def seed_index(core: client.CoreV1Api) -> None:
    plan = BuildPlan(
        source=ModelSource(uri="s3://models/bench/model.onnx", sha256=SHA),
        store=ArtifactStore(uri="file:///artifacts"),
    )
    digest = plan.pinned_digest
    assert digest is not None
    hex_ = digest.split(":")[1]
    # In the namespace's own part of the store, where the operator looks for it.
    uri = f"file:///artifacts/{NS}/{hex_}"
    entry = json.dumps({"digest": digest, "uri": uri, "variant": "fp32"})
    core.create_namespaced_config_map(
        NS,
        {
            # As the operator writes it: it trusts only an index with its own label.
            "metadata": {
                "name": "modelship-artifacts",
                "labels": {"app.kubernetes.io/managed-by": "modelship"},
            },
            "data": {f"sha256-{hex_}": entry},
        },
    )


def create_all(custom: client.CustomObjectsApi, n: int) -> None:
    def one(i: int) -> None:
        body = {
            "apiVersion": "modelship.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": f"m{i:04d}"},
            "spec": {"model": {"uri": "s3://models/bench/model.onnx", "sha256": SHA}},
        }
        custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, NS, api.PLURAL, body
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def settled(custom: client.CustomObjectsApi, n: int) -> int:
    items = custom.list_namespaced_custom_object(
        api.GROUP, api.VERSION, NS, api.PLURAL
    )["items"]
    return sum(
        1
        for o in items
        if (o.get("status") or {}).get("observedGeneration") == 1
        and (o.get("status") or {}).get("phase") == "Deploying"
        and (o.get("status") or {}).get("replicas") == 1  # the ReplicaSet made its pod
    )


def run(n: int, workdir: Path) -> dict[str, Any]:
    cluster = Cluster(workdir / f"cluster-{n}")
    cluster.start()
    op: subprocess.Popen[bytes] | None = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modelship.io")
        cluster.kubectl("create", "namespace", NS)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        seed_index(core)
        port = free_port()
        env = os.environ | {
            "KUBECONFIG": str(cluster.kubeconfig),
            "MODELSHIP_METRICS_PORT": str(port),
            "MODELSHIP_RESYNC_SECONDS": "15",
            "MODELSHIP_POLL_SECONDS": "10",
            "MODELSHIP_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
        log = (workdir / f"operator-{n}.log").open("wb")
        op = subprocess.Popen([sys.executable, "-m", "modelship"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                operator_requests(port)
                break
            except OSError:
                time.sleep(0.5)
        server_before = apiserver_requests(api)
        started = time.monotonic()
        create_all(custom, n)
        done = 0
        limit = started + max(300.0, n * 1.0)
        while time.monotonic() < limit:
            done = settled(custom, n)
            if done == n:
                break
            time.sleep(2)
        steady_s = time.monotonic() - started
        rss = rss_mib(op.pid)
        at_steady = operator_requests(port)
        server_after = apiserver_requests(api)
        time.sleep(IDLE_WINDOW_S)  # the measurement window itself, not a synchronisation
        idle = operator_requests(port)
        idle_delta = {k: idle.get(k, 0) - at_steady.get(k, 0) for k in idle}
        return {
            "objects": n,
            "settled": done,
            "steady_state_s": round(steady_s, 1),
            "rss_mib": round(rss, 1),
            "rss_mib_after_idle": round(rss_mib(op.pid), 1),
            "operator_requests_per_object": round(sum(at_steady.values()) / n, 1),
            "operator_requests_by_method": at_steady,
            "apiserver_requests_per_object": round((server_after - server_before - n) / n, 1),
            "idle_window_s": IDLE_WINDOW_S,
            "idle_operator_reads": sum(v for k, v in idle_delta.items() if k == "GET"),
            "idle_operator_writes": sum(v for k, v in idle_delta.items() if k in WRITE_METHODS),
        }
    finally:
        if op is not None:
            op.terminate()
            op.wait(timeout=30)
        cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        for n in args.sizes:
            print(json.dumps(run(n, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
