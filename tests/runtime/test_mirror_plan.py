"""Following the mirroring plan file, without servers: what a plan's content means for a pod,
and the control that starts, swaps and stops its Mirror as the file changes (the canary is a
stand-in that echoes the stable's output)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import modelfactory
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from modelship.api.serving import REPLAY_FILE
from modelship_runtime.serve.dataplane import DataPlane, InferRequest, ServedModel
from modelship_runtime.serve.mirror import MirrorJob, MirrorMetrics, PlanRejected
from modelship_runtime.serve.mirror_plan import NO_PLAN, MirrorControl, plan_for
from modelship_runtime.serve.model import DirectPredictor, OnnxModel, SessionConfig
from modelship_runtime.serve.settings import ServeSettings
from modelship_runtime.serve.tensors import Tensor
from polling import wait_for

Array = np.ndarray[Any, Any]


def plan(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "stable": "stable-1",
        "canary": "canary-2",
        "url": "http://127.0.0.1:9",
        "share": 1.0,
    }
    values.update(overrides)
    return values


def echo(job: MirrorJob) -> Array:
    return job.stable


class Pod:
    """A stable pod's model, data plane and mirroring control, its plan file in tmp_path."""

    def __init__(self, tmp_path: Path, revision: str = "stable-1") -> None:
        model_dir = tmp_path / "model"
        model_dir.mkdir(exist_ok=True)
        self.model = OnnxModel(modelfactory.mlp(model_dir / "model.onnx"), SessionConfig(1))
        served = ServedModel("m", "1", self.model.inputs, self.model.outputs,
                             DirectPredictor(self.model))  # fmt: skip
        self.plane = DataPlane(served)
        self.file = tmp_path / "mirror" / "mirror.json"
        self.file.parent.mkdir(exist_ok=True)
        self.registry = CollectorRegistry()
        settings = ServeSettings(
            model_name="m", revision=revision, model_dir=model_dir, mirror_file=self.file
        )
        self.control = MirrorControl(
            settings, self.model, self.plane, MirrorMetrics(self.registry), echo
        )

    def write(self, content: dict[str, Any] | str) -> None:
        self.file.write_text(content if isinstance(content, str) else json.dumps(content))

    def poll(self) -> dict[str, Any]:
        asyncio.run(self.control.poll())
        return self.control.status()


@pytest.fixture
def pod(tmp_path: Path) -> Any:
    pod = Pod(tmp_path)
    yield pod
    pod.control.close()


def test_empty_content_is_no_plan_and_another_revisions_plan_is_not_this_pods() -> None:
    assert plan_for(b"", "stable-1") == NO_PLAN
    assert plan_for(b" \n", "stable-1") == NO_PLAN
    other = plan_for(json.dumps(plan()).encode(), "canary-2")
    assert other == (
        "the plan is for the pods of revision 'stable-1' (mirroring to 'canary-2'); this pod "
        "is revision 'canary-2'"
    )
    assert isinstance(plan_for(json.dumps(plan()).encode(), None), str)
    followed = plan_for(json.dumps(plan()).encode(), "stable-1")
    assert not isinstance(followed, str)
    assert followed.canary == "canary-2"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{not json", r"not a MirrorPlan: the plan: Invalid JSON"),
        (json.dumps(plan(share=2)).encode(), r"share: Input should be less than or equal to 1"),
        (json.dumps(plan(url="ftp://x")).encode(), r"url: String should match pattern"),
        (json.dumps(plan(extra=1)).encode(), r"extra: Extra inputs are not permitted"),
        (json.dumps({"stable": "s"}).encode(), r"canary: Field required; url: Field required"),
    ],
)
def test_an_invalid_plan_says_what_is_wrong(content: bytes, error: str) -> None:
    with pytest.raises(PlanRejected, match=error):
        plan_for(content, "stable-1")


def test_mirroring_follows_the_file_as_it_appears_changes_and_goes(pod: Pod) -> None:
    assert pod.poll() == {"enabled": False, "reason": NO_PLAN}
    assert pod.plane.tap is None

    pod.write(plan())
    status = pod.poll()
    assert (status["enabled"], status["canary"], status["share"]) == (True, "canary-2", 1.0)
    first = pod.plane.tap
    assert first is not None

    pod.poll()  # unchanged: the same mirror goes on
    pod.write(json.dumps(plan(), indent=4))  # other bytes, the same plan
    pod.poll()
    assert pod.plane.tap is first

    pod.write(plan(canary="canary-3", url="http://127.0.0.1:10/"))
    status = pod.poll()
    assert (status["canary"], status["url"]) == ("canary-3", "http://127.0.0.1:10")
    assert first.closed, "the old pair's mirror is closed at once"
    second = pod.plane.tap
    assert second is not None
    assert second is not first

    pod.write("")
    assert pod.poll() == {"enabled": False, "reason": NO_PLAN}
    assert second.closed
    assert pod.plane.tap is None

    pod.write(plan())
    assert pod.poll()["enabled"]
    pod.file.unlink()
    assert pod.poll() == {"enabled": False, "reason": NO_PLAN}


