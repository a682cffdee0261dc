"""The Gateway API router: canary weights on a user's HTTPRoute / GRPCRoute.

The user owns the route (its hostnames, matches, filters, other rules); the operator owns only
the ``backendRefs`` of the one rule that points at the ModelDeployment, which it sets to the
``<name>-stable`` and ``<name>-canary`` Services with the canary's weight. Every other rule,
and every other backend of that rule, is kept exactly as it is: the change is a JSON patch of
that one list, guarded by a ``test`` of its current value, so a concurrent edit of the rule makes
the patch fail instead of being overwritten. When the ModelDeployment goes away the rule is
given back pointing at the ``<name>`` Service alone.

Pure functions here; the reconciler reads the routes and sends the patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelship.domain import naming

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
PLURALS = {HTTP_ROUTE: "httproutes", GRPC_ROUTE: "grpcroutes"}
SERVICE = {"group": "", "kind": "Service"}
"""A backendRef's defaults (the API server fills them in)."""


@dataclass(frozen=True)
class RouteRef:
    kind: str
    name: str
    port: int
    """The Services' port for this kind of route (REST for HTTPRoute, gRPC for GRPCRoute)."""


def _ours(owner_name: str) -> set[str]:
    return {
        naming.serving_name(owner_name),
        naming.stable_service_name(owner_name),
        naming.canary_service_name(owner_name),
    }


def _is_our_backend(ref: dict[str, Any], owner_name: str, namespace: str) -> bool:
    return (
        ref.get("group", "") in ("", "core")
        and ref.get("kind", "Service") == "Service"
        and ref.get("namespace", namespace) == namespace
        and ref.get("name") in _ours(owner_name)
    )


def our_rule(route: dict[str, Any], owner_name: str) -> int | None:
    """Index of the first rule with a backend that is one of our Services, or None."""
    namespace = route.get("metadata", {}).get("namespace", "")
    for i, rule in enumerate(route.get("spec", {}).get("rules") or []):
        if any(_is_our_backend(b, owner_name, namespace) for b in rule.get("backendRefs") or []):
            return i
    return None


def weighted_backends(
    backends: list[dict[str, Any]], owner_name: str, namespace: str, port: int, weight: int
) -> list[dict[str, Any]]:
    """The rule's backends with ours replaced by stable (100 - weight) and canary (weight), at
    the place of the first of ours; foreign backends stay as they are, in order. Fields a user
    set on our first backend (``filters``) are kept on both."""
    if not 0 <= weight <= 100:
        raise ValueError(f"a weight is 0-100, not {weight}")
    first = next(b for b in backends if _is_our_backend(b, owner_name, namespace))
    extra = {k: v for k, v in first.items() if k not in ("group", "kind", "name", "namespace",
                                                          "port", "weight")}  # fmt: skip
    # Written with the values the API server defaults (group, kind), so what is read back
    # equals what was written and an unchanged weight costs no patch.
    ours = [
        {**extra, **SERVICE, "name": naming.stable_service_name(owner_name), "port": port,
         "weight": 100 - weight},
        {**extra, **SERVICE, "name": naming.canary_service_name(owner_name), "port": port,
         "weight": weight},
    ]  # fmt: skip
    result: list[dict[str, Any]] = []
    for b in backends:
        if not _is_our_backend(b, owner_name, namespace):
            result.append(b)
        elif b is first:
            result.extend(ours)
    return result


def given_back(
    backends: list[dict[str, Any]], owner_name: str, namespace: str, port: int
) -> list[dict[str, Any]]:
    """The rule's backends as before the operator took them: ours replaced by ``<name>``."""
    first = next(b for b in backends if _is_our_backend(b, owner_name, namespace))
    extra = {k: v for k, v in first.items() if k not in ("group", "kind", "name", "namespace",
                                                          "port", "weight")}  # fmt: skip
    result: list[dict[str, Any]] = []
    for b in backends:
        if not _is_our_backend(b, owner_name, namespace):
            result.append(b)
        elif b is first:
            result.append(
                {**extra, **SERVICE, "name": naming.serving_name(owner_name), "port": port,
                 "weight": 1}
            )  # fmt: skip
    return result


