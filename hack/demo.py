"""``make demo``: from nothing to a served, optimized MiniLM on the local node, end to end.

cluster up -> build and load images -> helm install -> copy the model into a PVC ->
kubectl apply examples/minilm.yaml -> wait for Ready (printing progress) -> a real inference
through the Service -> the answer -> a second variant of the model released as a canary under a
small load, each step's actual weight and verdict printed until it is promoted ->
``kubectl get mdep`` and ``kubectl modelship status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from localkube import stack
from localkube.binaries import REPO_ROOT
from localkube.cluster import STATE_FILE, Cluster, log
from localkube.load import HeyLoad

CLUSTER_DIR = Path(os.environ.get("MODELSHIP_CLUSTER_DIR", REPO_ROOT / ".cache" / "cluster"))
MODELS = Path(os.environ.get("MODELSHIP_MODELS_DIR", REPO_ROOT.parent / "shared" / "models"))
MINILM = MODELS / "all-MiniLM-L6-v2"
SENTENCE = "Modelship turns a trained model into a fast, safely released inference service."


def cluster() -> Cluster:
    if (CLUSTER_DIR / STATE_FILE).exists():
        attached = Cluster.attach(CLUSTER_DIR)
        if attached.with_node:
            log(f"reusing the running cluster in {CLUSTER_DIR}")
            return attached
        attached.destroy()
    started = Cluster(CLUSTER_DIR, with_node=True)
    started.start()
    return started


def infer(url: str, model: str, sentence: str) -> np.ndarray:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    ids = tokenizer.encode(sentence).ids
    n = len(ids)
    body = {
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, n], "data": ids},
            {"name": "attention_mask", "datatype": "INT64", "shape": [1, n], "data": [1] * n},
            {"name": "token_type_ids", "datatype": "INT64", "shape": [1, n], "data": [0] * n},
        ]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    output = next(o for o in answer["outputs"] if o["name"] == "sentence_embedding")
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])[0]


def reference(sentence: str) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    ids = np.asarray([Tokenizer.from_file(str(MINILM / "tokenizer.json")).encode(sentence).ids])
    session = ort.InferenceSession(str(MINILM / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    return np.asarray(session.run(["sentence_embedding"], feeds)[0][0])


def request_body(sentence: str) -> str:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(MINILM / "tokenizer.json")).encode(sentence).ids
    n = len(ids)
    return json.dumps(
        {
            "inputs": [
                {"name": "input_ids", "datatype": "INT64", "shape": [1, n], "data": ids},
                {"name": "attention_mask", "datatype": "INT64", "shape": [1, n], "data": [1] * n},
                {"name": "token_type_ids", "datatype": "INT64", "shape": [1, n], "data": [0] * n},
            ]
        }
    )


def release_second_variant(local: Cluster, url: str) -> bool:
    """Patch the spec to another optimization variant and follow the canary to the end."""
    before = stack.get_mdep(local, "default", "minilm")["status"]["artifact"].get("variant")
    variant = "fp32" if before != "fp32" else "int8-dynamic"
    log(f"releasing a second version: precision {variant} (serving {before}), under load")
    patch = json.dumps({"spec": {"optimization": {"precision": variant}}})
    with HeyLoad(f"{url}/v2/models/minilm/infer", request_body(SENTENCE), concurrency=1,
                 qps_per_worker=6, duration_s=1800) as load:  # fmt: skip
        earlier = (stack.get_mdep(local, "default", "minilm")["status"].get("canary") or {})
        local.kubectl("patch", "mdep", "minilm", "-n", "default", "--type=merge", "-p", patch)
        canary: dict[str, object] = {}
        last: tuple[object, ...] = ()
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            obj = stack.get_mdep(local, "default", "minilm")
            canary = obj.get("status", {}).get("canary") or {}
            if not canary or canary.get("startedAt") == earlier.get("startedAt"):
                time.sleep(2)  # still building the new variant
                continue
            analysis: dict[str, object] = canary.get("lastAnalysis") or {}  # type: ignore[assignment]
            line = (canary.get("phase"), canary.get("step"), canary.get("weight"),
                    analysis.get("time"))  # fmt: skip
            if line != last:
                log(
                    f"{canary.get('phase')}: step {int(str(canary.get('step', 0))) + 1}, weight "
                    f"{canary.get('weight')}% (asked {canary.get('desiredWeight')}%); last "
                    f"analysis {analysis.get('verdict', '-')}: {analysis.get('message', '-')}"
                )
                last = line
            if canary.get("phase") == "Succeeded" and stack.is_ready(obj):
                break
            if canary.get("phase") == "Aborted":
                log(f"the release was rolled back: {canary.get('message')}")
                break
            time.sleep(2)
        result = load.stop()
    log(f"load during the release: {result.total} requests, {result.failed} failed")
    return canary.get("phase") == "Succeeded" and result.failed == 0


def main() -> int:
    started = time.monotonic()
    if not (MINILM / "model.onnx").exists():
        print(f"no model at {MINILM}: set MODELSHIP_MODELS_DIR to the shared models folder")
        return 2
    local = cluster()
    stack.build_and_load_images(local)
    stack.helm_install(local, namespaces=["default"])
    stack.seed_model(local, "default", MINILM / "model.onnx", "all-MiniLM-L6-v2/model.onnx")
    # 64 real sentences, tokenized: the builder validates variants (and calibrates) on them.
    stack.seed_model(local, "default", MINILM / "reference.npz", "all-MiniLM-L6-v2/calibration.npz")
    local.kubectl("apply", "-n", "default", "-f", str(REPO_ROOT / "examples" / "minilm.yaml"))
    log("applied examples/minilm.yaml; waiting for Ready (the build Job optimizes the model first)")
    obj = stack.wait_for(local, "default", "minilm", stack.is_ready, "Ready", timeout_s=1200)
    artifact = obj["status"].get("artifact", {})
    log(f"artifact {artifact.get('digest', '?')[:19]}… variant {artifact.get('variant')}")
    url = stack.service_url(local, "default", "minilm")
    embedding = infer(url, "minilm", SENTENCE)
    expected = reference(SENTENCE)
    cosine = float(embedding @ expected / (np.linalg.norm(embedding) * np.linalg.norm(expected)))
    print()
    print(f"POST {url}/v2/models/minilm/infer  ({SENTENCE!r})")
    print(f"  sentence_embedding[:6] = {np.round(embedding[:6], 4).tolist()}  (384 values)")
    print(f"  cosine to the original fp32 model run here: {cosine:.4f}")
    print()
    released = release_second_variant(local, url)
    print()
    print(local.kubectl("get", "mdep", "-n", "default").stdout)
    plugin = [sys.executable, "-m", "modelship.plugin", "--kubeconfig", str(local.kubeconfig)]
    print(subprocess.run([*plugin, "-n", "default", "status", "minilm"], capture_output=True,
                         text=True, check=False).stdout)  # fmt: skip
    log(f"demo finished in {time.monotonic() - started:.0f}s; `make cluster-down` removes it all")
    return 0 if cosine > 0.98 and released else 1


if __name__ == "__main__":
    sys.exit(main())
