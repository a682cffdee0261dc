"""Replaying the golden set, without servers: which golden sets a pod can replay, the rounds it
sends (the canary is a stand-in recording what it was sent), and each revision's accuracy on a
labelled golden set."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import modelfactory
import numpy as np
import onnxruntime as ort
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
        "labels": 0,
        "labels_reason": None,
        "accuracy": None,
    }
    # No labels in the golden set: no labelled series at all (a zero would read as all wrong).
    assert sample("modelship_mirror_labelled_rows_total", REPLAY_LABELS) is None
    stable_side = {**REPLAY_LABELS, "side": "stable"}
    assert sample("modelship_mirror_correct_rows_total", stable_side) is None


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


class PerturbedCanary(Recorder):
    """A canary stand-in answering with :func:`modelfactory.perturbed_mlp`, in onnxruntime."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        path = modelfactory.perturbed_mlp(directory) / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, job: MirrorJob) -> Array:
        super().__call__(job)
        (answer,) = self.session.run(["probabilities"], dict(job.feeds))
        return np.asarray(answer)


def test_a_labelled_golden_set_counts_each_revisions_accuracy(
    model: OnnxModel, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    canary = PerturbedCanary(tmp_path / "perturbed")
    x = rows(8)
    # What each side answers, computed here: numpy for the stable, onnxruntime for the canary.
    stable_class = modelfactory.reference(x)["probabilities"].argmax(axis=1)
    canary_class = canary.session.run(["probabilities"], {"input": x})[0].argmax(axis=1)
    assert (stable_class != canary_class).any(), "the perturbation must show"
    labels = stable_class.copy()
    labels[0] = (stable_class[0] + 1) % modelfactory.CLASSES  # a row the stable gets wrong
    set_ = load_golden_set(golden(tmp_path, input=x, labels=labels), model.inputs)
    assert set_.labels is not None
    assert set_.labels.dtype == np.int64
    replay = Replay(mirror(canary, registry), set_, model.predict, 60, samples=8)
    replay.round()
    replay.round()
    want_stable = int((stable_class == labels).sum()) * 2
    want_canary = int((canary_class == labels).sum()) * 2
    assert want_stable != want_canary
    assert 0 < want_canary < 16
    sample = registry.get_sample_value
    assert sample("modelship_mirror_labelled_rows_total", REPLAY_LABELS) == 16
    correct = "modelship_mirror_correct_rows_total"
    assert sample(correct, {**REPLAY_LABELS, "side": "stable"}) == want_stable
    assert sample(correct, {**REPLAY_LABELS, "side": "canary"}) == want_canary
    live = {**REPLAY_LABELS, "source": "live"}
    assert sample("modelship_mirror_labelled_rows_total", live) is None
    status = replay.status()
    assert (status["labels"], status["labels_reason"]) == (8, None)
    assert status["accuracy"] == {
        "stable": pytest.approx(want_stable / 16),
        "canary": pytest.approx(want_canary / 16),
        "rows": 16,
    }


def test_labels_before_any_row_is_compared_show_no_accuracy_yet(
    model: OnnxModel, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    set_ = load_golden_set(golden(tmp_path, input=rows(2), labels=np.zeros(2, np.int64)),
                           model.inputs)  # fmt: skip
    replay = Replay(mirror(Recorder(), registry), set_, model.predict, 60, samples=2)
    assert replay.status()["accuracy"] is None
    assert registry.get_sample_value("modelship_mirror_labelled_rows_total", REPLAY_LABELS) == 0


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        (np.zeros(3, np.int64), r"are int64 \[3\], not one int64 class per row \[4\]"),
        (np.zeros(4, np.float64), r"are float64 \[4\], not one int64 class per row"),
        (np.zeros((4, 1), np.int64), r"are int64 \[4, 1\], not one int64 class per row"),
        (np.full(4, -1, np.int64), r"hold negative values"),
    ],
)
def test_labels_that_do_not_fit_are_ignored_and_the_status_says_why(
    model: OnnxModel, tmp_path: Path, labels: Array, why: str
) -> None:
    registry = CollectorRegistry()
    set_ = load_golden_set(golden(tmp_path, input=rows(4), labels=labels), model.inputs)
    assert set_.labels is None
    replay = Replay(mirror(Recorder(), registry), set_, model.predict, 60, samples=4)
    replay.round()
    status = replay.status()
    assert status["requests"]["compared"] == 4, "replayed all the same"
    assert (status["labels"], status["accuracy"]) == (0, None)
    assert status["labels_reason"].endswith("; replaying without accuracy")
    assert re.search(why, status["labels_reason"])
    assert registry.get_sample_value("modelship_mirror_labelled_rows_total", REPLAY_LABELS) is None