def patch(route: dict[str, Any], rule: int, backends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A JSON patch that replaces rule ``rule``'s backendRefs if they are still what we read;
    empty when there is nothing to change."""
    current = route["spec"]["rules"][rule].get("backendRefs") or []
    if current == backends:
        return []
    path = f"/spec/rules/{rule}/backendRefs"
    return [{"op": "test", "path": path, "value": current},
            {"op": "replace", "path": path, "value": backends}]  # fmt: skip


def programmed(route: dict[str, Any]) -> bool:
    """Whether every Gateway has accepted the route's current generation (its conditions'
    observedGeneration): until then it may still route by the previous weights."""
    generation = route.get("metadata", {}).get("generation")
    parents = route.get("status", {}).get("parents") or []
    accepted = [
        c for p in parents for c in p.get("conditions") or [] if c.get("type") == "Accepted"
    ]
    return bool(accepted) and all(
        c.get("status") == "True" and c.get("observedGeneration", generation) == generation
        for c in accepted
    )


def live_weight(route: dict[str, Any], owner_name: str) -> int | None:
    """The canary's weight the route carries now (percent of our backends' total), once its
    Gateways have taken the current generation; None before."""
    rule = our_rule(route, owner_name)
    if rule is None or not programmed(route):
        return None
    namespace = route.get("metadata", {}).get("namespace", "")
    ours = [
        b for b in route["spec"]["rules"][rule].get("backendRefs") or []
        if _is_our_backend(b, owner_name, namespace)
    ]  # fmt: skip
    total = sum(int(b.get("weight", 1)) for b in ours)
    canary = sum(
        int(b.get("weight", 1)) for b in ours if b["name"] == naming.canary_service_name(owner_name)
    )
    return 0 if total == 0 else round(100 * canary / total)


def problem(
    route: dict[str, Any] | None, ref: RouteRef, owner_name: str, namespace: str
) -> str | None:
    """Why the route cannot carry the canary's weight, or None when it can."""
    where = f"{ref.kind} {namespace}/{ref.name}"
    if route is None:
        return (
            f"{where} does not exist: create it with a rule whose backendRefs name Service "
            f"{naming.serving_name(owner_name)} (port {ref.port}), or fix "
            "spec.rollout.gateway"
        )
    if our_rule(route, owner_name) is None:
        return (
            f"{where} has no rule with a backend pointing at this ModelDeployment: add "
            f"backendRefs [{{name: {naming.serving_name(owner_name)}, port: {ref.port}}}] to "
            "the rule that should serve it"
        )
    for parent in route.get("status", {}).get("parents") or []:
        gateway = parent.get("parentRef", {}).get("name", "?")
        for condition in parent.get("conditions") or []:
            if condition.get("status") != "False":
                continue
            # Unresolved refs are route-wide: only those naming one of our Services stop us (a
            # broken backend of another rule is its owner's business, our rule still routes).
            if condition.get("type") == "Accepted" or (
                condition.get("type") == "ResolvedRefs"
                and _names_ours(condition.get("message", ""), owner_name, namespace)
            ):
                return (
                    f"{where} is not {condition['type']} by Gateway {gateway}: "
                    f"{condition.get('reason', '')}: {condition.get('message', '')}"
                )
    return None


def _names_ours(message: str, owner_name: str, namespace: str) -> bool:
    """Whether an unresolved-refs message is about one of our Services (or says nothing)."""
    return not message or any(
        f"{namespace}/{service}" in message or f"Service {service}" in message
        for service in _ours(owner_name)
    )


def canary_weight(
    canary_desired_weight: int | None, promoting: bool, stable_ready: int, canary_ready: int
) -> int:
    """The weight to put on the route now: none before the canary has a ready pod (a backend
    without endpoints fails requests), all of it while promoting or once the stable has no
    ready pod, the step's weight otherwise; 0 without a release."""
    if canary_desired_weight is None or canary_ready == 0:
        return 0
    if promoting or stable_ready == 0:
        return 100
    return canary_desired_weight
