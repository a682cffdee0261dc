"""Mirroring to a canary, without servers: sampling, the never-blocking queue, the agreement
arithmetic against numpy, the mismatch ring buffer, input hashing, metric families registered
once per registry, and how a mirrored request is recognised."""

from __future__ import annotations

import hashlib
import random
import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelship.api.serving import MirrorPlan
from modelship_runtime.agreement import cosine, max_abs_error, top1_matches
from modelship_runtime.serve.mirror import (
    Mirror,
    MirrorConfig,
    MirrorJob,
    MirrorMetrics,
    MirrorUnreachable,
    PlanRejected,
    compare,
    decode_output,
    encode_request,
    input_sha256,
)
from modelship_runtime.serve.model import TensorInfo
from modelship_runtime.serve.rest import decode_request, mirror_source
from modelship_runtime.serve.settings import ServeSettings
from polling import wait_for

Array = np.ndarray[Any, Any]
LABELS = {"model": "m", "revision": "stable-1", "canary": "canary-2", "source": "live"}


def config(**overrides: Any) -> MirrorConfig:
    values: dict[str, Any] = {
        "url": "http://127.0.0.1:9",
        "model_name": "m",
        "revision": "stable-1",
        "canary": "canary-2",
        "output": "probabilities",
        "share": 1.0,
        "connections": 1,
    }
    values.update(overrides)
    return MirrorConfig(**values)


def count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "modelship_mirror_requests_total", {**LABELS, "outcome": outcome}
    )
    return value or 0.0


class Echo:
    """A canary stand-in: answers the stable's own output (or a given one), optionally only
    once released."""

    def __init__(self, answer: Array | None = None, hold: bool = False) -> None:
        self.answer = answer
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.calls = 0

    def __call__(self, job: MirrorJob) -> Array:
        self.calls += 1
        self.release.wait()
        return job.stable if self.answer is None else self.answer


def new_mirror(cfg: MirrorConfig, registry: CollectorRegistry, *args: Any) -> Mirror:
    return Mirror(cfg, MirrorMetrics(registry), *args)


def feeds(seed: int = 0) -> dict[str, Array]:
    return {"input": np.random.default_rng(seed).normal(size=(2, 64)).astype(np.float32)}


def test_sampling_mirrors_the_configured_share_of_requests() -> None:
    for share in (0.0, 0.1, 0.5, 1.0):
        mirror = new_mirror(config(share=share), CollectorRegistry(), Echo(), random.Random(7))
        draws = 100_000
        sampled = sum(mirror.sample() for _ in range(draws))
        # binomial: 4 standard deviations of the share over 100k draws is at most 0.0064
        assert abs(sampled / draws - share) <= 0.0064, (share, sampled)


def test_a_full_queue_drops_instead_of_waiting() -> None:
    registry = CollectorRegistry()
    canary = Echo(hold=True)
    mirror = new_mirror(config(queue=4), registry, canary)
    mirror.start()
    try:
        mirror.served("first", feeds(), np.ones((2, 10), np.float32))
        wait_for(lambda: canary.calls == 1, "the worker to take the first request")
        # The worker is stuck in the canary and the queue holds 4: the other 96 are dropped,
        # each offer returning at once (were it to wait, this loop would never end).
        for index in range(100):
            mirror.served(f"r{index}", feeds(), np.ones((2, 10), np.float32))
        assert count(registry, "dropped") == 96
        assert count(registry, "compared") == 0
        canary.release.set()
        wait_for(lambda: count(registry, "compared") == 5, "the queued requests to be compared")
        assert mirror.status()["requests"] == {"compared": 5, "dropped": 96, "failed": 0}
    finally:
        canary.release.set()
        mirror.close()


