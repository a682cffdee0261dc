"""Canary releases on the local node: how long they take, how fast they roll back, how honest
the weights are, and what an analysis costs the operator.

    make cluster-up && .venv/bin/python bench/canary.py [--pods 10]

Needs the full node (``make cluster-up``); it builds and loads the images and installs the chart
like the e2e tier, in the namespace ``bench-canary`` (deleted at the end). One run measures:

- promotion: steps 10 % and 50 % (30 s pauses, analysis every 10 s), from the spec change to
  Succeeded, split into the build of the new artifact and the release itself;
- rollback: a version that fails on part of the inputs; from its first failed analysis (and from
  the moment its pods were ready) to the rollback, in analysis intervals (target: at most
  failureLimit + 1);
- weights: with ``--pods`` pods, the share of requests each step's canary pods actually served
  (from the pods' own request counters, from 3 s after its pods are ready to the end of the
  step) against the weight asked for (target: within 5 points);
- operator CPU per analysis: ``modelship_operator_analysis_cpu_seconds`` (process CPU time of one
  scrape-parse-judge of every pod of both revisions) from the operator's metrics.

All load comes from ``hey`` through the client Service, bounded in time and rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]
from canary_models import BAD_X, GOOD_X, calibration_rows, canary_model  # noqa: E402
from localkube import Cluster, stack  # noqa: E402
from localkube.load import HeyLoad, infer_body, wait_until_serving  # noqa: E402
from modelship.domain.analysis import parse_metrics  # noqa: E402

NS = "bench-canary"
INTERVAL_S = 10
PAUSE_S = 30
"""Each step's pause: long enough to count what the canary served over most of it."""
SETTLE_S = 3.0
FAILURE_LIMIT = 2
RESOURCES = {"requests": {"cpu": "20m", "memory": "128Mi"},
             "limits": {"cpu": "500m", "memory": "512Mi"}}  # fmt: skip


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _spec(uri: str, sha: str, calibration: str, pods: int, **rollout: Any) -> dict[str, Any]:
    return {
        "model": {"uri": uri, "sha256": sha},
        "optimization": {"precision": "fp32", "calibration": {"uri": calibration, "samples": 32}},
        "serving": {"resources": RESOURCES, "grpc": False},
        "scaling": {"minReplicas": pods, "maxReplicas": pods},
        "rollout": {
            "steps": [{"weight": 10, "pause": f"{PAUSE_S}s"},
                      {"weight": 50, "pause": f"{PAUSE_S}s"}],
            "scaleDownDelay": "5s",
            "analysis": {"interval": f"{INTERVAL_S}s", "minRequests": 10,
                         "failureLimit": FAILURE_LIMIT},
        } | rollout,
    }  # fmt: skip


def _canary(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(stack.get_mdep(cluster, NS, name).get("status", {}).get("canary") or {})


def _requests_by_pod(cluster: Cluster, name: str) -> dict[str, tuple[str, float]]:
    """uid -> (revision, requests served so far) of every pod answering on /metrics."""
    pods = json.loads(cluster.kubectl(
        "get", "pods", "-n", NS, "-l", f"modelship.io/deployment={name}", "-o", "json",
    ).stdout)["items"]  # fmt: skip
    out: dict[str, tuple[str, float]] = {}
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        revision = pod["metadata"]["labels"].get("modelship.io/revision", "?")
        if not ip:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=3) as response:
                snapshot = parse_metrics(response.read().decode())
        except OSError:
            continue
        out[pod["metadata"]["uid"]] = (revision, snapshot.requests)
    return out


def _served(
    before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]
) -> dict[str, float]:
    """Requests served between two reads by revision, over the pods present in both (pods
    that went away or restarted in between are left out, as a rate() would)."""
    out: dict[str, float] = {}
    for uid, (revision, count) in after.items():
        if uid in before and count >= before[uid][1]:
            out[revision] = out.get(revision, 0.0) + count - before[uid][1]
    return out


def promotion(cluster: Cluster, models: dict[str, tuple[str, str]], pods: int) -> dict[str, Any]:
    name = "bench-good"
    cal = models["calibration"][0]
    stack.apply_mdep(cluster, NS, name, _spec(*models["v1"], cal, pods))
    stack.wait_for(cluster, NS, name, lambda o: stack.is_ready(o)
                   and o["status"].get("readyReplicas") == pods, "Ready", 900)  # fmt: skip
    url = f"{stack.service_url(cluster, NS, name)}/v2/models/{name}/infer"
    wait_until_serving(url, infer_body(GOOD_X))
    with HeyLoad(url, infer_body(GOOD_X), concurrency=4, qps_per_worker=25,
                 duration_s=1200) as load:  # fmt: skip
        changed = time.monotonic()
        stack.apply_mdep(cluster, NS, name, _spec(*models["v2"], cal, pods))
        started = None
        # Per step: the first read once the canary's pods are all ready plus SETTLE_S (for the
        # EndpointSlice and kube-proxy to catch up), and the last read while still at the step.
        first: dict[int, dict[str, tuple[str, float]]] = {}
        last: dict[int, dict[str, tuple[str, float]]] = {}
        ready_since: dict[int, float] = {}
        info: dict[int, dict[str, Any]] = {}
        while True:
            canary = _canary(cluster, name)
            if started is None and canary.get("phase") in ("Progressing", "Paused"):
                started = time.monotonic()
            step, ready = canary.get("step"), canary.get("readyReplicas", 0)
            at_weight = (
                canary.get("phase") == "Progressing" and ready and ready == canary.get("replicas")
            )
            if at_weight and isinstance(step, int):
                since = ready_since.setdefault(step, time.monotonic())
                if time.monotonic() - since >= SETTLE_S:
                    counts = _requests_by_pod(cluster, name)
                    first.setdefault(step, counts)
                    last[step] = counts
                    info[step] = {"revision": canary["revision"], "asked": canary["desiredWeight"],
                                  "actual": canary["weight"]}  # fmt: skip
            if canary.get("phase") == "Succeeded":
                break
            if canary.get("phase") == "Aborted":
                raise RuntimeError(f"the good version was rolled back: {canary.get('message')}")
            time.sleep(0.5)
        shares = []
        for step in sorted(first):
            served = _served(first[step], last[step])
            total = sum(served.values())
            share = 100 * served.get(info[step]["revision"], 0) / total if total else 0.0
            shares.append({"step": step + 1, "asked": info[step]["asked"],
                           "actual": info[step]["actual"], "served": round(share, 1),
                           "requests": int(total)})  # fmt: skip
        promoted = time.monotonic()
        result = load.stop()
    cluster.kubectl("delete", "mdep", name, "-n", NS, "--wait=true")
    return {
        "spec change to release start (build) s": round((started or promoted) - changed, 1),
        "release start to promoted s": round(promoted - (started or changed), 1),
        "spec change to promoted s": round(promoted - changed, 1),
        "requests": result.total,
        "failed requests": result.failed,
        "weights": shares,
    }


