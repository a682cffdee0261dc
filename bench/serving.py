"""Serving benchmark: our runtime server vs the in-process onnxruntime limit vs Python peers.

One run, same model files, same onnxruntime thread settings, same load generator (wrk, a compiled
closed-loop client: one connection per concurrent client, one wrk thread). For every model and
server it records throughput, p50/p99 latency at concurrency 1, 8 and 32 and the server's
CPU-seconds per request (utime+stime of the server's process tree), repeated --repeats times
(servers interleaved per repeat so drift hits everyone alike) and reports median and spread.

Peers (MLServer with a custom ONNX runtime, KServe's Python ModelServer, Triton with its Python
backend) run from a separate venv each (.bench-venv/{mlserver,kserve,triton}; gitignored) because
their dependencies conflict with ours and with each other (nvidia-pytriton 0.7.0 needs numpy < 2,
our runtime pins numpy 2.4.6):

    python -m venv .bench-venv/mlserver && .bench-venv/mlserver/bin/pip install mlserver==1.7.1 \
        onnxruntime==1.31.1
    python -m venv .bench-venv/kserve && .bench-venv/kserve/bin/pip install kserve==0.21.0 \
        onnxruntime==1.31.1
    python -m venv .bench-venv/triton && .bench-venv/triton/bin/pip install \
        nvidia-pytriton==0.7.0 onnxruntime==1.31.1

    .venv/bin/python bench/serving.py --repeats 3 --duration 5 --out bench/results/serving.json

Triton (servers ``triton`` and ``triton-batch``): the nvidia-pytriton wheel carries tritonserver
2.51 (``pytriton/tritonserver/bin/tritonserver``) and its Python backend; PyTriton itself is not
used. Per case the benchmark writes a model repository into its temp dir, one model ``model``:

- ``config.pbtxt``: ``backend: "python"``, one CPU instance, inputs and outputs read from the
  ONNX file's signature (symbolic dims as -1; a tensor of shape ``[N]`` in a batching model as
  ``dims: [ 1 ] reshape: { shape: [ ] }``, since Triton wants a dimension besides the batch one).
  ``triton-batch``: ``max_batch_size: 32`` and ``dynamic_batching {
  max_queue_delay_microseconds }`` set to our ``--max-delay-ms`` (``--batch-delay-ms``);
  ``triton``: ``max_batch_size: 0``, no batcher. ``parameters`` carry the ONNX path and our
  server's session settings (2 intra-op threads, 1 inter-op thread, sequential, spinning on).
- ``1/model.py``: a copy of ``bench/triton_model.py``, one onnxruntime session; ``execute`` runs
  the batch of requests Triton hands it as one call (inputs joined along axis 0, outputs split
  back per request).

The backend directory is built in the temp dir as well: the wheel's ``backends/python``
(``libtriton_python.so``, ``triton_python_backend_utils.py``) plus
``python_backend_stubs/<python version>/triton_python_backend_stub``. The server runs with the
Triton venv's ``bin`` first on PATH (the stub's embedded interpreter finds the venv, hence
onnxruntime, through it) and ``LD_LIBRARY_PATH`` set to that interpreter's LIBDIR (the stub links
libpython) and the wheel's ``nvidia_pytriton.libs`` (the stub's RPATH reaches them only from its
place inside the wheel), HTTP on a free loopback port, gRPC and metrics off; its log goes to
``<temp dir>/triton.log``. It counts as ready when ``/v2/models/model/ready`` answers 200 (as for
every server; Triton's ``/v2/health/ready`` turns 200 at the same moment with one model) and stops
on SIGTERM. The load generator and the OIP v2 JSON bodies are those of every other server. Its
CPU per request is measured like everyone's: the stub processes (one per model instance) are
children of tritonserver, so they are in the process tree that is summed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "tests" / "runtime")]
import modelfactory  # noqa: E402

from localkube.ports import free_port  # noqa: E402

MODELS = Path(os.environ.get("MODELSHIP_MODELS_DIR", REPO.parent / "shared" / "models"))
MINILM = MODELS / "all-MiniLM-L6-v2"
CONCURRENCY = (1, 8, 32)
THREADS = 2
BATCH_DELAY_MS = 10.0
"""Batch window of every batching server (--batch-delay-ms): long enough for 32 closed-loop
clients to re-send after a batch (parsing 32 requests takes ~5 ms here), so batches fill."""


# --- models and request bodies -------------------------------------------------------------


def digits_mlp(path: Path) -> tuple[Path, np.ndarray]:
    """An MLP trained on sklearn's digits (the runtime tests' graph); returns (model, one row)."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x, y)
    weights = [clf.coefs_[0], clf.intercepts_[0], clf.coefs_[1], clf.intercepts_[1]]
    return modelfactory.mlp_from_weights(path, weights, label=False), x[:1]