def test_the_queue_byte_budget_drops_large_requests() -> None:
    registry = CollectorRegistry()
    canary = Echo(hold=True)
    big = {"input": np.zeros((1024, 64), np.float32)}  # 256 KiB
    mirror = new_mirror(config(max_queue_bytes=300 * 1024), registry, canary)  # not started
    mirror.served("a", big, np.zeros((1024, 10), np.float32))
    mirror.served("b", big, np.zeros((1024, 10), np.float32))
    assert count(registry, "dropped") == 1
    mirror.close()  # what was queued is dropped, and nothing is offered after
    mirror.served("c", big, np.zeros((1024, 10), np.float32))
    assert count(registry, "dropped") == 2
    assert not mirror.sample()


def test_canary_failures_are_counted_and_never_raised() -> None:
    registry = CollectorRegistry()

    def unreachable(job: MirrorJob) -> Array:
        raise ConnectionRefusedError("canary gone")

    mirror = new_mirror(config(), registry, unreachable)
    mirror.start()
    try:
        for index in range(3):
            mirror.served(f"r{index}", feeds(), np.ones((2, 10), np.float32))
        wait_for(lambda: count(registry, "failed") == 3, "three failures to be counted")
    finally:
        mirror.close()


@pytest.mark.parametrize("seed", range(5))
def test_agreement_matches_numpy_on_random_tensors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(8, 10))
    b = a + rng.normal(scale=0.3, size=a.shape)
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    expected_cosine = flat_a @ flat_b / (np.linalg.norm(flat_a) * np.linalg.norm(flat_b))
    agreement = compare(a.astype(np.float32), b.astype(np.float32))
    assert agreement.cosine == pytest.approx(expected_cosine, abs=1e-6)
    assert agreement.max_abs_error == pytest.approx(np.abs(a - b).max(), abs=1e-6)
    assert agreement.top1_agree == int((a.argmax(axis=1) == b.argmax(axis=1)).sum())
    assert agreement.top1_rows == 8
    assert cosine(flat_a, flat_b) == pytest.approx(expected_cosine)
    assert max_abs_error(a, b) == pytest.approx(np.abs(a - b).max())
    assert top1_matches(a, a) == (8, 8)


def test_agreement_edge_cases() -> None:
    zeros = np.zeros(4)
    assert cosine(zeros, zeros) == 1.0
    assert cosine(zeros, np.ones(4)) == 0.0
    assert max_abs_error(np.zeros(0), np.zeros(0)) == 0.0
    assert compare(np.ones((3, 1)), np.ones((3, 1))).top1_rows == 0  # no class axis
    with pytest.raises(Exception, match="shape"):
        compare(np.ones((2, 3)), np.ones((3, 2)))


def test_mismatches_are_kept_newest_first_within_bounds() -> None:
    registry = CollectorRegistry()
    stable = np.eye(10, dtype=np.float32)[:2]
    wrong = np.eye(10, dtype=np.float32)[[3, 4]]  # cosine 0, top-1 differs
    mirror = new_mirror(config(examples=3), registry, Echo(answer=wrong))
    mirror.start()
    try:
        for index in range(10):
            mirror.served(f"r{index}", feeds(index), stable)
            wait_for(lambda i=index: count(registry, "compared") == i + 1, "each comparison")
    finally:
        mirror.close()
    examples = mirror.status()["mismatches"]
    assert [e["id"] for e in examples] == ["r7", "r8", "r9"]
    assert examples[-1]["cosine"] == 0.0
    assert examples[-1]["top1_agreement"] == 0.0
    assert examples[-1]["input_sha256"] == input_sha256(feeds(9))
    assert examples[-1]["source"] == "live"
    assert "inputs" not in examples[-1]


def test_inputs_are_kept_only_when_allowed() -> None:
    registry = CollectorRegistry()
    mirror = new_mirror(config(keep_inputs=True), registry, Echo(answer=np.zeros((2, 10))))
    mirror.start()
    try:
        mirror.served("r", feeds(), np.ones((2, 10), np.float32))
        wait_for(lambda: mirror.status()["mismatches"], "the mismatch to be kept")
    finally:
        mirror.close()
    (kept,) = mirror.status()["mismatches"][0]["inputs"]
    assert kept["name"] == "input"
    assert kept["shape"] == [2, 64]
    assert np.allclose(kept["data"], feeds()["input"].reshape(-1))


