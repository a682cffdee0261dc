"""Mirroring benchmark: what mirroring to a canary costs the stable's clients.

One run, side by side: three stable servers of the same model, mirroring 0 %, 10 % and 100 % of
their requests to one canary server (the same model, so every comparison is a full one), each
loaded in turn by wrk (closed loop, one connection per client) with the load helpers of
``bench/serving.py``; runs are interleaved per repeat so machine drift hits every share alike.
Reports client req/s and p99 per share and their ratios to 0 %, and what each stable's mirror
did (compared, dropped, failed per second) from its metrics. Each mirroring stable is told its
share as the operator tells a pod: a MirrorPlan in the file of ``--mirror-file``.

    .venv/bin/python bench/mirroring.py --repeats 3 --duration 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import serving  # noqa: E402

from localkube.ports import free_port  # noqa: E402
from modelship.api.serving import MirrorPlan  # noqa: E402

SHARES = (0.0, 0.1, 1.0)
CONCURRENCY = (1, 8)
OUTCOMES = ("compared", "dropped", "failed")


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int

    def wait_mirroring(self, timeout: float = 30) -> None:
        """Until the server follows its plan (it reads the file once warmed up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{self.port}/v2/mirror"
            with urllib.request.urlopen(url, timeout=5) as reply:
                status = json.loads(reply.read())
            if status["enabled"]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the server on :{self.port} does not mirror: {status['reason']}")

    def outcomes(self) -> dict[str, float]:
        counts = dict.fromkeys(OUTCOMES, 0.0)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("modelship_mirror_requests_total{"):
                    head, value = line.rsplit(" ", 1)
                    for outcome in OUTCOMES:
                        if f'outcome="{outcome}"' in head:
                            counts[outcome] += float(value)
        return counts


def start(model: Path, work: Path, *args: str) -> Process:
    model_dir = work / f"model-{model.stem}"
    model_dir.mkdir(exist_ok=True)
    if not (model_dir / "model.onnx").exists():
        (model_dir / "model.onnx").symlink_to(model)
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "modelship_runtime", "serve", "--model-dir", str(model_dir),
        "--host", "127.0.0.1", "--rest-port", str(port), "--grpc-port", str(free_port()),
        "--metrics-port", str(metrics_port), "--intra-op-threads", str(serving.THREADS),
        "--log-level", "warning", *args,
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=serving.REPO, stdout=subprocess.DEVNULL)
    serving.wait_ready(port, proc)
    return Process(proc, port, metrics_port)


def mirroring(canary: Process, share: float, work: Path) -> tuple[str, ...]:
    """The flags of a stable mirroring ``share`` of its requests to ``canary`` (none at 0)."""
    if not share:
        return ()
    plan = MirrorPlan(stable="stable", canary="canary", url=f"http://127.0.0.1:{canary.port}",
                      share=share)  # fmt: skip
    path = work / f"mirror-{share}.json"
    path.write_text(plan.model_dump_json())
    return ("--mirror-file", str(path))


def bench_case(
    name: str, model: Path, feeds: dict[str, np.ndarray], args: argparse.Namespace, work: Path
) -> dict[tuple[float, int], list[dict[str, float]]]:
    # The canary shares this machine's cores with the stable (in a cluster it is another pod):
    # no spinning, so its idle onnxruntime threads do not take the stable's CPU between the
    # sparse mirrored calls.
    canary = start(model, work, "--revision", "canary", "--no-allow-spinning")
    stables = {
        share: start(model, work, "--revision", "stable", *mirroring(canary, share, work))
        for share in SHARES
    }
    for share, stable in stables.items():
        if share:
            stable.wait_mirroring()
    body = work / f"{name}.json"
    body.write_bytes(serving.oip_body(feeds))
    lua = work / f"{name}.lua"
    lua.write_text(serving.WRK_LUA.format(body=body))
    results: dict[tuple[float, int], list[dict[str, float]]] = {}
    try:
        for repeat in range(args.repeats):
            for concurrency in CONCURRENCY:
                for share, stable in stables.items():
                    serving.run_wrk(stable.port, lua, concurrency, 1)  # warm up
                    before = stable.outcomes()
                    figures = serving.run_wrk(stable.port, lua, concurrency, args.duration)
                    after = stable.outcomes()
                    for outcome in OUTCOMES:
                        figures[f"{outcome}_per_s"] = (after[outcome] - before[outcome]) / (
                            args.duration
                        )
                    results.setdefault((share, concurrency), []).append(figures)
                    print(
                        f"  {name} repeat {repeat + 1} c={concurrency} mirror {share:4.0%}: "
                        f"{figures['req_per_s']:8.0f} req/s  p99 {figures['p99_ms']:6.2f} ms  "
                        f"errors {figures['errors']:.0f}  compared "
                        f"{figures['compared_per_s']:.0f}/s  dropped "
                        f"{figures['dropped_per_s']:.0f}/s  failed {figures['failed_per_s']:.0f}/s",
                        flush=True,
                    )
    finally:
        for process in [*stables.values(), canary]:
            serving.stop(process.proc)
    return results


def report(name: str, results: dict[tuple[float, int], list[dict[str, float]]]) -> str:
    lines = [
        f"\n### {name}\n",
        "| c | mirror | req/s (min-max) | x 0 % | p99 ms (min-max) | p99 x 0 % | "
        "compared/s | dropped/s | failed/s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrency in CONCURRENCY:
        base = results[(0.0, concurrency)]
        for share in SHARES:
            runs = results[(share, concurrency)]
            # Ratios within each repeat (same minute, same machine state), then the median.
            rps = [r["req_per_s"] / b["req_per_s"] for r, b in zip(runs, base, strict=True)]
            p99 = [r["p99_ms"] / b["p99_ms"] for r, b in zip(runs, base, strict=True)]

            def spread(key: str, fmt: str, runs: list[dict[str, float]] = runs) -> str:
                values = [r[key] for r in runs]
                return (
                    f"{statistics.median(values):{fmt}} "
                    f"({min(values):{fmt}}-{max(values):{fmt}})"
                )

            lines.append(
                f"| {concurrency} | {share:.0%} | {spread('req_per_s', '.0f')} | "
                f"{statistics.median(rps):.2f} | {spread('p99_ms', '.2f')} | "
                f"{statistics.median(p99):.2f} | "
                f"{statistics.median(r['compared_per_s'] for r in runs):.0f} | "
                f"{statistics.median(r['dropped_per_s'] for r in runs):.0f} | "
                f"{statistics.median(r['failed_per_s'] for r in runs):.0f} | "
                f"{sum(r['errors'] for r in runs):.0f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--models", default="mlp,minilm16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mirroring-bench-"))
    mlp_path, mlp_row = serving.digits_mlp(work / "digits.onnx")
    cases = {"mlp": (mlp_path, {"input": mlp_row})}
    if (serving.MINILM / "model.onnx").exists():
        cases["minilm16"] = (serving.MINILM / "model.onnx", serving.minilm_feeds(16))
    reports = []
    for name in args.models.split(","):
        if name not in cases:
            print(f"  {name}: model not found, skipped", flush=True)
            continue
        model, feeds = cases[name]
        reports.append(report(name, bench_case(name, model, feeds, args, work)))
    print("\n".join(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
