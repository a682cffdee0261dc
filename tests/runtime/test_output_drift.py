"""Output drift between the revisions of a mirrored pair, without servers: the PSI against a
numpy reference, the bounded window of compared values, no series below 100 values, constant
and non-finite outputs, and which mirror's windows a registry exports."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_mirror_units import LABELS, config, count, feeds

from modelship_runtime.serve.mirror import (
    Mirror,
    MirrorJob,
    MirrorMetrics,
    OutputWindow,
    output_psi,
)
from polling import wait_for

Array = np.ndarray[Any, Any]
PSI = "modelship_mirror_output_psi"
VALUES = "modelship_mirror_output_values"


def reference_psi(stable: Array, canary: Array) -> float:
    """The statistic as documented, by another route: np.histogram over the stable's deciles
    widened to ±inf, shares floored at 1e-4."""
    deciles = np.unique(np.quantile(stable, np.arange(1, 10) / 10))
    edges = np.concatenate([[-np.inf], deciles, [np.inf]])
    s = np.maximum(np.histogram(stable, edges)[0] / stable.size, 1e-4)
    c = np.maximum(np.histogram(canary, edges)[0] / canary.size, 1e-4)
    return float(np.sum((c - s) * np.log(c / s)))


def shifted(offset: float) -> Any:
    """A canary stand-in answering the stable's output plus ``offset``."""

    def send(job: MirrorJob) -> Array:
        return np.asarray(job.stable + offset)

    return send


def gauges(registry: CollectorRegistry, **labels: str) -> tuple[float | None, float | None]:
    wanted = {**LABELS, **labels}
    return registry.get_sample_value(PSI, wanted), registry.get_sample_value(VALUES, wanted)


def test_psi_matches_numpy_on_known_samples() -> None:
    rng = np.random.default_rng(0)
    stable = rng.normal(size=50_000)
    same = rng.normal(size=50_000)
    moved = rng.normal(loc=1.0, size=50_000)
    assert output_psi(stable, same) == pytest.approx(reference_psi(stable, same), abs=1e-12)
    assert output_psi(stable, moved) == pytest.approx(reference_psi(stable, moved), abs=1e-12)
    assert output_psi(stable, stable) == 0.0
    assert output_psi(stable, same) < 0.01
    assert output_psi(stable, moved) > 0.25
    wider = rng.normal(scale=2.0, size=50_000)  # same mean, other spread: cosine-blind drift
    assert output_psi(stable, wider) == pytest.approx(reference_psi(stable, wider), abs=1e-12)
    assert output_psi(stable, wider) > 0.25


def test_constant_and_non_finite_outputs_do_not_break_the_statistic() -> None:
    constant = np.full(1000, 0.5)
    assert output_psi(constant, constant) == 0.0
    # One cut at 0.5, two bins: everything below the stable's value is a shift, the rest not.
    below = output_psi(constant, np.full(1000, 0.1))
    assert np.isfinite(below)
    assert below > 0.25
    assert below == pytest.approx(reference_psi(constant, np.full(1000, 0.1)))
    spread = np.random.default_rng(1).normal(0.5, 0.1, size=1000)
    assert output_psi(constant, spread) == pytest.approx(reference_psi(constant, spread))
    broken = np.random.default_rng(2).normal(size=1000)
    normal = np.random.default_rng(3).normal(size=1000)
    broken[::2] = np.nan
    assert output_psi(normal, broken) > 0.25  # a canary answering NaN is a shift, not a NaN
    assert output_psi(np.full(1000, np.nan), normal) == 0.0  # no finite cut: one bin


