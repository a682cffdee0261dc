"""router: gatewayAPI: what the operator does to a user's HTTPRoute / GRPCRoute.

Only the backendRefs of the rule that points at the ModelDeployment change; every other rule,
every other backend of that rule and everything else in the route stay byte for byte.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from modelship.api.v1alpha1 import CanaryPhase, Phase, Router
from modelship.domain import routes
from modelship.domain.revisions import GatewayRouter
from release_world import World, artifact, respec, spec

NS = "ml"


def route(rules: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "minilm", "namespace": NS, "resourceVersion": "7"},
        "spec": {
            "parentRefs": [{"name": "public", "namespace": "gateways"}],
            "hostnames": ["models.example.com"],
            "rules": rules,
        },
        "status": status,
    }


OTHER_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/other"}}],
    "backendRefs": [{"name": "other", "port": 8080}],
}
OUR_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/minilm"}}],
    "filters": [{"type": "RequestHeaderModifier",
                 "requestHeaderModifier": {"add": [{"name": "x-team", "value": "ml"}]}}],
    "backendRefs": [
        {"name": "legacy-minilm", "port": 9000, "weight": 5},
        {"name": "minilm", "port": 8080, "filters": [{"type": "RequestHeaderModifier",
         "requestHeaderModifier": {"set": [{"name": "x-model", "value": "minilm"}]}}]},
    ],
}  # fmt: skip


def _applied(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(jsonpatch.apply_patch(obj, ops))


def test_only_our_backends_of_our_rule_change_and_everything_else_stays_byte_for_byte() -> None:
    before = route([OTHER_RULE, OUR_RULE])
    snapshot = json.dumps(before, sort_keys=True)
    rule = routes.our_rule(before, "minilm")
    assert rule == 1
    current = before["spec"]["rules"][rule]["backendRefs"]
    wanted = routes.weighted_backends(current, "minilm", NS, 8080, 10)
    after = _applied(before, routes.patch(before, rule, wanted))
    assert json.dumps(before, sort_keys=True) == snapshot, "the read object is not mutated"
    backends = after["spec"]["rules"][1]["backendRefs"]
    assert backends[0] == OUR_RULE["backendRefs"][0], "a foreign backend keeps its place"
    assert [(b["name"], b["port"], b["weight"]) for b in backends[1:]] == [
        ("minilm-stable", 8080, 90),
        ("minilm-canary", 8080, 10),
    ]
    assert all(b["filters"] == OUR_RULE["backendRefs"][1]["filters"] for b in backends[1:])
    # Everything but that one list is unchanged, byte for byte.
    rest_before = copy.deepcopy(before)
    rest_after = copy.deepcopy(after)
    del (
        rest_before["spec"]["rules"][1]["backendRefs"],
        rest_after["spec"]["rules"][1]["backendRefs"],
    )
    assert json.dumps(rest_after, sort_keys=True) == json.dumps(rest_before, sort_keys=True)


def test_the_patch_is_guarded_by_the_value_it_read_and_empty_when_nothing_changes() -> None:
    before = route([OUR_RULE])
    wanted = routes.weighted_backends(OUR_RULE["backendRefs"], "minilm", NS, 8080, 50)
    ops = routes.patch(before, 0, wanted)
    assert ops[0] == {"op": "test", "path": "/spec/rules/0/backendRefs",
                      "value": OUR_RULE["backendRefs"]}  # fmt: skip
    after = _applied(before, ops)
    assert routes.patch(after, 0, wanted) == []
    # Someone edited the rule meanwhile: the patch fails instead of overwriting the edit.
    edited = copy.deepcopy(before)
    edited["spec"]["rules"][0]["backendRefs"][0]["weight"] = 6
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(edited, ops)


def _programmed(obj: dict[str, Any], generation: int) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["generation"] = generation
    obj["status"] = {"parents": [{"parentRef": {"name": "public"}, "conditions": [
        {"type": "Accepted", "status": "True", "observedGeneration": generation}]}]}  # fmt: skip
    return obj


def test_the_weight_counts_once_the_gateway_has_taken_the_routes_generation() -> None:
    at10 = _programmed(route([OUR_RULE]), 2)
    at10["spec"]["rules"][0]["backendRefs"] = routes.weighted_backends(
        OUR_RULE["backendRefs"], "minilm", NS, 8080, 10
    )
    assert routes.live_weight(at10, "minilm") == 10
    at10["metadata"]["generation"] = 3  # patched again, not yet seen by the Gateway
    assert routes.live_weight(at10, "minilm") is None


def test_weights_are_read_back_and_a_later_step_rewrites_only_our_two_backends() -> None:
    before = _programmed(route([OUR_RULE]), 1)
    at10 = _applied(before, routes.patch(before, 0, routes.weighted_backends(
        OUR_RULE["backendRefs"], "minilm", NS, 8080, 10)))  # fmt: skip
    assert routes.live_weight(at10, "minilm") == 10
    backends = at10["spec"]["rules"][0]["backendRefs"]
    at50 = _applied(at10, routes.patch(at10, 0, routes.weighted_backends(
        backends, "minilm", NS, 8080, 50)))  # fmt: skip
    assert routes.live_weight(at50, "minilm") == 50
    assert len(at50["spec"]["rules"][0]["backendRefs"]) == 3
    back = routes.given_back(at50["spec"]["rules"][0]["backendRefs"], "minilm", NS, 8080)
    assert back == [OUR_RULE["backendRefs"][0],
                    {"group": "", "kind": "Service", "name": "minilm", "port": 8080,
                     "weight": 1, "filters": OUR_RULE["backendRefs"][1]["filters"]}]  # fmt: skip


def test_what_the_api_server_defaults_reads_back_as_unchanged() -> None:
    before = route([OUR_RULE])
    wanted = routes.weighted_backends(OUR_RULE["backendRefs"], "minilm", NS, 8080, 10)
    stored = _applied(before, routes.patch(before, 0, wanted))
    for backend in stored["spec"]["rules"][0]["backendRefs"]:
        backend.setdefault("group", "")
        backend.setdefault("kind", "Service")
        backend.setdefault("weight", 1)
    again = routes.weighted_backends(stored["spec"]["rules"][0]["backendRefs"], "minilm", NS,
                                     8080, 10)  # fmt: skip
    assert routes.patch(stored, 0, again) == [], "no write when nothing changed"


def test_a_backend_in_another_namespace_or_of_another_kind_is_not_ours() -> None:
    rule = {
        "backendRefs": [
            {"name": "minilm", "namespace": "elsewhere", "port": 8080},
            {"name": "minilm", "kind": "ServiceImport", "group": "multicluster"},
        ]
    }
    assert routes.our_rule(route([rule]), "minilm") is None  # fmt: skip


def test_a_missing_foreign_or_rejected_route_is_a_problem_that_names_it() -> None:
    ref = routes.RouteRef(routes.HTTP_ROUTE, "minilm", 8080)
    missing = routes.problem(None, ref, "minilm", NS)
    assert missing is not None
    assert "HTTPRoute ml/minilm does not exist" in missing
    foreign = routes.problem(route([OTHER_RULE]), ref, "minilm", NS)
    assert foreign is not None
    assert "no rule with a backend pointing at" in foreign
    rejected = route([OUR_RULE], parents=[{
        "parentRef": {"name": "public"}, "controllerName": "traefik.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                        "message": "no listener allows routes from namespace ml"}]}])  # fmt: skip
    why = routes.problem(rejected, ref, "minilm", NS)
    assert why is not None
    assert "not Accepted by Gateway public" in why
    assert "NotAllowedByListeners" in why
    assert routes.problem(route([OUR_RULE]), ref, "minilm", NS) is None


def _resolved_refs_false(message: str) -> dict[str, Any]:
    return route([OTHER_RULE, OUR_RULE], parents=[{"parentRef": {"name": "public"},
        "conditions": [{"type": "Accepted", "status": "True"},
                       {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted",
                        "message": message}]}])  # fmt: skip


def test_unresolved_refs_stop_us_only_when_they_are_our_services() -> None:
    ref = routes.RouteRef(routes.HTTP_ROUTE, "minilm", 8080)
    theirs = _resolved_refs_false("Cannot load HTTPBackendRef core/Service/default/kubernetes")
    assert routes.problem(theirs, ref, "minilm", NS) is None, "another rule's broken backend"
    ours = _resolved_refs_false("Cannot load HTTPBackendRef core/Service/ml/minilm-canary")
    why = routes.problem(ours, ref, "minilm", NS)
    assert why is not None
    assert "not ResolvedRefs" in why


@pytest.mark.parametrize(
    ("desired", "promoting", "stable", "canary", "expected"),
    [(None, False, 2, 0, 0), (10, False, 2, 0, 0), (10, False, 2, 1, 10),
     (50, True, 2, 1, 100), (50, False, 0, 1, 100)],
)  # fmt: skip
def test_the_weight_put_on_the_route(
    desired: int | None, promoting: bool, stable: int, canary: int, expected: int
) -> None:
    assert routes.canary_weight(desired, promoting, stable, canary) == expected


def test_the_gateway_router_reports_the_weight_the_route_carries() -> None:
    router = GatewayRouter(route_weight=10)
    assert router.actual_weight(stable_ready=1, canary_ready=1) == 10  # not 50 % of pods
    assert router.actual_weight(stable_ready=1, canary_ready=0) == 0
    assert GatewayRouter(None).actual_weight(1, 1) == 0


def test_a_release_asks_the_route_for_its_step_weight_once_the_canary_has_a_ready_pod() -> None:
    rollout = {
        "router": "gatewayAPI",
        "gateway": {"httpRoute": "minilm"},
        "steps": [{"weight": 10, "pause": "60s"}],
        "analysis": {"interval": "10s"},
    }
    world = World(spec=spec(replicas=4, rollout=rollout), stored=artifact(1))  # fmt: skip
    assert world.spec.rollout.router is Router.GATEWAY_API
    world.tick()
    world.settle()
    assert world.tick().phase is Phase.READY
    assert world.plan().route_weight == 0, "no canary: the stable takes all"
    world.stored = artifact(2, "int8-dynamic")
    world.spec = respec(world.spec, optimization={"precision": "fp16"})
    state = world.tick()
    assert state.canary is not None
    assert state.canary.phase is CanaryPhase.PROGRESSING
    assert world.plan().route_weight == 0, "no weight before the canary has a ready pod"
    world.settle()
    world.tick()
    assert world.plan().route_weight == 10


def test_a_step_without_a_pause_asks_for_a_promote_only_once_the_route_carries_its_weight() -> None:
    rollout = {"router": "gatewayAPI", "gateway": {"httpRoute": "minilm"},
               "steps": [{"weight": 10}, {"weight": 50}]}  # fmt: skip
    world = World(spec=spec(replicas=2, rollout=rollout), stored=artifact(1))
    world.tick()
    world.settle()
    world.tick()
    world.stored = artifact(2, "int8-dynamic")
    world.spec = respec(world.spec, optimization={"precision": "fp16"})
    world.tick()
    world.settle()
    state = world.tick()
    assert world.plan().route_weight == 10
    assert state.canary is not None
    assert state.canary.reason == "StepInProgress", "pods ready, the Gateway not yet told"
    world.route_weight = 0  # the new generation is not programmed yet: the old weights
    state = world.tick()
    assert state.canary is not None
    assert state.canary.reason == "StepInProgress"
    world.route_weight = 10
    state = world.tick()
    assert state.canary is not None
    assert (state.canary.reason, state.canary.weight) == ("WaitingForPromotion", 10)
