"""Why a pod cannot start, read from its status: one set of reasons for every pod we create.

Serving pods (``health``) and builder pods (``observation``) are judged by the same rules; each
caller words the advice for its own pod, since what to change differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
"""Waiting reasons of a container whose image cannot be pulled."""
CONTAINER_CONFIG_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
"""Waiting reasons of a container the kubelet cannot create or start (a missing Secret, ...)."""


@dataclass(frozen=True)
class StartFault:
    """A container that cannot start: the kubelet's reason and message, and its image."""

    container: str
    reason: str
    message: str
    image: str

    @property
    def image_pull(self) -> bool:
        return self.reason in IMAGE_PULL_REASONS


def pod_name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def is_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True (it passes its readiness probe, so it takes traffic)."""
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Init containers first, then the others, as the kubelet runs them."""
    status = pod.get("status") or {}
    return (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])


def start_fault(container_status: dict[str, Any]) -> StartFault | None:
    """The container is waiting for a reason that will not go away by itself."""
    waiting = (container_status.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason") or ""
    if reason not in IMAGE_PULL_REASONS | CONTAINER_CONFIG_REASONS:
        return None
    return StartFault(
        container=container_status.get("name", "?"),
        reason=reason,
        message=waiting.get("message") or "",
        image=container_status.get("image", ""),
    )


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's message when it cannot place the pod, else None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return str(cond.get("message") or "")
    return None
