"""Where our server's time goes under load: CPU per request by component, and a timeline.

For each case (model, batched or not, concurrency) it starts our server exactly as
``bench/serving.py`` starts ``ours`` / ``ours-batch`` (its functions, imported), loads it with the
same ``wrk`` closed loop and JSON body, and measures three windows of ``--duration`` seconds:

1. **plain**: req/s and the server's CPU (utime+stime from /proc) per request, for the process
   tree and for each of its threads; with ``--timeline`` (default) the server also records when
   each request arrived (``data_received``), when each ``session.run`` started and ended (and
   its rows), and when each answer was written, by a ``sitecustomize`` hook this script puts on
   the server's ``PYTHONPATH`` (nothing in the server changes; recording is switched on and off
   by SIGUSR1 / SIGUSR2 around the window; it costs ~2 us per request).
2. **sampled**: ``py-spy record --native --threads --format raw`` (pinned py-spy in
   ``.bench-venv/tools``, see below) while ``wrk`` runs again. Each sample's stack is put in one
   component: ``onnxruntime run`` when the session's run call is anywhere on it (everything below
   it is onnxruntime's), ``metrics`` when prometheus_client or our request metrics are on it,
   ``drift/mirroring`` likewise; socket syscalls when the innermost frame is a read or write
   system call (on loopback that includes the kernel's TCP work); else by the innermost frame
   that names a component (HTTP: http_server.py, httptools, uvloop's or asyncio's transport,
   uvicorn; decode+validation+routing: rest.py, tensors.py, dataplane.py; encode: ``_encode``,
   ``to_json_data``; event loop/batching/executor hop: batching.py, ``DirectPredictor``, the
   event loop itself, asyncio queues and futures, concurrent.futures, threading). Samples whose
   innermost frame waits (epoll, futex, sleep; ``take_gil``: waiting for the GIL) are not CPU
   and are counted apart. py-spy sees only threads Python knows; onnxruntime's own pool threads
   do not show up in it and their CPU (from /proc) counts as onnxruntime.
3. CPU ms per request by component = the thread's CPU per request in the plain window x the
   component's share of that thread's active samples, summed over threads. The thread table
   also gives each thread's exact on-CPU time (``/proc/.../schedstat``) and the share of its
   CPU spent in the kernel (stime).

Caveats. py-spy pauses the server for every sample (native unwinding), so the sampled window
runs slower (its req/s is printed); and under those pauses system calls come out over-weighted:
for the tiny MLP at concurrency 1 the socket write is 0.5-0.6 of the loop thread's samples with
``--native`` but 0.4 without (``--nonblocking``) and 0.4 by the timeline (the ``_write`` call
takes 20 us of the 53 us of CPU per request). For syscall-heavy cases read the socket share
from the timeline; the shares of the Python components relative to each other are unaffected.

Machine load matters on a shared machine: the report gives the load average before each case
and the CPU other processes used during the plain window (all busy CPU in /proc/stat minus the
server's and ``wrk``'s).

    python -m venv .bench-venv/tools && .bench-venv/tools/bin/pip install py-spy==0.4.3
    .venv/bin/python bench/profile_serving.py --duration 8 \\
        --cases minilm16-c1,minilm16-batch-c32,mlp-batch-c32,mlp-c1

Case names: ``<model>[-batch]-c<concurrency>``, models as in ``bench/serving.py`` (minilm16,
minilm128, mlp). ``--variant inline-alone`` / ``--variant no-spinning`` patch the server through
the same hook for an A/B (interleave runs with and without; see ``--help``).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving

from localkube.ports import free_port

REPO = serving.REPO
PY_SPY = REPO / ".bench-venv/tools/bin/py-spy"

ORT = "onnxruntime run"
HTTP = "HTTP (http_server, httptools, transport)"
SOCKET = "socket send/recv syscalls (kernel TCP)"
DECODE = "request decode + validation + routing"
ENCODE = "response encode"
BATCH = "batching, queue, executor hop, asyncio loop"
METRICS = "metrics (prometheus_client)"
DRIFT = "drift / mirroring statistics"
OTHER = "other"
COMPONENTS = (ORT, SOCKET, HTTP, DECODE, ENCODE, BATCH, METRICS, DRIFT, OTHER)
WAIT, GIL = "wait", "gil"

_WAITING = {"poll", "select", "epoll_wait", "epoll_pwait", "accept", "accept4", "nanosleep",
            "clock_nanosleep", "sem_wait", "sem_timedwait", "sem_clockwait", "pthread_cond_wait",
            "pthread_cond_timedwait", "pthread_cond_clockwait", "PyThread_acquire_lock_timed",
            "do_futex_wait", "__futex_abstimed_wait_common"}  # fmt: skip
"""Native frames of a thread that is not running (blocked in the kernel); looked for among the
innermost three frames, since libc's own innermost ones often have no symbol."""
_SOCKET_CALLS = {"write", "read", "writev", "readv", "send", "recv", "sendmsg", "recvmsg",
                 "sendto", "recvfrom", "__libc_write", "__libc_read", "__libc_send",
                 "__libc_recv"}  # fmt: skip