def test_a_plan_that_mirrors_no_live_traffic_taps_no_request(pod: Pod) -> None:
    pod.write(plan(share=0))
    assert pod.poll()["enabled"]
    assert pod.plane.tap is None, "nothing to sample: requests skip the mirror entirely"


def test_the_mirrored_pairs_figures_carry_its_labels(pod: Pod) -> None:
    pod.write(plan())
    pod.poll()
    x = np.zeros((1, modelfactory.FEATURES), np.float32)
    for canary in ("canary-2", "canary-3"):
        pod.write(plan(canary=canary))
        pod.poll()
        tap = pod.plane.tap
        assert tap is not None
        tap.served("r", {"input": x}, pod.model.predict({"input": x}, [tap.output])[0])
        labels = {"model": "m", "revision": "stable-1", "canary": canary, "source": "live"}
        wait_for(
            lambda labels=labels: pod.registry.get_sample_value(
                "modelship_mirror_requests_total", {**labels, "outcome": "compared"}
            ),
            f"the comparison labelled {canary}",
        )


def test_a_mirrored_request_is_never_mirrored_on(pod: Pod) -> None:
    """Were a plan to point a pod at its own Service, mirrors must not feed themselves."""
    pod.write(plan())
    pod.poll()
    tap = pod.plane.tap
    assert tap is not None
    pod.plane.serving = True
    x = Tensor("input", "FP32", np.zeros((1, modelfactory.FEATURES), np.float32))
    for mirrored in (True, False):
        asyncio.run(pod.plane.infer(InferRequest("m", None, [x], mirrored=mirrored)))
    labels = {"model": "m", "revision": "stable-1", "canary": "canary-2", "source": "live"}
    wait_for(
        lambda: pod.registry.get_sample_value(
            "modelship_mirror_requests_total", {**labels, "outcome": "compared"}
        ),
        "the client's request to be compared",
    )
    assert tap.status()["requests"] == {"compared": 1, "dropped": 0, "failed": 0}


def test_a_canary_pod_ignores_the_plan_it_mounts_too(tmp_path: Path) -> None:
    canary = Pod(tmp_path, revision="canary-2")
    try:
        canary.write(plan())
        status = canary.poll()
        assert not status["enabled"]
        assert "this pod is revision 'canary-2'" in status["reason"]
        assert canary.plane.tap is None
    finally:
        canary.control.close()


def test_an_invalid_plan_mirrors_nothing_and_is_logged_once(
    pod: Pod, caplog: pytest.LogCaptureFixture
) -> None:
    pod.write(plan())
    pod.poll()
    running = pod.plane.tap
    pod.write(plan(share="half"))
    with caplog.at_level(logging.ERROR, "modelship_runtime.serve.mirror"):
        status = pod.poll()
        pod.poll()
        pod.write(plan(output="label"))
        assert "is not a float output" in pod.poll()["reason"]
        pod.write(plan(share="half"))
        pod.poll()
    assert status["enabled"] is False
    assert status["reason"].startswith("invalid plan: not a MirrorPlan: share: Input should be")
    assert running is not None
    assert running.closed
    assert pod.plane.tap is None
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2, logged  # the bad share once however often read, and the output
    assert all(str(pod.file) in message for message in logged)


def test_replay_needs_a_golden_set_and_says_so_when_there_is_none(pod: Pod) -> None:
    pod.write(plan(replay_interval_s=60))
    replay = pod.poll()["replay"]
    assert replay["enabled"] is False
    assert replay["samples"] == 0
    assert replay["reason"].startswith("the artifact has no golden set")
    assert str(pod.control.settings.model_dir / REPLAY_FILE) in replay["reason"]
    pod.write(plan())
    assert pod.poll()["replay"]["reason"] == (
        "the plan asks for no replay (replay_interval_s unset)"
    )


def test_closing_stops_mirroring_for_good(pod: Pod) -> None:
    pod.write(plan())
    pod.poll()
    running = pod.plane.tap
    pod.control.close()
    assert running is not None
    assert running.closed
    pod.write(plan(canary="canary-3"))
    assert pod.poll() == {"enabled": False, "reason": "the server is shutting down"}
    assert pod.plane.tap is None
