"""Latency and throughput of one variant, single request at a time, with the serving threads."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelship.api.artifact import Latency
from modelship_runtime.builder.samples import Feed


class BenchSettings(BaseSettings):
    """How long the builder measures each variant (env MODELSHIP_BENCH_*)."""

    model_config = SettingsConfigDict(env_prefix="MODELSHIP_BENCH_", extra="ignore")

    seconds: float = Field(default=3.0, gt=0, description="Measuring time per variant.")
    warmup: int = Field(default=5, ge=0, description="Untimed runs before measuring.")
    min_runs: int = Field(default=20, ge=1, description="Runs measured even if slow.")
    max_runs: int = Field(default=2000, ge=1, description="Upper bound on measured runs.")


def measure(
    session: ort.InferenceSession, feed: Feed, threads: int, settings: BenchSettings | None = None
) -> Latency:
    settings = settings or BenchSettings()
    for _ in range(settings.warmup):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + settings.seconds
    while len(times) < settings.max_runs and (
        len(times) < settings.min_runs or time.perf_counter() < deadline
    ):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000.0
    batch = int(next(iter(feed.values())).shape[0]) if feed else 1
    return Latency(
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        throughput_per_s=float(batch * 1000.0 / ms.mean()),
        threads=threads,
        batch_size=batch,
    )