"""Innermost native frames of a socket read or write (on loopback the kernel's TCP work for
both ends runs in them)."""
_TRANSPORT = ("UVStream", "UVBaseTransport", "UVTransport", "UVSocket", "uv__read", "uv__write",
              "uv__stream", "__uv_stream", "sock_recv", "sock_send")  # fmt: skip
"""Native frames of uvloop's (or asyncio's C) stream transport."""

_FRAME = re.compile(r"^(?P<name>.*) \((?P<loc>[^()]*)\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?::\s*(?P<name>.*))?$")

TIMELINE_HOOK = '''
"""Loaded by the profiled server (PYTHONPATH): records request/model-call timestamps."""
import json
import os
import signal
import time

# As the server's CLI does before numpy loads (importing the server here would come first).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
_OUT = os.environ.pop("MODELSHIP_PROFILE_TIMELINE", None)

if _OUT:
    from modelship_runtime.serve import http_server, model

    _events = []
    _on = [False]
    _clock = time.perf_counter
    _add = _events.append

    def _received(self, data, _orig=http_server._Connection.data_received):
        if _on[0]:
            _add((0, _clock(), 0))
        _orig(self, data)

    def _written(self, reply, keep_alive, head, _orig=http_server._Connection._write):
        if not _on[0]:
            return _orig(self, reply, keep_alive, head)
        _add((4, _clock(), 0))
        _orig(self, reply, keep_alive, head)
        _add((3, _clock(), 0))

    def _predict(self, feeds, output_names=None, _orig=model.OnnxModel.predict):
        if not _on[0]:
            return _orig(self, feeds, output_names)
        rows = next(iter(feeds.values())).shape[0]
        start = _clock()
        outputs = _orig(self, feeds, output_names)
        end = _clock()
        _add((1, start, rows))
        _add((2, end, rows))
        return outputs

    def _start(signum, frame):
        _events.clear()
        _on[0] = True

    def _stop(signum, frame):
        _on[0] = False
        with open(_OUT + ".tmp", "w") as f:
            json.dump(list(_events), f)
        os.replace(_OUT + ".tmp", _OUT)

    _variants = os.environ.pop("MODELSHIP_PROFILE_VARIANTS", "").split(",")
    if "inline-alone" in _variants:  # alone requests up to 4x the warm-up's size on the loop
        def _fits(self, feeds):
            return all(a.dtype.kind != "O" for a in feeds.values()) and sum(
                a.size for a in feeds.values()
            ) <= 4 * self.warm_up_elements

        model.OnnxModel.fits_loop = _fits
    if "no-spinning" in _variants:  # onnxruntime threads never spin
        import dataclasses

        def _init(self, path, config, _orig=model.OnnxModel.__init__):
            _orig(self, path, dataclasses.replace(config, allow_spinning=False))

        model.OnnxModel.__init__ = _init

    http_server._Connection.data_received = _received
    http_server._Connection._write = _written
    model.OnnxModel.predict = _predict
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
'''


# --- cases ---------------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    model: str
    batched: bool
    concurrency: int


def parse_spec(text: str) -> Spec:
    parts = text.split("-")
    if len(parts) < 2 or not re.fullmatch(r"c\d+", parts[-1]) or parts[0] not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(f"case {text!r}: use <model>[-batch]-c<concurrency>")
    return Spec(text, parts[0], "batch" in parts[1:-1], int(parts[-1][1:]))