def minilm_feeds(length: int, batch: int = 1) -> dict[str, np.ndarray]:
    """Real token ids from the reference sentences, concatenated to exactly ``length`` tokens."""
    reference = np.load(MINILM / "reference.npz")
    ids = reference["input_ids"]
    mask = reference["attention_mask"]
    tokens = [
        int(t)
        for row, m in zip(ids, mask, strict=True)
        for t in row[1:][m[1:] == 1]
        if t not in (101, 102, 0)
    ]
    row = np.array([101, *tokens[: length - 2], 102], dtype=np.int64)
    assert row.size == length
    ids = np.tile(row, (batch, 1))
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


_DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def oip_body(feeds: dict[str, np.ndarray]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": _DATATYPE[a.dtype],
                    "data": a.ravel().tolist(),
                }
                for n, a in feeds.items()
            ]
        }
    ).encode()


@dataclass
class Case:
    name: str
    model: Path
    feeds: dict[str, np.ndarray]
    batch_feeds: dict[str, np.ndarray]


# --- the in-process limit ------------------------------------------------------------------


def session(model: Path, spinning: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def limit(case: Case, seconds: float) -> dict[str, Any]:
    """items/s of a bare session.run loop at batch 1 and 32; best of spinning on and off."""
    result: dict[str, Any] = {}
    for label, feeds in (("batch1", case.feeds), ("batch32", case.batch_feeds)):
        best: dict[str, Any] | None = None
        for spinning in (False, True):
            sess = session(case.model, spinning)
            for _ in range(5):
                sess.run(None, feeds)
            times: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                start = time.perf_counter()
                sess.run(None, feeds)
                times.append(time.perf_counter() - start)
            rows = next(iter(feeds.values())).shape[0]
            entry = {
                "items_per_s": rows * len(times) / sum(times),
                "p50_ms": 1000 * float(np.percentile(times, 50)),
                "p99_ms": 1000 * float(np.percentile(times, 99)),
                "spinning": spinning,
            }
            if best is None or entry["items_per_s"] > best["items_per_s"]:
                best = entry
        result[label] = best
    return result


# --- servers -------------------------------------------------------------------------------


MLSERVER_RUNTIME = """
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = {threads}
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {{i.name: NumpyCodec.decode_input(i) for i in payload.inputs}}
        outputs = self.session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self.output_names, outputs)],
        )
"""

KSERVE_SERVER = """
import logging
import sys
import uuid

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = {threads}
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None):
        feeds = {{i.name: i.as_numpy() for i in payload.inputs}}
        outputs = []
        for name, array in zip(self.output_names, self.session.run(None, feeds)):
            out = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            out.set_data_from_numpy(array, binary_data=False)
            outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=outputs,
                             response_id=payload.id or uuid.uuid4().hex)


if __name__ == "__main__":
    # Per-request access and latency logs off: ours logs none either.
    logging.getLogger("uvicorn.access").addFilter(lambda record: False)
    kserve.ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1,
                       enable_grpc=False, enable_latency_logging=False,
                       ).start([OnnxModel("model", sys.argv[1])])
"""


@dataclass
class Server:
    name: str
    start: Callable[[Path, int, Path], subprocess.Popen[bytes]]


def ours(
    batch_delay_ms: float | None, tree: Path | None = None
) -> Callable[[Path, int, Path], subprocess.Popen[bytes]]:
    """Our server; batching (at most 32, this window) unless ``batch_delay_ms`` is None. With
    ``tree`` (a checkout of another commit, ``--baseline``) its code runs instead of this one's,
    in the same interpreter and venv."""

    def start(model: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
        model_dir = work / f"ours-{hashlib.sha256(str(model).encode()).hexdigest()[:8]}"
        model_dir.mkdir(exist_ok=True)
        link = model_dir / "model.onnx"
        if not link.exists():
            link.symlink_to(model)
        args = [
            sys.executable,
            "-m",
            "modelship_runtime",
            "serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--rest-port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--intra-op-threads",
            str(THREADS),
            "--log-level",
            "warning",
        ]
        if batch_delay_ms is not None:
            args += ["--max-batch-size", "32", "--max-delay-ms", str(batch_delay_ms)]
        env = None
        if tree is not None:  # PYTHONPATH comes before the venv's editable install of this tree
            env = {**os.environ, "PYTHONPATH": f"{tree / 'runtime-image'}:{tree / 'operator'}"}
        return subprocess.Popen(
            args, cwd=tree or REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    return start


def mlserver(
    peer_python: Path, batch_delay_ms: float | None
) -> Callable[..., subprocess.Popen[bytes]]:
    def start(model: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
        root = work / ("mlserver" if batch_delay_ms is None else "mlserver-batch")
        (root / "model").mkdir(parents=True, exist_ok=True)
        (root / "peer_runtime.py").write_text(MLSERVER_RUNTIME.format(threads=THREADS))
        settings = {
            "http_port": port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": 0,
            "debug": False,
        }
        (root / "settings.json").write_text(json.dumps(settings))
        model_settings: dict[str, Any] = {
            "name": "model",
            "implementation": "peer_runtime.OnnxModel",
            "parameters": {"uri": str(model)},
        }
        if batch_delay_ms is not None:
            model_settings.update({"max_batch_size": 32, "max_batch_time": batch_delay_ms / 1000})
        (root / "model" / "model-settings.json").write_text(json.dumps(model_settings))
        mlserver_bin = peer_python.parent / "mlserver"
        return subprocess.Popen(
            [str(mlserver_bin), "start", str(root)],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    return start


def kserve(peer_python: Path) -> Callable[..., subprocess.Popen[bytes]]:
    def start(model: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
        script = work / "kserve_server.py"
        script.write_text(KSERVE_SERVER.format(threads=THREADS))
        return subprocess.Popen(
            [str(peer_python), str(script), str(model), str(port), str(free_port())],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    return start


_TRITON_DATATYPES = {
    1: "TYPE_FP32",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    11: "TYPE_FP64",
}
"""ONNX TensorProto element types -> Triton config data types (those our models use and a few)."""

TRITON_LOCATE = """
import importlib.util, sys, sysconfig
print(importlib.util.find_spec("pytriton").submodule_search_locations[0])
print(sysconfig.get_config_var("LIBDIR"))
print(f"{sys.version_info.major}.{sys.version_info.minor}")
"""
"""Run by the Triton venv's interpreter: the wheel's directory, libpython's, the stub version."""


def triton_config(model: Path, batch_delay_ms: float | None) -> str:
    """``config.pbtxt`` of the Python-backend model serving ``model`` (see the module docstring);
    batching at most 32 with this queue delay unless ``batch_delay_ms`` is None."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    batched = batch_delay_ms is not None

    def tensor(value: Any) -> str:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        entry = f'{{ name: "{value.name}" data_type: {_TRITON_DATATYPES[kind.elem_type]}'
        if batched and len(dims) == 1:
            return entry + " dims: [ 1 ] reshape: { shape: [ ] } }"
        shown = dims[1:] if batched else dims
        return entry + f" dims: [ {', '.join(str(d) for d in shown)} ] }}"

    inputs = ",\n  ".join(tensor(v) for v in graph.input if v.name not in weights)
    outputs = ",\n  ".join(tensor(v) for v in graph.output)
    parameters = {
        "onnx_model": str(model),
        "intra_op_threads": str(THREADS),
        "allow_spinning": "1",
    }
    lines = [
        'name: "model"',
        'backend: "python"',
        f"max_batch_size: {32 if batched else 0}",
    ]
    if batch_delay_ms is not None:
        delay_us = round(batch_delay_ms * 1000)
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}")
    lines += [
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        f"input [\n  {inputs}\n]",
        f"output [\n  {outputs}\n]",
    ]
    lines += [
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        for key, value in parameters.items()
    ]
    return "\n".join(lines) + "\n"


def triton(
    peer_python: Path, batch_delay_ms: float | None
) -> Callable[..., subprocess.Popen[bytes]]:
    """Triton (the nvidia-pytriton wheel's tritonserver), Python backend running onnxruntime;
    dynamic batching unless ``batch_delay_ms`` is None."""

    def start(model: Path, port: int, work: Path) -> subprocess.Popen[bytes]:
        if not peer_python.exists():
            raise RuntimeError(f"no {peer_python}: make the Triton venv (see the docstring)")
        located = subprocess.run(
            [str(peer_python), "-c", TRITON_LOCATE], capture_output=True, text=True, check=True
        ).stdout.split()
        wheel, libdir, python_version = Path(located[0]) / "tritonserver", located[1], located[2]
        backend = work / "triton-backends" / "python"
        if not backend.exists():
            backend.mkdir(parents=True)
            for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
                shutil.copy2(wheel / "backends" / "python" / name, backend)
            stub = wheel / "python_backend_stubs" / python_version / "triton_python_backend_stub"
            shutil.copy2(stub, backend)
        variant = "single" if batch_delay_ms is None else "batch"
        repo = work / f"triton-{variant}-{hashlib.sha256(str(model).encode()).hexdigest()[:8]}"
        (repo / "model" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "bench" / "triton_model.py", repo / "model" / "1" / "model.py")
        (repo / "model" / "config.pbtxt").write_text(triton_config(model, batch_delay_ms))
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(peer_python.parent), env.get("PATH", "")])
        # The stub's RPATH finds the wheel's bundled libraries (libcudart) only from its place
        # in the wheel; copied here, it needs them named.
        bundled = wheel.parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [libdir, str(bundled), env.get("LD_LIBRARY_PATH", "")]
        )
        args = [
            str(wheel / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={backend.parent}",
            f"--cache-directory={wheel / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--log-verbose=0",
        ]
        with (work / "triton.log").open("ab") as log:
            return subprocess.Popen(args, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)

    return start


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/models/model/ready", timeout=2
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on :{port} not ready within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and all its descendants (live ones), in seconds."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        current = todo.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / tick
        todo.extend(children.get(current, []))
    return total


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
"""


def run_wrk(port: int, lua: Path, concurrency: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{round(seconds)}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}/v2/models/model/infer",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = {"errors": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if line.strip().startswith(("50%", "99%")):
            result[f"p{parts[0][:-1]}_ms"] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            result["req_per_s"] = float(parts[1])
        elif "requests in" in line:
            result["requests"] = float(parts[0])
        elif line.strip().startswith("Non-2xx"):
            result["errors"] += float(parts[-1])
        elif line.strip().startswith("Socket errors"):
            result["errors"] += sum(float(p.rstrip(",")) for p in parts[3::2])
    return result


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)


def measure(server: Server, case: Case, work: Path, seconds: float) -> dict[int, dict[str, float]]:
    port = free_port()
    proc = server.start(case.model, port, work)
    try:
        wait_ready(port, proc)
        body = work / f"{case.name}.json"
        body.write_bytes(oip_body(case.feeds))
        lua = work / f"{case.name}.lua"
        lua.write_text(WRK_LUA.format(body=body))
        results: dict[int, dict[str, float]] = {}
        for concurrency in CONCURRENCY:
            run_wrk(port, lua, concurrency, 1)  # warm connections, caches, batcher
            before = tree_cpu_seconds(proc.pid)
            figures = run_wrk(port, lua, concurrency, seconds)
            if figures["errors"]:
                raise RuntimeError(f"{server.name} answered {figures['errors']:.0f} errors")
            figures["cpu_s_per_req"] = (tree_cpu_seconds(proc.pid) - before) / max(
                figures.get("requests", 1), 1
            )
            results[concurrency] = figures
            print(
                f"    {server.name:16s} {case.name:10s} c={concurrency:<3d} "
                f"{figures['req_per_s']:8.1f} req/s  p50 {figures['p50_ms']:7.2f} ms  "
                f"p99 {figures['p99_ms']:7.2f} ms  cpu {1000 * figures['cpu_s_per_req']:.2f} "
                f"ms/req  errors {figures['errors']:.0f}",
                flush=True,
            )
        return results
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument(
        "--mlserver-python", type=Path, default=REPO / ".bench-venv/mlserver/bin/python"
    )
    parser.add_argument(
        "--kserve-python", type=Path, default=REPO / ".bench-venv/kserve/bin/python"
    )
    parser.add_argument(
        "--triton-python", type=Path, default=REPO / ".bench-venv/triton/bin/python"
    )
    parser.add_argument("--models", default="minilm16,minilm128,mlp")
    parser.add_argument(
        "--batch-delay-ms",
        type=float,
        default=BATCH_DELAY_MS,
        help="max batch delay of every batching server (ours, MLServer and Triton alike)",
    )
    parser.add_argument(
        "--servers",
        default="ours,ours-batch,mlserver,mlserver-batch,kserve,triton,triton-batch",
        help="comma-separated, run in this order in every repeat",
    )
    parser.add_argument(
        "--baseline",
        metavar="GITREF",
        help="also serve with our server at this commit (servers base, base-batch: add them to "
        "--servers); ours is then reported against it, repeat by repeat",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/serving.json")
    parser.add_argument(
        "--summarize",
        type=Path,
        help="report a saved run (its --out file) again instead of measuring",
    )
    args = parser.parse_args()
    if args.summarize is not None:
        saved: dict[str, Any] = json.loads(args.summarize.read_text())["raw"]
        for runs in saved["servers"].values():  # JSON turned the concurrency keys into strings
            for name, repeats in runs.items():
                runs[name] = [
                    None if r is None else {int(c): f for c, f in r.items()} for r in repeats
                ]
        summary = {case: summarize_case(saved, case) for case in saved["limit"]}
        print(report(summary))
        print(check_targets(summary))
        return 0
    delay = args.batch_delay_ms

    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    mlp_path, mlp_row = digits_mlp(work / "digits.onnx")
    cases = {
        "minilm16": Case("minilm16", MINILM / "model.onnx", minilm_feeds(16), minilm_feeds(16, 32)),
        "minilm128": Case(
            "minilm128", MINILM / "model.onnx", minilm_feeds(128), minilm_feeds(128, 32)
        ),
        "mlp": Case("mlp", mlp_path, {"input": mlp_row}, {"input": np.repeat(mlp_row, 32, 0)}),
    }
    servers = {
        "ours": Server("ours", ours(None)),
        "ours-batch": Server("ours-batch", ours(delay)),
        "mlserver": Server("mlserver", mlserver(args.mlserver_python, None)),
        "mlserver-batch": Server("mlserver-batch", mlserver(args.mlserver_python, delay)),
        "kserve": Server("kserve", kserve(args.kserve_python)),
        "triton": Server("triton", triton(args.triton_python, None)),
        "triton-batch": Server("triton-batch", triton(args.triton_python, delay)),
    }
    if args.baseline:
        tree = work / "baseline"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.baseline], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        servers["base"] = Server("base", ours(None, tree))
        servers["base-batch"] = Server("base-batch", ours(delay, tree))
    unknown = set(args.servers.split(",")) - servers.keys()
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)} (base and base-batch need --baseline)")
    chosen_cases = [cases[c] for c in args.models.split(",")]
    chosen_servers = [servers[s] for s in args.servers.split(",")]

    raw: dict[str, Any] = {"limit": {}, "servers": {}}
    for repeat in range(args.repeats):
        print(f"== repeat {repeat + 1}/{args.repeats}", flush=True)
        for case in chosen_cases:
            before = limit(case, min(args.duration, 2))
            _print_limit("limit", case, before)
            results: dict[str, Any] = {}
            for server in chosen_servers:
                try:
                    results[server.name] = measure(server, case, work, args.duration)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    print(f"    {server.name}: {exc}", flush=True)
                    results[server.name] = None
            after = limit(case, min(args.duration, 2))
            _print_limit("limit (after)", case, after)
            raw["limit"].setdefault(case.name, []).append(_mean_limit(before, after))
            for name, result in results.items():
                raw["servers"].setdefault(case.name, {}).setdefault(name, []).append(result)

    summary = {case.name: summarize_case(raw, case.name) for case in chosen_cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1))
    print(report(summary))
    print(check_targets(summary))
    return 0


def _print_limit(label: str, case: Case, lim: dict[str, Any]) -> None:
    print(
        f"    {label:16s} {case.name:10s} batch1 {lim['batch1']['items_per_s']:8.1f} "
        f"items/s  batch32 {lim['batch32']['items_per_s']:8.1f} items/s",
        flush=True,
    )


def _mean_limit(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The limit of one repeat: measured before and after its servers, averaged (the machine's
    speed drifts over minutes; this cancels a linear drift)."""
    return {
        label: {
            "items_per_s": (before[label]["items_per_s"] + after[label]["items_per_s"]) / 2,
            "p50_ms": (before[label]["p50_ms"] + after[label]["p50_ms"]) / 2,
            "before": before[label],
            "after": after[label],
        }
        for label in ("batch1", "batch32")
    }


PEERS = ("mlserver", "mlserver-batch", "kserve", "triton", "triton-batch")


def summarize_case(raw: dict[str, Any], case: str) -> dict[str, Any]:
    """Medians and spreads; ratios are taken within each repeat (server vs the limit and the
    best peer of the same repeat), then summarised, so machine drift between repeats cancels."""
    limits = raw["limit"][case]
    servers: dict[str, list[Any]] = raw["servers"].get(case, {})
    entry: dict[str, Any] = {
        "limit_batch1": summarize([r["batch1"]["items_per_s"] for r in limits]),
        "limit_batch32": summarize([r["batch32"]["items_per_s"] for r in limits]),
        "limit_batch1_p50_ms": summarize([r["batch1"]["p50_ms"] for r in limits]),
    }
    for name, runs in servers.items():
        for concurrency in CONCURRENCY:
            done = [(i, run[concurrency]) for i, run in enumerate(runs) if run is not None]
            if not done:
                continue
            figures: dict[str, Any] = {
                metric: summarize([fig[metric] for _, fig in done])
                for metric in ("req_per_s", "p50_ms", "p99_ms", "cpu_s_per_req", "errors")
            }
            for label in ("batch1", "batch32"):
                figures[f"vs_{label}"] = summarize(
                    [fig["req_per_s"] / limits[i][label]["items_per_s"] for i, fig in done]
                )
            peer_ratios, ceilings = [], []
            for i, fig in done:
                peers = [
                    runs_[i][concurrency]["req_per_s"]
                    for peer, runs_ in servers.items()
                    if peer in PEERS and runs_[i] is not None
                ]
                if peers:
                    peer_ratios.append(fig["req_per_s"] / max(peers))
                    ceilings.append(limits[i]["batch32"]["items_per_s"] / max(peers))
            batched = name.endswith("-batch")
            unbatched = servers.get(name.removesuffix("-batch")) if batched else None
            if unbatched is not None:  # what batching costs (or gains) against the same server
                pairs = [(fig, unbatched[i]) for i, fig in done if unbatched[i] is not None]
                if pairs:
                    figures["vs_unbatched"] = summarize(
                        [fig["req_per_s"] / run[concurrency]["req_per_s"] for fig, run in pairs]
                    )
            base = servers.get(name.replace("ours", "base")) if name.startswith("ours") else None
            if base is not None:  # this tree against --baseline, within each repeat
                pairs = [(fig, base[i]) for i, fig in done if base[i] is not None]
                figures["vs_base"] = summarize(
                    [fig["req_per_s"] / run[concurrency]["req_per_s"] for fig, run in pairs]
                )
                figures["cpu_vs_base"] = summarize(
                    [fig["cpu_s_per_req"] / run[concurrency]["cpu_s_per_req"] for fig, run in pairs]
                )
            if peer_ratios and name not in PEERS:
                figures["vs_best_peer"] = summarize(peer_ratios)
                # What a server running exactly at the in-process batch-32 limit would score.
                figures["limit_vs_best_peer"] = summarize(ceilings)
            entry[f"{name}@{concurrency}"] = figures
    return entry


def summarize(runs: list[Any]) -> dict[str, float]:
    values = [float(r) for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _spread(figure: dict[str, float], fmt: str) -> str:
    return f"{figure['median']:{fmt}} ({figure['min']:{fmt}}-{figure['max']:{fmt}})"


def report(summary: dict[str, Any]) -> str:
    lines = []
    for case, entry in summary.items():
        b1 = entry["limit_batch1"]["median"]
        b32 = entry["limit_batch32"]["median"]
        lines.append(f"\n### {case}: limit {b1:.0f} items/s at batch 1, {b32:.0f} at batch 32\n")
        lines.append(
            "| server | c | req/s (min-max) | vs limit b1 | vs limit b32 | x best peer | "
            "p50 ms | p99 ms (min-max) | CPU ms/req |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for key, figures in entry.items():
            if "@" not in key:
                continue
            name, concurrency = key.split("@")
            peer = figures.get("vs_best_peer")
            lines.append(
                f"| {name} | {concurrency} | {_spread(figures['req_per_s'], '.0f')} | "
                f"{_spread(figures['vs_batch1'], '.2f')} | "
                f"{_spread(figures['vs_batch32'], '.2f')} | "
                f"{_spread(peer, '.2f') if peer else '-'} | "
                f"{figures['p50_ms']['median']:.2f} | {_spread(figures['p99_ms'], '.1f')} | "
                f"{1000 * figures['cpu_s_per_req']['median']:.2f} |"
            )
    against = [
        (case, key, figures)
        for case, entry in summary.items()
        for key, figures in entry.items()
        if "vs_base" in figures
    ]
    if against:
        lines += [
            "\n### Against --baseline (ours / base, per repeat)\n",
            "| case | server@c | req/s ratio (min-max) | CPU ms/req ratio (min-max) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {case} | {key} | {_spread(figures['vs_base'], '.3f')} | "
            f"{_spread(figures['cpu_vs_base'], '.3f')} |"
            for case, key, figures in against
        ]
    return "\n".join(lines)


TARGETS: list[tuple[str, str, str, str, float]] = [
    # (case, server@concurrency, figure, comparison, bound): issue 18's serving targets, against
    # the physical limit (the in-process onnxruntime loop) and against every peer, Triton too
    ("minilm128", "ours@1", "vs_batch1", ">=", 0.97),
    ("minilm128", "ours@8", "vs_batch1", ">=", 0.97),
    ("minilm16", "ours-batch@32", "vs_batch32", ">=", 0.95),
    ("minilm16", "ours-batch@32", "p99_ms", "<=", 80.0),
    ("minilm16", "ours-batch@32", "vs_best_peer", ">", 1.0),
    ("minilm16", "ours@1", "vs_batch1", ">=", 0.95),
    ("minilm16", "ours@8", "vs_batch1", ">=", 0.95),
    ("minilm16", "ours@1", "vs_best_peer", ">", 1.0),
    ("minilm16", "ours@8", "vs_best_peer", ">", 1.0),
    ("minilm16", "ours-batch@1", "vs_unbatched", ">=", 0.97),
    ("mlp", "ours@32", "vs_best_peer", ">=", 3.0),
]


def check_targets(summary: dict[str, Any]) -> str:
    """One line per target: the median over repeats against the bound, with the spread."""
    lines = ["\n### Targets (median of per-repeat figures)\n", "| target | result | met |"]
    lines.append("|---|---|---|")
    for case, key, figure, comparison, bound in TARGETS:
        value = summary.get(case, {}).get(key, {}).get(figure)
        if value is None:
            continue
        median = value["median"]
        met = {">=": median >= bound, ">": median > bound, "<=": median <= bound}[comparison]
        result = _spread(value, ".2f")
        ceiling = summary[case][key].get("limit_vs_best_peer")
        if figure == "vs_best_peer" and ceiling is not None:
            result += f"; the b32 limit itself: {_spread(ceiling, '.2f')}"
        lines.append(
            f"| {case} {key} {figure} {comparison} {bound:g} | {result} | "
            f"{'yes' if met else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
