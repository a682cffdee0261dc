"""kubectl-modelship without a cluster: the status text, the annotation value, the refusals, and
the command line (against a stand-in for the custom-objects API)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from modelship import plugin
from modelship.api.v1alpha1 import CanaryStatus, ModelDeploymentStatus
from modelship.domain import naming

STABLE_DIGEST = "sha256:" + "3b1f" * 16
CANARY_DIGEST = "sha256:" + "9e07" * 16
T0 = "2026-12-01T09:00:00Z"


def canary(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "revision": "7c41d9e2b3",
        "digest": CANARY_DIGEST,
        "phase": "Paused",
        "reason": "WaitingForPromotion",
        "message": "step 2/3 at weight 50% waits for a promote",
        "step": 1,
        "desiredWeight": 50,
        "weight": 40,
        "replicas": 2,
        "readyReplicas": 2,
        "successfulIntervals": 4,
        "failedIntervals": 1,
        "inconclusiveIntervals": 2,
        "attempt": 1,
        "startedAt": T0,
        "stepStartedAt": "2026-12-01T09:01:00Z",
        "lastAnalysis": {
            "time": "2026-12-01T09:02:30Z",
            "verdict": "Pass",
            "intervalSeconds": 30,
            "requests": 124,
            "stableRequests": 1116,
            "checks": [
                {
                    "name": "successRate",
                    "verdict": "Pass",
                    "value": 1.0,
                    "threshold": 0.99,
                    "samples": 124,
                    "message": "success rate 100% >= 99%",
                },
                {
                    "name": "p99LatencyMs",
                    "verdict": "Pass",
                    "value": 41.5,
                    "threshold": 500,
                    "samples": 124,
                    "message": "p99 41.5 ms <= 500 ms",
                },
            ],
            "message": "all checks passed",
        },
    }
    return base | changes


def status(canary_status: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "observedGeneration": 3,
        "phase": "Progressing",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "observedGeneration": 3,
                "lastTransitionTime": T0,
                "reason": "Serving",
                "message": "serving on the stable revision 2f9a0c6e11",
            }
        ],
        "stable": {
            "revision": "2f9a0c6e11",
            "digest": STABLE_DIGEST,
            "replicas": 3,
            "readyReplicas": 3,
        },
    }
    if canary_status is not None:
        base["canary"] = canary_status
    ModelDeploymentStatus.model_validate(base | changes)  # samples keep the operator's shape
    return base | changes


def model_deployment(
    status_: dict[str, Any] | None,
    steps: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    **rollout: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "s3://models/minilm/model.onnx"}}
    if steps is not None:
        rollout["steps"] = steps
    if rollout:
        spec["rollout"] = rollout
    obj: dict[str, Any] = {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm", "namespace": "ml", "generation": 3},
        "spec": spec,
    }
    if annotations:
        obj["metadata"]["annotations"] = annotations
    if status_ is not None:
        obj["status"] = status_
    return obj


THREE_STEPS = [{"weight": 10, "pause": "60s"}, {"weight": 50}, {"weight": 100, "pause": "1m"}]


# --- status ----------------------------------------------------------------------------------


def test_status_prints_the_stable_revision_and_every_canary_field() -> None:
    obj = model_deployment(status(canary()), steps=THREE_STEPS)
    assert plugin.describe(obj) == "\n".join(
        [
            "ModelDeployment ml/minilm",
            "Phase:           Progressing",
            "Ready:           True (Serving) serving on the stable revision 2f9a0c6e11",
            "Stable:          revision 2f9a0c6e11",
            f"  Digest:        {STABLE_DIGEST}",
            "  Pods:          3/3 ready",
            "Canary:          revision 7c41d9e2b3",
            f"  Digest:        {CANARY_DIGEST}",
            "  Phase:         Paused (WaitingForPromotion)",
            "  Message:       step 2/3 at weight 50% waits for a promote",
            "  Step:          2/3",
            "  Weight:        40% (desired 50%)",
            "  Pods:          2/2 ready",
            "  Intervals:     4 passed, 1 failed, 2 inconclusive",
            "  Attempt:       1",
            "  Last analysis: Pass at 2026-12-01T09:02:30Z, 124 requests (1116 stable) over 30s: "
            "all checks passed",
            "    successRate: 1 vs 0.99 (Pass) success rate 100% >= 99%",
            "    p99LatencyMs: 41.5 vs 500 (Pass) p99 41.5 ms <= 500 ms",
        ]
    )


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [
        ({"steps": THREE_STEPS}, 3),
        ({}, 2),  # the canary strategy's default steps: 10% then 50%
        ({"strategy": "canary"}, 2),
        ({"strategy": "rolling"}, None),
    ],
)
def test_step_count_comes_from_the_spec_or_the_default_steps(
    rollout: dict[str, Any], expected: int | None
) -> None:
    assert plugin.total_steps(model_deployment(None, **rollout)["spec"]) == expected


def test_the_step_is_one_based_of_the_default_two_steps() -> None:
    text = plugin.describe(model_deployment(status(canary(step=0))))
    assert "  Step:          1/2" in text.splitlines()


def test_without_a_step_count_only_the_step_is_printed() -> None:
    assert plugin.format_status(status(canary(step=2)), None).count("  Step:          3\n") == 1


def test_a_failed_check_without_data_says_so() -> None:
    checks = [
        {"name": "p99LatencyMs", "verdict": "Fail", "value": 612.25, "threshold": 250,
         "samples": 80, "message": "p99 612 ms > 250 ms"},
        {"name": "p99LatencyRatio", "verdict": "Inconclusive", "threshold": 1.2},
    ]  # fmt: skip
    analysis = canary()["lastAnalysis"] | {"verdict": "Fail", "checks": checks, "message": ""}
    sample = status(canary(phase="Progressing", reason="", message="", lastAnalysis=analysis))
    lines = plugin.format_status(sample, 2).splitlines()
    assert "  Phase:         Progressing" in lines
    assert not any(line.startswith("  Message:") for line in lines)
    assert lines[-3:] == [
        "  Last analysis: Fail at 2026-12-01T09:02:30Z, 124 requests (1116 stable) over 30s",
        "    p99LatencyMs: 612.25 vs 250 (Fail) p99 612 ms > 250 ms",
        "    p99LatencyRatio: no data vs 1.2 (Inconclusive)",
    ]


def test_a_canary_without_an_analysis_yet() -> None:
    sample = canary()
    del sample["lastAnalysis"]
    assert plugin.format_status(status(sample), 2).splitlines()[-1] == ("  Last analysis: none yet")


def test_no_canary_and_no_status() -> None:
    assert plugin.format_status(status(), 2).splitlines()[-1] == "Canary:          none"
    assert plugin.format_status(None, 2).splitlines() == [
        "Phase:           unknown (the operator has not reported yet)",
        "Ready:           unknown (no Ready condition yet)",
        "Stable:          none yet",
        "Canary:          none",
    ]


def test_json_output_is_stable_and_canary_on_the_wire() -> None:
    document = json.loads(plugin.format_json(status(canary())))
    assert set(document) == {"stable", "canary"}
    assert document["stable"]["readyReplicas"] == 3
    assert document["canary"]["desiredWeight"] == 50
    assert document["canary"]["lastAnalysis"]["checks"][1]["name"] == "p99LatencyMs"
    assert CanaryStatus.model_validate(document["canary"]).revision == "7c41d9e2b3"
    assert json.loads(plugin.format_json(None)) == {"stable": None, "canary": None}


def test_a_status_the_types_do_not_know_is_a_clear_error() -> None:
    with pytest.raises(plugin.PluginError, match=r"canary\.phase"):
        plugin.format_status({"canary": canary(phase="Sideways")}, 2)


# --- promote, abort, retry -------------------------------------------------------------------


def test_the_annotation_value_names_revision_step_and_attempt() -> None:
    parsed = CanaryStatus.model_validate(canary(step=2, attempt=3))
    assert plugin.annotation_value(parsed) == "7c41d9e2b3@s2a3"


ACCEPTED = [
    ("promote", "Progressing"),
    ("promote", "Paused"),
    ("promote-full", "Progressing"),
    ("promote-full", "Paused"),
    ("abort", "Progressing"),
    ("abort", "Paused"),
    ("abort", "Promoting"),
    ("retry", "Aborted"),
]
PHASES = ["Progressing", "Paused", "Promoting", "Succeeded", "Aborted"]
REFUSED = [(a, p) for a in naming.MANUAL_ANNOTATIONS for p in PHASES if (a, p) not in ACCEPTED]


@pytest.mark.parametrize(("action", "phase"), ACCEPTED)
def test_each_action_sets_its_annotation_while_the_operator_acts_on_it(
    action: str, phase: str
) -> None:
    obj = model_deployment(status(canary(phase=phase, attempt=2)), steps=THREE_STEPS)
    request = plugin.plan_request(action, obj)
    assert request.annotation == naming.MANUAL_ANNOTATIONS[action]
    assert request.value == "7c41d9e2b3@s1a2"
    assert request.message == (
        f"{action} requested for revision 7c41d9e2b3 at step 2/3; the operator acts on its "
        "next reconcile"
    )
    assert not request.already_set


@pytest.mark.parametrize(("action", "phase"), REFUSED)
def test_each_action_is_refused_where_the_operator_would_ignore_it(action: str, phase: str) -> None:
    obj = model_deployment(status(canary(phase=phase)))
    allowed = {
        "promote": "Progressing or Paused",
        "promote-full": "Progressing or Paused",
        "abort": "Progressing, Paused or Promoting",
        "retry": "Aborted",
    }[action]
    with pytest.raises(plugin.PluginError) as refused:
        plugin.plan_request(action, obj)
    assert str(refused.value) == (
        f"{action}: canary 7c41d9e2b3 of ml/minilm is {phase}; {action} applies only while it "
        f"is {allowed}"
    )


@pytest.mark.parametrize("action", list(naming.MANUAL_ANNOTATIONS))
def test_every_action_is_refused_without_a_canary(action: str) -> None:
    with pytest.raises(plugin.PluginError, match="has no canary release"):
        plugin.plan_request(action, model_deployment(status()))
    with pytest.raises(plugin.PluginError, match=r"ModelDeployment ml/minilm has no canary"):
        plugin.plan_request(action, model_deployment(None))


def test_the_same_value_twice_is_reported_not_written_again() -> None:
    obj = model_deployment(
        status(canary()), annotations={naming.ANNOTATION_PROMOTE: "7c41d9e2b3@s1a1"}
    )
    request = plugin.plan_request("promote", obj)
    assert request.already_set
    assert plugin.format_request(obj, request).splitlines()[0] == (
        "ModelDeployment ml/minilm already has modelship.io/promote=7c41d9e2b3@s1a1 (it acts "
        "once per value)"
    )
    at_next_step = model_deployment(
        status(canary(step=2)), annotations={naming.ANNOTATION_PROMOTE: "7c41d9e2b3@s1a1"}
    )
    assert not plugin.plan_request("promote", at_next_step).already_set


# --- the command line ------------------------------------------------------------------------


class FakeObjects:
    """Stands in for kubernetes.client.CustomObjectsApi: one stored object, calls recorded."""

    def __init__(self, obj: dict[str, Any] | None) -> None:
        self.obj = copy.deepcopy(obj)
        self.patches: list[dict[str, Any]] = []
        self.closed = False
        self.api_client = self
        self.seen: dict[str, str | None] = {}

    def close(self) -> None:
        self.closed = True

    def _find(self, group: str, version: str, namespace: str, plural: str, name: str) -> None:
        assert (group, version, plural) == ("modelship.io", "v1alpha1", "modeldeployments")
        meta = (self.obj or {}).get("metadata", {})
        if (namespace, name) != (meta.get("namespace"), meta.get("name")):
            raise ApiException(status=404, reason="Not Found")

    def get_namespaced_custom_object(self, *key: str, **_: Any) -> dict[str, Any]:
        self._find(*key)
        assert self.obj is not None
        return copy.deepcopy(self.obj)

    def patch_namespaced_custom_object(
        self, *key: str, body: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        self._find(*key)
        assert kwargs["field_manager"] == plugin.FIELD_MANAGER
        self.patches.append(body)
        return {}


@pytest.fixture
def objects(monkeypatch: pytest.MonkeyPatch) -> FakeObjects:
    fake = FakeObjects(model_deployment(status(canary()), steps=THREE_STEPS))

    def connect(kubeconfig: str | None, context: str | None) -> tuple[FakeObjects, str]:
        fake.seen.update(kubeconfig=kubeconfig, context=context)
        return fake, "default"

    monkeypatch.setattr(plugin, "connect", connect)
    return fake


def test_promote_patches_only_the_annotation(
    objects: FakeObjects, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plugin.main(["promote", "minilm", "-n", "ml"]) == 0
    assert objects.patches == [
        {"metadata": {"annotations": {"modelship.io/promote": "7c41d9e2b3@s1a1"}}}
    ]
    assert objects.closed
    assert capsys.readouterr().out == (
        "ModelDeployment ml/minilm annotated modelship.io/promote=7c41d9e2b3@s1a1\n"
        "promote requested for revision 7c41d9e2b3 at step 2/3; the operator acts on its next "
        "reconcile\n"
    )


def test_promote_full_and_options_before_the_command(
    objects: FakeObjects, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-n", "ml", "--kubeconfig", "/k", "--context", "c", "promote", "--full", "minilm"]
    assert plugin.main(argv) == 0
    assert objects.patches[0]["metadata"]["annotations"] == {
        naming.ANNOTATION_PROMOTE_FULL: "7c41d9e2b3@s1a1"
    }
    assert objects.seen == {"kubeconfig": "/k", "context": "c"}
    assert "promote-full requested" in capsys.readouterr().out


def test_a_refusal_exits_1_without_writing(
    objects: FakeObjects, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plugin.main(["retry", "minilm", "-n", "ml"]) == 1
    assert objects.patches == []
    assert capsys.readouterr().err == (
        "error: retry: canary 7c41d9e2b3 of ml/minilm is Paused; retry applies only while it "
        "is Aborted\n"
    )


def test_a_missing_object_exits_1(objects: FakeObjects, capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.main(["status", "other", "-n", "ml"]) == 1
    assert capsys.readouterr().err == "error: ModelDeployment ml/other not found\n"
    assert plugin.main(["abort", "minilm"]) == 1  # the default namespace is connect's
    assert capsys.readouterr().err == "error: ModelDeployment default/minilm not found\n"


def test_status_text_and_json(objects: FakeObjects, capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.main(["status", "minilm", "-n", "ml"]) == 0
    assert capsys.readouterr().out.startswith("ModelDeployment ml/minilm\nPhase:")
    assert plugin.main(["status", "minilm", "-n", "ml", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["canary"]["step"] == 1


def test_other_api_errors_carry_the_server_message() -> None:
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps({"message": 'cannot patch resource "modeldeployments"'})
    target = plugin.Target(None, "ml", "minilm")
    assert str(plugin._api_error(target, error)) == (
        'ModelDeployment ml/minilm: Forbidden (403): cannot patch resource "modeldeployments"'
    )


USAGE_ERRORS = [
    [],
    ["status"],
    ["launch", "minilm"],
    ["status", "minilm", "-o", "yaml"],
    ["abort", "--full", "minilm"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        plugin.main(argv)
    assert exited.value.code == 2
    assert "usage: kubectl modelship" in capsys.readouterr().err


def test_help_explains_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        plugin.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for command in ("status", "promote", "abort", "retry", "<revision>@s<step>a<attempt>"):
        assert command in text
    for command in ("status", "promote", "abort", "retry"):
        with pytest.raises(SystemExit):
            plugin.main([command, "--help"])
        assert "NAME" in capsys.readouterr().out