def test_a_faithful_canary_is_no_mismatch() -> None:
    registry = CollectorRegistry()
    mirror = new_mirror(config(), registry, Echo())
    mirror.start()
    try:
        mirror.served("r", feeds(), np.random.default_rng(1).random((2, 10)))
        wait_for(lambda: count(registry, "compared") == 1, "the comparison")
    finally:
        mirror.close()
    sample = registry.get_sample_value
    assert sample("modelship_mirror_cosine_bucket", {**LABELS, "le": "0.999"}) == 0
    assert sample("modelship_mirror_cosine_count", LABELS) == 1
    assert sample("modelship_mirror_top1_agreements_total", LABELS) == 2
    assert sample("modelship_mirror_top1_rows_total", LABELS) == 2
    assert mirror.status()["mismatches"] == []


def test_input_hash_is_order_independent_and_sensitive_to_values() -> None:
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([[1, 2]], np.int64)}
    reordered = {"ids": a["ids"].copy(), "x": a["x"].copy()}
    assert input_sha256(a) == input_sha256(reordered)
    by_hand = hashlib.sha256()
    by_hand.update(b"ids\0INT64\x001,2\0" + a["ids"].tobytes() + b"\0")
    by_hand.update(b"x\0FP32\x002,3\0" + a["x"].tobytes() + b"\0")
    assert input_sha256(a) == by_hand.hexdigest()
    changed = {"x": a["x"].copy(), "ids": a["ids"].copy()}
    changed["x"][1, 2] += 1
    assert input_sha256(changed) != input_sha256(a)
    reshaped = {"x": a["x"].reshape(3, 2), "ids": a["ids"]}
    assert input_sha256(reshaped) != input_sha256(a)


def test_the_mirrored_request_decodes_as_the_stable_received_it() -> None:
    job = MirrorJob("req-1", feeds(), np.zeros((2, 10)), 0)
    body, header_length = encode_request(job, "probabilities")
    request = decode_request(body, header_length, "m", None)
    assert request.id == "req-1"
    assert [o.name for o in request.outputs or []] == ["probabilities"]
    assert np.array_equal(request.inputs[0].data, feeds()["input"])


def test_answers_decode_from_binary_and_json() -> None:
    probabilities = np.arange(20, dtype=np.float32).reshape(2, 10)
    label = np.array([1, 2], np.int64)
    header = (
        b'{"outputs":[{"name":"label","datatype":"INT64","shape":[2],'
        b'"parameters":{"binary_data_size":16}},{"name":"probabilities","datatype":"FP32",'
        b'"shape":[2,10],"parameters":{"binary_data_size":80}}]}'
    )
    body = header + label.tobytes() + probabilities.tobytes()
    assert np.array_equal(decode_output(body, len(header), "probabilities"), probabilities)
    json_body = b'{"outputs":[{"name":"p","datatype":"FP32","shape":[1,2],"data":[0.5,1.5]}]}'
    assert decode_output(json_body, None, "p").tolist() == [[0.5, 1.5]]
    with pytest.raises(Exception, match="no output"):
        decode_output(json_body, None, "q")


