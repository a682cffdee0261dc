"""Replaying the golden set, without servers: which golden sets a pod can replay, and the rounds
it sends (the canary is a stand-in recording what it was sent)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import modelfactory
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelship_runtime.serve.mirror import Mirror, MirrorConfig, MirrorJob, MirrorMetrics
from modelship_runtime.serve.model import OnnxModel, SessionConfig
from modelship_runtime.serve.replay import GoldenSetUnusable, Replay, load_golden_set
from polling import wait_for

Array = np.ndarray[Any, Any]
REPLAY_LABELS = {"model": "m", "revision": "s", "canary": "c", "source": "replay"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    path = modelfactory.mlp(tmp_path_factory.mktemp("mlp") / "model.onnx")
    return OnnxModel(path, SessionConfig(1))


def rows(count: int) -> Array:
    return np.random.default_rng(3).normal(size=(count, modelfactory.FEATURES)).astype(np.float32)


def golden(tmp_path: Path, **arrays: Array) -> Path:
    path = tmp_path / "golden.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


class Recorder:
    """A canary stand-in: records each job, answers the stable's output times ``factor``."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor
        self.jobs: list[MirrorJob] = []
        self.lock = threading.Lock()

    def __call__(self, job: MirrorJob) -> Array:
        with self.lock:
            self.jobs.append(job)
        return job.stable * self.factor


def mirror(send: Recorder, registry: CollectorRegistry) -> Mirror:
    config = MirrorConfig("http://c", "m", "s", "c", "probabilities", 0.0, replay_interval_s=60)
    return Mirror(config, MirrorMetrics(registry), send)


def test_a_golden_set_gives_batch_of_one_rows_the_model_accepts(
    model: OnnxModel, tmp_path: Path
) -> None:
    loaded = load_golden_set(golden(tmp_path, input=rows(5), other=np.zeros(2)), model.inputs)
    assert loaded.rows == 5
    row = loaded.row(4)
    assert list(row) == ["input"]
    assert row["input"].shape == (1, modelfactory.FEATURES)
    assert np.array_equal(row["input"], rows(5)[4:5])


@pytest.mark.parametrize(
    ("arrays", "error"),
    [
        ({"x": rows(2)}, r"has no array for input\(s\) \['input'\]"),
        ({"input": rows(0)}, r"needs one or more rows"),
        ({"input": rows(2).astype(np.float64)}, r"a row is float64 \[1, 64\], the model takes"),
        ({"input": rows(2)[:, :8]}, r"a row is float32 \[1, 8\], the model takes FP32 \[-1, 64\]"),
        ({"input": rows(2).reshape(2, 1, 64)}, r"a row is float32 \[1, 1, 64\]"),
    ],
)
def test_a_golden_set_that_does_not_fit_the_model_says_how(
    model: OnnxModel, tmp_path: Path, arrays: dict[str, Array], error: str
) -> None:
    with pytest.raises(GoldenSetUnusable, match=error):
        load_golden_set(golden(tmp_path, **arrays), model.inputs)


def test_a_missing_or_unreadable_golden_set_is_unusable(model: OnnxModel, tmp_path: Path) -> None:
    with pytest.raises(GoldenSetUnusable, match="the artifact has no golden set"):
        load_golden_set(tmp_path / "golden.npz", model.inputs)
    for content in (b"", b"not an npz", b"PK\x03\x04truncated"):
        (tmp_path / "golden.npz").write_bytes(content)
        with pytest.raises(GoldenSetUnusable, match=r"is not a readable \.npz"):
            load_golden_set(tmp_path / "golden.npz", model.inputs)
    np.save(tmp_path / "golden.npy", rows(2))
    (tmp_path / "golden.npy").rename(tmp_path / "golden.npz")
    with pytest.raises(GoldenSetUnusable, match=r"is not a readable \.npz"):
        load_golden_set(tmp_path / "golden.npz", model.inputs)


def test_each_round_sends_the_next_rows_one_by_one_with_the_stables_output(
    model: OnnxModel, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    canary = Recorder(factor=0.5)
    set_ = load_golden_set(golden(tmp_path, input=rows(4)), model.inputs)
    replay = Replay(mirror(canary, registry), set_, model.predict, 60, samples=3)
    replay.round()
    replay.round()
    assert [job.request_id for job in canary.jobs] == [f"replay-{i}" for i in (0, 1, 2, 3, 0, 1)]
    for job in canary.jobs:
        index = int(job.request_id.removeprefix("replay-"))
        assert job.source == "replay"
        assert np.array_equal(job.feeds["input"], rows(4)[index : index + 1])
        want = modelfactory.reference(rows(4)[index : index + 1])["probabilities"]
        np.testing.assert_allclose(job.stable, want, atol=1e-6)
    sample = registry.get_sample_value
    assert sample("modelship_mirror_requests_total", {**REPLAY_LABELS, "outcome": "compared"}) == 6
    assert sample("modelship_mirror_cosine_count", REPLAY_LABELS) == 6
    assert sample("modelship_mirror_cosine_sum", REPLAY_LABELS) == pytest.approx(6.0)
    # Halved probabilities: the same direction and arg-max, off by half of each value.
    assert sample("modelship_mirror_top1_agreements_total", REPLAY_LABELS) == 6
    live = {**REPLAY_LABELS, "source": "live", "outcome": "compared"}
    assert sample("modelship_mirror_requests_total", live) == 0
    status = replay.status()
    assert status == {
        "enabled": True,
        "interval_s": 60,
        "samples": 4,
        "reason": None,
        "requests": {"compared": 6, "dropped": 0, "failed": 0},
    }


def test_replay_runs_on_its_own_thread_and_stops_at_once(model: OnnxModel, tmp_path: Path) -> None:
    canary = Recorder()
    set_ = load_golden_set(golden(tmp_path, input=rows(2)), model.inputs)
    replay = Replay(mirror(canary, CollectorRegistry()), set_, model.predict, 0.05, samples=2)
    replay.start()
    wait_for(lambda: len(canary.jobs) >= 4, "two rounds")
    replay.close()
    replay._thread.join(5)
    assert not replay._thread.is_alive()
    assert replay.status()["enabled"] is False
    sent = len(canary.jobs)
    replay.round()
    assert len(canary.jobs) == sent, "a closed replay sends nothing"


def test_a_row_the_stable_fails_on_counts_as_failed(model: OnnxModel, tmp_path: Path) -> None:
    canary = Recorder()

    def broken(feeds: Any, names: Any) -> list[Array]:
        raise RuntimeError("graph failed")

    set_ = load_golden_set(golden(tmp_path, input=rows(2)), model.inputs)
    replay = Replay(mirror(canary, CollectorRegistry()), set_, broken, 60, samples=2)
    replay.round()
    assert canary.jobs == []
    assert replay.status()["requests"] == {"compared": 0, "dropped": 0, "failed": 2}
