"""router: gatewayAPI on the real local node: Traefik (v3.6.12, built here) routes through the
user's HTTPRoute and GRPCRoute, and the operator sets the canary's weights on them.

The share of a bounded load that the canary served is counted from both revisions' own metrics
(each pod's ``modelship_requests_total``), for HTTP clients on keep-alive connections and a gRPC
client on one long-lived HTTP/2 connection: exactly the clients that stick to one pod with the
replica router.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from canary_models import GOOD_X, canary_model
from e2e_models import SMALL, pod_metrics, series_sum
from localkube import Cluster, gateway, stack
from localkube.load import infer_body
from polling import wait_for

pytestmark = pytest.mark.e2e

NS = stack.E2E_NAMESPACE
TOLERANCE = 3.0
"""Percentage points between the weight asked and the share served."""


@pytest.fixture(scope="module")
def gw(modelship: Cluster) -> Cluster:
    gateway.start(modelship)
    return modelship


def _routes(name: str) -> list[dict[str, Any]]:
    parent = [{"name": gateway.GATEWAY, "namespace": gateway.NS, "sectionName": "http"}]
    return [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "parentRefs": parent,
                "rules": [
                    {   # a rule of someone else's, which must stay as it is
                        "matches": [{"path": {"type": "PathPrefix", "value": "/other"}}],
                        "backendRefs": [{"name": "kubernetes", "namespace": "default",
                                         "port": 443}],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix",
                                              "value": f"/v2/models/{name}"}}],
                        "backendRefs": [{"name": name, "port": 8080}],
                    },
                ],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "parentRefs": parent,
                "rules": [{"backendRefs": [{"name": name, "port": 8081}]}],
            },
        },
    ]  # fmt: skip


def _spec(models: dict[str, tuple[str, str]], version: str, name: str) -> dict[str, Any]:
    uri, sha = models[version]
    return {
        "model": {"uri": uri, "sha256": sha},
        "optimization": {"precision": "fp32"},
        "serving": {"resources": SMALL, "grpc": True},
        "scaling": {"minReplicas": 2, "maxReplicas": 2},
        "rollout": {
            "router": "gatewayAPI",
            "gateway": {"httpRoute": name, "grpcRoute": name},
            "steps": [{"weight": 10}, {"weight": 50}],  # each waits for a promote
            "progressDeadline": "10m",
            "scaleDownDelay": "5s",
            "analysis": {"interval": "5s", "minRequests": 10, "inconclusiveLimit": 2,
                         "onInconclusive": "promote"},
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def models(gw: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    import hashlib

    workdir = tmp_path_factory.mktemp("gateway-models")
    prefix = f"gateway-{uuid.uuid4().hex[:6]}"
    found = {}
    for version, seed in (("v1", 31), ("v2", 32)):
        path = canary_model(workdir / f"{version}.onnx", seed=seed)
        uri = stack.seed_model(gw, NS, path, f"{prefix}/{version}.onnx")
        found[version] = (uri, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


@pytest.fixture
def released(gw: Cluster, models: dict[str, tuple[str, str]]) -> Iterator[str]:
    name = "gw-split"
    for obj in _routes(name):
        stack.apply(gw, NS, obj)
    stack.apply_mdep(gw, NS, name, _spec(models, "v1", name))
    yield name
    gw.kubectl("delete", "mdep", name, "-n", NS, "--ignore-not-found", "--wait=true",
               timeout=180)  # fmt: skip
    gw.kubectl("delete", "httproute,grpcroute", name, "-n", NS, "--ignore-not-found")


def _counts(cluster: Cluster, name: str) -> dict[tuple[str, str], float]:
    """Requests answered 200, by (revision, protocol), summed over the revision's pods."""
    counts: dict[tuple[str, str], float] = {}
    for revision, text in pod_metrics(cluster, name):
        for protocol in ("rest", "grpc"):
            served = series_sum(text, "modelship_requests_total", code="200", protocol=protocol)
            counts[(revision, protocol)] = counts.get((revision, protocol), 0.0) + served
    return counts