MODEL_NAMES = ("minilm16", "minilm128", "mlp")


def make_case(model: str, work: Path) -> serving.Case:
    if model == "mlp":
        path, row = serving.digits_mlp(work / "digits.onnx")
        return serving.Case("mlp", path, {"input": row}, {"input": np.repeat(row, 32, 0)})
    length = int(model.removeprefix("minilm"))
    return serving.Case(
        model,
        serving.MINILM / "model.onnx",
        serving.minilm_feeds(length),
        serving.minilm_feeds(length, 32),
    )


# --- /proc ---------------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float, float]]:
    """tid -> (comm, utime+stime, stime, on-CPU time from schedstat), in seconds, of every
    thread of one process (utime/stime are sampled at the scheduler tick, schedstat is exact)."""
    tick = os.sysconf("SC_CLK_TCK")
    result: dict[int, tuple[str, float, float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            on_cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
        except OSError:
            continue
        utime, stime = int(fields[11]) / tick, int(fields[12]) / tick
        result[int(task.name)] = (comm, utime + stime, stime, on_cpu)
    return result


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (not idle, not iowait), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


# --- py-spy samples ------------------------------------------------------------------------


@dataclass
class Frame:
    name: str
    loc: str

    @property
    def python(self) -> bool:
        return ".py:" in self.loc or self.loc.endswith(".py")

    def label(self) -> str:
        return f"{self.name} ({self.loc.rsplit(':', 1)[0] if self.python else self.loc})"


@dataclass
class Samples:
    """Active samples per thread and component, plus waiting ones and innermost frames."""

    names: dict[int, str] = field(default_factory=dict)
    by_thread: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    leaves: dict[int, Counter[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    total: int = 0


def parse_raw(text: str) -> Samples:
    samples = Samples()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        head = _THREAD.match(parts[0])
        if head is None:
            continue
        tid = int(head["tid"])
        samples.names[tid] = head["name"] or ""
        frames = []
        for part in parts[1:]:
            match = _FRAME.match(part)
            frames.append(Frame(match["name"], match["loc"]) if match else Frame(part, ""))
        component = classify(frames)
        samples.by_thread[tid][component] += count
        samples.total += count
        if component not in (WAIT, GIL):
            inner = next((f for f in reversed(frames) if f.python), None)
            label = inner.label() if inner else (frames[-1].label() if frames else "?")
            samples.leaves[tid][(label, component)] += count
    return samples


def classify(frames: list[Frame]) -> str:
    """The component of one stack (root first); WAIT / GIL for a thread that is not running."""
    if not frames:
        return OTHER
    leaf = frames[-1].name
    if any(f.name == "take_gil" for f in frames[-4:]):
        return GIL
    if any(f.name in _WAITING or "futex" in f.name for f in frames[-3:]):
        return WAIT
    for frame in frames:
        if "onnxruntime" in frame.loc or frame.name == "OnnxModel.predict":
            return ORT
    for frame in frames:
        if "prometheus_client" in frame.loc or frame.name.startswith("RequestMetrics."):
            return METRICS
        if frame.name.startswith(("DriftMonitor.", "DriftObservingPredictor.")) or any(
            f in frame.loc for f in ("mirror.py", "mirror_plan.py", "replay.py")
        ):
            return DRIFT
    if leaf in _SOCKET_CALLS:
        near = frames[-8:]
        if any(f.name.startswith(_TRANSPORT) or "socket" in f.loc or "selector_events" in f.loc
               for f in near):  # fmt: skip
            return SOCKET
        if any("async_send" in f.name or "call_soon_threadsafe" in f.name for f in near):
            return BATCH  # waking the event loop from the worker thread
    for frame in reversed(frames):
        component = _component(frame)
        if component is not None:
            return component
    return OTHER


def _component(frame: Frame) -> str | None:
    loc, name = frame.loc, frame.name
    if not frame.python:
        return HTTP if "httptools" in loc or name.startswith(_TRANSPORT) else None
    if any(f in loc for f in ("http_server.py", "selector_events.py", "transports.py", "uvicorn",
                              "httptools", "h11")):  # fmt: skip
        return HTTP
    if name in ("_encode", "to_json_data", "to_bytes", "datatype_of"):
        return ENCODE
    if any(f in loc for f in ("rest.py", "tensors.py", "dataplane.py", "errors.py")):
        return DECODE
    if any(f in loc for f in ("batching.py", "model.py", "asyncio", "concurrent", "threading.py",
                              "queue.py")):  # fmt: skip
        return BATCH
    return None


# --- one case ------------------------------------------------------------------------------


def run_case(spec: Spec, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    case = make_case(spec.model, work)
    load = Path("/proc/loadavg").read_text().split()[:3]
    lim = serving.limit(case, args.limit_seconds) if args.limit_seconds > 0 else None
    delay = args.batch_delay_ms if spec.batched else None
    port = free_port()
    timeline_file = work / f"{spec.name}-timeline.json"
    saved = {
        k: os.environ.get(k)
        for k in ("PYTHONPATH", "MODELSHIP_PROFILE_TIMELINE", "MODELSHIP_PROFILE_VARIANTS")
    }
    if args.timeline:
        hook = work / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(textwrap.dedent(TIMELINE_HOOK))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), saved["PYTHONPATH"]]))
        os.environ["MODELSHIP_PROFILE_TIMELINE"] = str(timeline_file)
        os.environ["MODELSHIP_PROFILE_VARIANTS"] = ",".join(args.variant)
    try:
        proc = serving.ours(delay)(case.model, port, work)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        serving.wait_ready(port, proc)
        body = work / f"{case.name}.json"
        body.write_bytes(serving.oip_body(case.feeds))
        lua = work / f"{case.name}.lua"
        lua.write_text(serving.WRK_LUA.format(body=body))
        c = spec.concurrency
        serving.run_wrk(port, lua, c, 1)  # warm connections, caches, batcher

        # 1. plain: CPU per request, per thread; the timeline
        threads_before = thread_cpu(proc.pid)
        tree_before = serving.tree_cpu_seconds(proc.pid)
        busy_before, wrk_before = machine_busy_seconds(), children_cpu_seconds()
        if args.timeline:
            timeline_file.unlink(missing_ok=True)
            proc.send_signal(signal.SIGUSR1)
        plain = serving.run_wrk(port, lua, c, args.duration)
        if args.timeline:
            proc.send_signal(signal.SIGUSR2)
        busy = machine_busy_seconds() - busy_before
        wrk_cpu = children_cpu_seconds() - wrk_before
        tree = serving.tree_cpu_seconds(proc.pid) - tree_before
        threads_after = thread_cpu(proc.pid)
        requests = max(plain.get("requests", 1), 1)
        events = _read_timeline(timeline_file) if args.timeline else None

        # 2. sampled
        spy_out = work / f"{spec.name}.raw"
        load_run = subprocess.Popen(
            ["wrk", "-t1", f"-c{c}", f"-d{round(args.duration)}s", "--timeout", "10s",
             "-s", str(lua), f"http://127.0.0.1:{port}/v2/models/model/infer"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        mode = ["--nonblocking"] if args.nonblocking else ["--native"]  # native needs pausing
        spy = subprocess.run(
            [str(args.py_spy), "record", "--pid", str(proc.pid), *mode, "--threads",
             "--format", "raw", "--rate", str(args.rate), "--duration",
             str(max(round(args.duration - 1), 1)), "-o", str(spy_out)],
            capture_output=True, text=True,
        )  # fmt: skip
        wrk_text, _ = load_run.communicate()
        if spy.returncode != 0 or not spy_out.exists():
            raise RuntimeError(f"py-spy failed: {spy.stderr.strip()[-2000:]}")
        sampled_rps = next(
            (float(x.split()[1]) for x in wrk_text.splitlines() if x.startswith("Requests/sec")),
            0.0,
        )
        samples = parse_raw(spy_out.read_text())
    finally:
        serving.stop(proc)

    threads = {
        tid: (comm, cpu - before[1], kernel - before[2], on_cpu - before[3])
        for tid, (comm, cpu, kernel, on_cpu) in threads_after.items()
        for before in [threads_before.get(tid, (comm, 0.0, 0.0, 0.0))]
    }
    return {
        "spec": spec.name,
        "variants": list(args.variant),
        "load_avg": load,
        "limit": lim,
        "plain": plain,
        "sampled_req_per_s": sampled_rps,
        "requests": requests,
        "duration": args.duration,
        "tree_cpu_s": tree,
        "wrk_cpu_s": wrk_cpu,
        "others_cpu_s": busy - tree - wrk_cpu,
        "threads": threads,
        "samples": samples,
        "timeline": timeline(events, c) if events else None,
    }


def _read_timeline(path: Path) -> list[tuple[int, float, int]]:
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        return []
    return sorted((tuple(e) for e in json.loads(path.read_text())), key=lambda e: e[1])


def timeline(events: list[tuple[int, float, int]], concurrency: int) -> dict[str, Any]:
    """Model calls (duty cycle, rows, gaps); what happens between two calls (answers written,
    the next requests arriving); and at concurrency 1, per request: arrival -> run start -> run
    end -> written -> next arrival."""
    runs: list[tuple[float, float, int]] = []
    start: tuple[float, int] | None = None
    for kind, t, rows in events:
        if kind == 1:
            start = (t, rows)
        elif kind == 2 and start is not None:
            runs.append((start[0], t, start[1]))
            start = None
    result: dict[str, Any] = {}
    if len(runs) >= 2:
        span = runs[-1][1] - runs[0][0]
        durations = [e - s for s, e, _ in runs]
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
        result["calls"] = {
            "count": len(runs),
            "rows_mean": statistics.fmean(r for _, _, r in runs),
            "run_ms_median": 1000 * statistics.median(durations),
            "run_ms_mean": 1000 * statistics.fmean(durations),
            "gap_ms_median": 1000 * statistics.median(gaps),
            "gap_ms_mean": 1000 * statistics.fmean(gaps),
            "duty": sum(durations) / span if span > 0 else 0.0,
            "items_per_s": sum(r for _, _, r in runs) / span if span > 0 else 0.0,
        }
        result["between_calls"] = _between_calls(events, runs)
    if concurrency == 1:
        result["request"] = _per_request(events)
    return result


def _between_calls(
    events: list[tuple[int, float, int]], runs: list[tuple[float, float, int]]
) -> dict[str, float]:
    """Medians (ms) over the gaps between two model calls: when the last answer of the call
    that ended was written, when the last request of the next call arrived, and how long from
    that arrival to the next call's start (parsing it, assembling the batch, the hop)."""
    times = [t for _, t, _ in events]
    phases: dict[str, list[float]] = defaultdict(list)
    for (_, end, _), (next_start, _, _) in itertools.pairwise(runs):
        lo, hi = bisect.bisect_right(times, end), bisect.bisect_left(times, next_start)
        written = [times[i] for i in range(lo, hi) if events[i][0] == 3]
        arrived = [times[i] for i in range(lo, hi) if events[i][0] == 0]
        if written:
            phases["run end -> last answer written"].append(written[-1] - end)
            phases["answers written"].append(len(written))
        if arrived:
            phases["run end -> first arrival"].append(arrived[0] - end)
            phases["run end -> last arrival"].append(arrived[-1] - end)
            phases["last arrival -> next run start"].append(next_start - arrived[-1])
            phases["arrivals"].append(len(arrived))
        phases["gap"].append(next_start - end)
    return {
        name: statistics.median(v) * (1 if name in ("answers written", "arrivals") else 1000)
        for name, v in phases.items()
    }


def _per_request(events: list[tuple[int, float, int]]) -> dict[str, dict[str, float]]:
    """Requests that do not overlap: the first arrival after the last answer opens one, its
    run and its answer close it."""
    stages: dict[str, list[float]] = defaultdict(list)
    arrived = run_start = run_end = written = writing = None
    for kind, t, _ in events:
        if kind == 4:
            writing = t
        elif kind == 0:
            if arrived is None:
                if written is not None:
                    stages["written -> next arrival (client, kernel)"].append(t - written)
                arrived, run_start, run_end, written = t, None, None, None
        elif kind == 1 and arrived is not None:
            run_start = t
        elif kind == 2 and run_start is not None:
            run_end = t
        elif kind == 3 and arrived is not None and run_start is not None and run_end is not None:
            stages["arrival -> run start"].append(run_start - arrived)
            stages["run"].append(run_end - run_start)
            stages["run end -> written"].append(t - run_end)
            if writing is not None and writing >= run_end:
                stages["  of which: run end -> write call"].append(writing - run_end)
                stages["  of which: write call (_write, transport.write)"].append(t - writing)
            written, arrived = t, None
    return {
        name: {
            "median_ms": 1000 * statistics.median(v),
            "mean_ms": 1000 * statistics.fmean(v),
            "count": len(v),
        }
        for name, v in stages.items()
        if v
    }


# --- report --------------------------------------------------------------------------------


def breakdown(result: dict[str, Any]) -> dict[str, Any]:
    """CPU ms per request by component and by thread."""
    samples: Samples = result["samples"]
    requests = result["requests"]
    by_component: Counter[str] = Counter()
    rows = []
    for tid, (comm, cpu, kernel, on_cpu) in sorted(
        result["threads"].items(), key=lambda kv: -kv[1][1]
    ):
        ms = 1000 * cpu / requests
        counts = samples.by_thread.get(tid)
        active = sum(n for k, n in (counts or {}).items() if k not in (WAIT, GIL))
        if tid in samples.names:
            name = samples.names[tid] or comm
        elif comm.startswith(("grpc", "default-execut", "resolver-exec", "timer")):
            name = f"[native] {comm}"
        else:
            name = f"[native] {comm} (onnxruntime pool)"
        if counts and active:
            for component, n in counts.items():
                if component not in (WAIT, GIL):
                    by_component[component] += ms * n / active
        elif name.endswith("(onnxruntime pool)"):
            by_component[ORT] += ms
        else:
            by_component[OTHER] += ms
        waiting = (counts or {}).get(WAIT, 0)
        gil = (counts or {}).get(GIL, 0)
        exact = 1000 * on_cpu / requests
        rows.append((tid, name, ms, exact, kernel / cpu if cpu else 0.0, active, waiting, gil))
    leaves: Counter[tuple[str, str]] = Counter()
    for tid, counter in samples.leaves.items():
        cpu = result["threads"].get(tid, ("", 0.0, 0.0, 0.0))[1]
        active = sum(n for k, n in samples.by_thread[tid].items() if k not in (WAIT, GIL))
        for key, n in counter.items():
            leaves[key] += 1000 * cpu / requests * n / max(active, 1)
    return {"components": by_component, "threads": rows, "leaves": leaves}


def report(result: dict[str, Any], top: int) -> str:
    split = breakdown(result)
    plain = result["plain"]
    total = sum(split["components"].values())
    duration = result["duration"]
    variants = f" ({', '.join(result['variants'])})" if result["variants"] else ""
    lines = [f"\n### {result['spec']}{variants}\n"]
    lim = result["limit"]
    if lim is not None:
        b1, b32 = lim["batch1"], lim["batch32"]
        lines.append(
            f"in-process limit: batch 1 {b1['items_per_s']:.0f} items/s (p50 {b1['p50_ms']:.3f}"
            f" ms), batch 32 {b32['items_per_s']:.0f} items/s (p50 {b32['p50_ms']:.2f} ms); "
            f"plain req/s / limit: b1 {plain['req_per_s'] / b1['items_per_s']:.2f}, "
            f"b32 {plain['req_per_s'] / b32['items_per_s']:.2f}"
        )
    lines.append(
        f"load average before: {' '.join(result['load_avg'])}; during the plain window "
        f"(cores): server {result['tree_cpu_s'] / duration:.2f}, wrk "
        f"{result['wrk_cpu_s'] / duration:.2f}, other processes "
        f"{result['others_cpu_s'] / duration:.2f}"
    )
    lines.append(
        f"req/s: plain {plain['req_per_s']:.0f} (p50 {plain['p50_ms']:.2f} ms, p99 "
        f"{plain['p99_ms']:.2f} ms), while sampled {result['sampled_req_per_s']:.0f}; "
        f"server CPU {1000 * result['tree_cpu_s'] / result['requests']:.3f} ms/req (process "
        f"tree), {total:.3f} over its threads; {result['samples'].total} samples\n"
    )
    lines.append("| component | share | CPU ms/req |")
    lines.append("|---|---|---|")
    for component in COMPONENTS:
        ms = split["components"].get(component, 0.0)
        if ms:
            lines.append(f"| {component} | {ms / total:.3f} | {ms:.4f} |")
    lines.append(f"| total | 1.000 | {total:.4f} |\n")
    lines.append(
        "| thread | CPU ms/req | schedstat ms/req | in kernel | samples active | waiting | "
        "GIL wait |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for tid, name, ms, exact, kernel, active, waiting, gil in split["threads"]:
        if ms > 0 or active:
            lines.append(
                f"| {tid} {name} | {ms:.4f} | {exact:.4f} | {kernel:.2f} | {active} | "
                f"{waiting} | {gil} |"
            )
    lines.append(f"\ntop {top} innermost Python frames (CPU ms/req):\n")
    lines.append("| frame | component | CPU ms/req |")
    lines.append("|---|---|---|")
    for (label, component), ms in split["leaves"].most_common(top):
        lines.append(f"| {label} | {component} | {ms:.4f} |")
    tl = result["timeline"]
    if tl:
        calls = tl.get("calls")
        if calls:
            lines.append(
                f"\nmodel calls: {calls['count']}, {calls['rows_mean']:.1f} rows each, run "
                f"{calls['run_ms_median']:.3f} ms median ({calls['run_ms_mean']:.3f} mean), "
                f"gap between calls {calls['gap_ms_median']:.3f} ms median "
                f"({calls['gap_ms_mean']:.3f} mean), onnxruntime busy {calls['duty']:.3f} of "
                f"the time, {calls['items_per_s']:.0f} items/s"
            )
        between = tl.get("between_calls")
        if between:
            lines.append(
                "between two calls (medians): "
                + ", ".join(
                    f"{name} {value:.0f}" if name in ("answers written", "arrivals")
                    else f"{name} {value:.3f} ms"
                    for name, value in between.items()
                )
            )  # fmt: skip
        if tl.get("request"):
            lines.append("\nper request (concurrency 1):\n")
            lines.append("| stage | median ms | mean ms |")
            lines.append("|---|---|---|")
            for name, figures in tl["request"].items():
                lines.append(f"| {name} | {figures['median_ms']:.3f} | {figures['mean_ms']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases",
        type=lambda s: [parse_spec(x) for x in s.split(",")],
        default="minilm16-c1,minilm16-batch-c32,mlp-batch-c32,mlp-c1",
        help="comma-separated <model>[-batch]-c<concurrency>",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--py-spy", type=Path, default=PY_SPY)
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy without pausing the server (then without native frames)",
    )
    parser.add_argument(
        "--timeline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record request/model-call timestamps in the plain window",
    )
    parser.add_argument(
        "--limit-seconds",
        type=float,
        default=1.0,
        help="seconds per in-process limit loop (4 loops per case; 0: skip)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=["inline-alone", "no-spinning"],
        help="A/B experiments, patched in by the timeline hook: inline-alone lets a request "
        "alone in the server run on the loop up to 4x the warm-up's input size; no-spinning "
        "turns onnxruntime's spinning off",
    )
    parser.add_argument("--batch-delay-ms", type=float, default=serving.BATCH_DELAY_MS)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if isinstance(args.cases, str):
        args.cases = [parse_spec(x) for x in args.cases.split(",")]
    if args.variant and not args.timeline:
        parser.error("--variant needs the timeline hook (drop --no-timeline)")
    if not args.py_spy.exists():
        print(f"no {args.py_spy}: see the docstring for the tools venv", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="profile-serving-"))
    saved = []
    for spec in args.cases:
        result = run_case(spec, args, work)
        print(report(result, args.top), flush=True)
        split = breakdown(result)
        saved.append(
            {
                **{k: v for k, v in result.items() if k != "samples"},
                "components_ms": dict(split["components"]),
                "top_frames_ms": [[k[0], k[1], v] for k, v in split["leaves"].most_common(50)],
            }
        )
    if args.out is not None:
        args.out.write_text(json.dumps(saved, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