def test_a_plan_becomes_a_config_comparing_the_first_float_output() -> None:
    outputs = [
        TensorInfo("label", "INT64", (-1,)),
        TensorInfo("probabilities", "FP32", (-1, 10)),
    ]
    plan = MirrorPlan(stable="s", canary="c", url="http://c:8080/", share=0.1)
    settings = ServeSettings(model_name="m", mirror_timeout_s=0.5, mirror_examples=3)
    chosen = MirrorConfig.from_plan(plan, settings, outputs)
    assert (chosen.output, chosen.url, chosen.queue, chosen.keep_inputs) == (
        "probabilities", "http://c:8080", 64, False,
    )  # fmt: skip
    assert (chosen.model_name, chosen.revision, chosen.canary) == ("m", "s", "c")
    assert (chosen.timeout_s, chosen.examples, chosen.replay_interval_s) == (0.5, 3, None)
    wrong = plan.model_copy(update={"output": "label"})
    with pytest.raises(PlanRejected, match=r"'label' is not a float output.*\['probabilities'\]"):
        MirrorConfig.from_plan(wrong, settings, outputs)


def test_metric_families_are_registered_once_and_each_pair_gets_its_series() -> None:
    """A pod follows a new pair each time the plan changes, on the same registry."""
    registry = CollectorRegistry()
    metrics = MirrorMetrics(registry)
    first = Mirror(config(), metrics, Echo())
    first.close()
    second = Mirror(config(canary="canary-3", replay_interval_s=5.0), metrics, Echo())
    second.start()
    try:
        second.served("r", feeds(), np.ones((2, 10), np.float32))
        wait_for(
            lambda: registry.get_sample_value(
                "modelship_mirror_requests_total",
                {**LABELS, "canary": "canary-3", "outcome": "compared"},
            ),
            "the new pair's comparison",
        )
    finally:
        second.close()
    assert count(registry, "compared") == 0  # the first pair's series stay, unchanged
    replay = {**LABELS, "canary": "canary-3", "source": "replay", "outcome": "compared"}
    assert registry.get_sample_value("modelship_mirror_requests_total", replay) == 0
    no_replay = {**LABELS, "source": "replay", "outcome": "compared"}
    assert registry.get_sample_value("modelship_mirror_requests_total", no_replay) is None


def test_a_request_without_an_answer_is_sent_again_only_when_retries_are_asked() -> None:
    calls: list[str] = []

    def flaky(job: MirrorJob) -> Array:
        calls.append(job.request_id)
        if len(calls) % 2:
            raise MirrorUnreachable("RemoteDisconnected: closed by the peer")
        return job.stable

    for retries, compared, failed in ((1, 1, 0), (0, 0, 1)):
        calls.clear()
        mirror = new_mirror(config(replay_interval_s=5.0), CollectorRegistry(), flaky)
        mirror.compare_with_canary(
            MirrorJob("g", feeds(), np.ones((2, 10), np.float32), 0, "replay"), retries=retries
        )
        assert mirror.counts("replay") == {"compared": compared, "dropped": 0, "failed": failed}
        assert len(calls) == retries + 1


def test_nothing_is_recorded_for_a_closed_mirror() -> None:
    """A request in flight when the plan changes must not add to the old pair's figures."""
    registry = CollectorRegistry()
    canary = Echo(hold=True)
    mirror = new_mirror(config(), registry, canary)
    mirror.start()
    mirror.served("r", feeds(), np.ones((2, 10), np.float32))
    wait_for(lambda: canary.calls == 1, "the request to be in flight")
    mirror.close()
    canary.release.set()
    mirror.compare_with_canary(MirrorJob("after", feeds(), np.ones((2, 10)), 0))
    mirror.failed("live", "after close")
    assert mirror.status()["requests"] == {"compared": 0, "dropped": 0, "failed": 0}


@pytest.mark.parametrize(
    ("headers", "source"),
    [
        ([(b"content-type", b"application/json")], None),
        ([(b"modelship-mirror", b"live")], "live"),
        ([(b"modelship-mirror", b" Replay ")], "replay"),
        ([(b"modelship-mirror", b"anything")], "live"),
        ([(b"modelship-mirror", b"")], "live"),
    ],
)
def test_a_mirrored_request_is_recognised_by_its_header(
    headers: list[tuple[bytes, bytes]], source: str | None
) -> None:
    assert mirror_source(headers) == source