def _http_load(url: str, requests: int) -> None:
    """``hey`` with keep-alive: 4 connections that each stay open for the whole run."""
    binary = shutil.which("hey")
    assert binary, "hey is not installed: run hack/install-host-deps.sh"
    out = subprocess.run(
        [binary, "-n", str(requests), "-c", "4", "-m", "POST", "-T", "application/json",
         "-d", infer_body(GOOD_X), url],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert f"[200]\t{requests} responses" in out, out


def _grpc_load(address: str, model: str, requests: int) -> None:
    """One channel, one HTTP/2 connection, ``requests`` calls."""
    client = tgrpc.InferenceServerClient(address)
    tensor = tgrpc.InferInput("x", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.array([GOOD_X], dtype=np.float32))
    try:
        for _ in range(requests):
            client.infer(model, [tensor])
    finally:
        client.close()


def _until_the_gateway_routes_to(cluster: Cluster, name: str, canary: str) -> None:
    """The route's status says its Gateway took the weights; Traefik applies its new
    configuration a moment later (it batches provider updates): probe until the canary has
    answered through the Gateway on both protocols, then measure."""
    address = gateway.address(cluster)

    def served() -> bool:
        before = _counts(cluster, name)
        _http_load(f"http://{address}/v2/models/{name}/infer", 48)  # hey: a multiple of -c
        _grpc_load(address, name, 48)
        after = _counts(cluster, name)
        return all(
            after.get((canary, p), 0.0) > before.get((canary, p), 0.0) for p in ("rest", "grpc")
        )

    wait_for(lambda: served() or None, "the Gateway to send requests to the canary", 60)


def _shares(cluster: Cluster, name: str, canary: str, requests: int) -> dict[str, float]:
    _until_the_gateway_routes_to(cluster, name, canary)
    before = _counts(cluster, name)
    address = gateway.address(cluster)
    _http_load(f"http://{address}/v2/models/{name}/infer", requests)
    _grpc_load(address, name, requests)
    after = _counts(cluster, name)
    shares = {}
    for protocol in ("rest", "grpc"):
        served = {
            rev: after.get((rev, protocol), 0.0) - before.get((rev, protocol), 0.0)
            for rev, p in after
            if p == protocol
        }
        total = sum(served.values())
        assert total == pytest.approx(requests, abs=2), (protocol, served)
        shares[protocol] = 100 * served.get(canary, 0.0) / total
    return shares


def _canary(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(stack.get_mdep(cluster, NS, name).get("status", {}).get("canary") or {})


def _waiting_at(cluster: Cluster, name: str, step: int) -> dict[str, Any]:
    return stack.wait_for(
        cluster, NS, name,
        lambda o: (c := o.get("status", {}).get("canary") or {}).get("reason")
        == "WaitingForPromotion" and c.get("step") == step,
        f"waiting for promotion at step {step + 1}", 600,
    )["status"]["canary"]  # fmt: skip


def _route(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", kind, name, "-n", NS, "-o", "json").stdout))


def test_route_weights_split_http_and_grpc_requests_exactly_at_10_and_50_percent(
    gw: Cluster, models: dict[str, tuple[str, str]], released: str
) -> None:
    name = released
    stack.wait_for(gw, NS, name, stack.is_ready, "Ready", 900)

    def taken() -> bool:
        rule = _route(gw, "httproute", name)["spec"]["rules"][1]
        return rule["backendRefs"][0].get("name") == f"{name}-stable"

    wait_for(lambda: taken() or None, "the operator to take the route", 60)
    other_rule = _route(gw, "httproute", name)["spec"]["rules"][0]
    stack.apply_mdep(gw, NS, name, _spec(models, "v2", name))
    canary = _waiting_at(gw, name, 0)
    assert canary["weight"] == 10, canary
    at10 = _shares(gw, name, canary["revision"], 1000)
    print(f"{name}: canary share at 10 %: {at10}")
    assert all(abs(share - 10) <= TOLERANCE for share in at10.values()), at10

    gw.kubectl("annotate", "mdep", name, "-n", NS, "--overwrite",
               f"modelship.io/promote={canary['revision']}@s0a{canary['attempt']}")  # fmt: skip
    canary = _waiting_at(gw, name, 1)
    assert canary["weight"] == 50, canary
    at50 = _shares(gw, name, canary["revision"], 1000)
    print(f"{name}: canary share at 50 %: {at50}")
    assert all(abs(share - 50) <= TOLERANCE for share in at50.values()), at50

    route = _route(gw, "httproute", name)
    assert route["spec"]["rules"][0] == other_rule, "another rule stays byte for byte"
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][1]["backendRefs"]}
    assert weights == {f"{name}-stable": 50, f"{name}-canary": 50}

    gw.kubectl("annotate", "mdep", name, "-n", NS, "--overwrite",
               f"modelship.io/promote={canary['revision']}@s1a{canary['attempt']}")  # fmt: skip
    stack.wait_for(gw, NS, name, lambda o: _canary(gw, name).get("phase") == "Succeeded"
                   and stack.is_ready(o), "promoted", 600)  # fmt: skip
    weights = {
        b["name"]: b["weight"]
        for b in _route(gw, "httproute", name)["spec"]["rules"][1]["backendRefs"]
    }
    assert weights == {f"{name}-stable": 100, f"{name}-canary": 0}, "all on the new stable"

    gw.kubectl("delete", "mdep", name, "-n", NS, "--wait=true", timeout=180)
    for kind in ("httproute", "grpcroute"):
        rule = _route(gw, kind, name)["spec"]["rules"][-1]
        assert [b["name"] for b in rule["backendRefs"]] == [name], f"{kind} given back"


def test_a_route_that_does_not_exist_is_a_condition_naming_it(
    gw: Cluster, models: dict[str, tuple[str, str]]
) -> None:
    name = "gw-missing"
    spec = _spec(models, "v1", name)
    spec["rollout"]["gateway"] = {"httpRoute": "no-such-route"}
    stack.apply_mdep(gw, NS, name, spec)
    try:
        obj = stack.wait_for(
            gw, NS, name,
            lambda o: "no-such-route" in stack.condition(o, "Degraded").get("message", ""),
            "Degraded naming the route", 600,
        )  # fmt: skip
        message = stack.condition(obj, "Degraded")["message"]
        assert f"HTTPRoute {NS}/no-such-route does not exist" in message, message
        assert obj["status"]["phase"] == "Degraded"
    finally:
        gw.kubectl("delete", "mdep", name, "-n", NS, "--ignore-not-found", "--wait=true",
                   timeout=180)  # fmt: skip