def rollback(cluster: Cluster, models: dict[str, tuple[str, str]], pods: int) -> dict[str, Any]:
    name = "bench-bad"
    cal = models["calibration"][0]
    stack.apply_mdep(cluster, NS, name, _spec(*models["v1"], cal, pods))
    stack.wait_for(cluster, NS, name, stack.is_ready, "Ready", 900)
    url = f"{stack.service_url(cluster, NS, name)}/v2/models/{name}/infer"
    wait_until_serving(url, infer_body(GOOD_X))
    with HeyLoad(url, infer_body(GOOD_X), concurrency=2, qps_per_worker=20,
                 duration_s=900), HeyLoad(url, infer_body(BAD_X), concurrency=2,
                                          qps_per_worker=20, duration_s=900):  # fmt: skip
        stack.apply_mdep(cluster, NS, name, _spec(*models["broken"], cal, pods))
        ready_at = first_fail = None
        while True:
            canary = _canary(cluster, name)
            now = time.monotonic()
            if ready_at is None and canary.get("readyReplicas"):
                ready_at = now
            verdict = (canary.get("lastAnalysis") or {}).get("verdict")
            if first_fail is None and verdict == "Fail":
                first_fail = now
            if canary.get("phase") == "Aborted":
                aborted = now
                break
            time.sleep(0.25)
    cluster.kubectl("delete", "mdep", name, "-n", NS, "--wait=true")
    if ready_at is None or first_fail is None:
        raise RuntimeError(f"rolled back without a failed analysis: {canary}")
    return {
        "canary pods ready to rollback, intervals": round((aborted - ready_at) / INTERVAL_S, 2),
        "first failed analysis to rollback, intervals": round(
            (aborted - first_fail) / INTERVAL_S, 2
        ),
        "target, intervals": FAILURE_LIMIT + 1,
        "message": canary.get("message", ""),
    }


def operator_cpu(cluster: Cluster) -> dict[str, Any]:
    pods = json.loads(cluster.kubectl(
        "get", "pods", "-n", "modelship-system", "-l", "app.kubernetes.io/component=operator",
        "-o", "json",
    ).stdout)["items"]  # fmt: skip
    figures: dict[str, Any] = {}
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        try:
            with urllib.request.urlopen(f"http://{ip}:9095/metrics", timeout=3) as response:
                text = response.read().decode()
        except OSError:
            continue
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("modelship_operator_analysis_cpu_seconds_") and "bucket" not in line
        }
        count = values.get("modelship_operator_analysis_cpu_seconds_count", 0)
        if count:
            total = values["modelship_operator_analysis_cpu_seconds_sum"]
            figures = {"analyses": int(count), "CPU ms per analysis": round(1e3 * total / count, 2)}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10, help="pods of each ModelDeployment")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()
    from localkube.cluster import STATE_FILE

    directory = ROOT / ".cache" / "cluster"
    if not (directory / STATE_FILE).exists():
        print("no running node: run `make cluster-up` first", file=sys.stderr)
        return 2
    cluster = Cluster.attach(directory)
    cluster.kubectl("create", "namespace", NS, check=False)
    stack.build_and_load_images(cluster)
    stack.helm_install(cluster, namespaces=["default", stack.E2E_NAMESPACE, NS])
    work = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    models: dict[str, tuple[str, str]] = {}
    for key, seed, kind in (("v1", 11, {}), ("v2", 12, {}),
                            ("broken", 12, {"fails_on_positive": True})):  # fmt: skip
        path = canary_model(work / f"{key}.onnx", seed, **kind)  # type: ignore[arg-type]
        models[key] = (stack.seed_model(cluster, NS, path, f"bench/{key}.onnx"), _sha256(path))
    np.savez(work / "calibration.npz", x=calibration_rows())
    models["calibration"] = (
        stack.seed_model(cluster, NS, work / "calibration.npz", "bench/calibration.npz"),
        "",
    )
    figures = {
        "promotion": promotion(cluster, models, args.pods),
        "rollback": rollback(cluster, models, max(2, args.pods // 5)),
        "operator": operator_cpu(cluster),
    }
    print(json.dumps(figures, indent=2))
    for row in figures["promotion"]["weights"]:
        off = abs(row["served"] - row["asked"])
        print(f"step {row['step']}: asked {row['asked']}%, pods {row['actual']}%, served "
              f"{row['served']}% of {row['requests']} requests ({off:.1f} points off)")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