def test_the_window_keeps_only_the_newest_values() -> None:
    window = OutputWindow(200)
    for start in range(0, 600, 10):
        values = np.arange(start, start + 10, dtype=np.float32)
        window.add(values.reshape(2, 5), -values.reshape(2, 5))
    stable, canary = window.values()
    assert sorted(stable) == list(range(400, 600))
    assert sorted(-canary) == list(range(400, 600))
    window.add(np.arange(1000.0), -np.arange(1000.0))  # one output larger than the window
    stable, canary = window.values()
    assert sorted(stable) == list(range(800, 1000))
    assert np.array_equal(stable, -canary)
    window.add(np.arange(7.0), np.arange(7.0))  # wraps across the end of the ring
    assert sorted(window.values()[0]) == [*range(7), *range(807, 1000)]


def test_no_series_below_100_values_per_side() -> None:
    registry = CollectorRegistry()
    mirror = Mirror(config(), MirrorMetrics(registry), shifted(0.0))
    mirror.start()
    try:
        stable = np.random.default_rng(0).random((2, 10))  # 20 values per compared request
        for index in range(4):
            mirror.served(f"r{index}", feeds(index), stable)
        wait_for(lambda: count(registry, "compared") == 4, "four comparisons")
        assert gauges(registry) == (None, None)  # absent: "no data", not NaN nor 0
        mirror.served("r4", feeds(4), stable)
        wait_for(lambda: count(registry, "compared") == 5, "the fifth comparison")
        assert gauges(registry) == (0.0, 100.0)
    finally:
        mirror.close()


def test_a_shifted_canary_shows_drift_and_a_closed_mirror_none() -> None:
    registry = CollectorRegistry()
    metrics = MirrorMetrics(registry)
    first = Mirror(config(output_window=500), metrics, shifted(0.5))
    first.start()
    rng = np.random.default_rng(0)
    try:
        for index in range(40):
            first.served(f"r{index}", feeds(index), rng.random((2, 10)))
        wait_for(lambda: count(registry, "compared") == 40, "the comparisons")
        psi, values = gauges(registry)
    finally:
        first.close()
    assert values == 500  # 800 compared per side, the newest 500 kept
    assert psi is not None
    assert psi > 0.25
    assert gauges(registry) == (None, None)  # closed: no longer exported
    assert registry.get_sample_value("modelship_mirror_cosine_count", LABELS) == 40  # kept
    # The same pair under a new plan starts empty, though its counters carry on.
    second = Mirror(config(), metrics, shifted(0.0))
    second.start()
    try:
        for index in range(5):
            second.served(f"s{index}", feeds(index), rng.random((2, 10)))
        wait_for(lambda: count(registry, "compared") == 45, "the new plan's comparisons")
        assert gauges(registry) == (0.0, 100.0)
    finally:
        second.close()


def test_replay_and_live_have_their_own_windows() -> None:
    registry = CollectorRegistry()
    mirror = Mirror(config(replay_interval_s=5.0), MirrorMetrics(registry), shifted(1.0))
    rng = np.random.default_rng(0)
    for index in range(10):  # what the replay thread does with each golden row
        job = MirrorJob(f"replay-{index}", feeds(index), rng.random((2, 10)), 0, "replay")
        mirror.compare_with_canary(job)
    psi, values = gauges(registry, source="replay")
    assert values == 200
    assert psi is not None
    assert psi > 0.25
    assert gauges(registry, source="live") == (None, None)
    mirror.close()
    assert gauges(registry, source="replay") == (None, None)


def test_the_collector_is_registered_once_per_registry() -> None:
    registry = CollectorRegistry()
    MirrorMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        MirrorMetrics(registry)


def test_workers_append_while_scrapes_compute() -> None:
    registry = CollectorRegistry()
    mirror = Mirror(config(output_window=5_000), MirrorMetrics(registry), shifted(0.0))
    window = mirror.series["live"].outputs
    stop = threading.Event()
    errors: list[BaseException] = []

    def append(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                values = rng.random(37)
                window.add(values, values)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        seen = [gauges(registry) for _ in range(50)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        mirror.close()
    assert not errors
    # Both sides are copied under one lock: equal values, so PSI 0, on a full window.
    assert seen[-1] == (0.0, 5000.0)
    assert all(psi in (None, 0.0) for psi, _ in seen)
