"""The artifact index: what the store holds, in one ConfigMap per namespace (see docs/operator.md).

Keys are ``sha256-<hex>`` (by artifact digest) and ``request-<request key>`` (unpinned sources);
values the artifact JSON and when it was recorded. The index is bounded: a record that would take
it past :data:`MAX_KEYS` keys or :data:`MAX_BYTES` of data first evicts the oldest records of
artifacts no Deployment in the namespace serves. An evicted artifact asked for again is built
again once, and the builder's own store check makes that rebuild cheap.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from modelship.domain import naming
from modelship.domain.observation import Artifact

MAX_KEYS = 2000
"""About 1000 artifacts (two keys each when unpinned)."""
MAX_BYTES = 768 * 1024
"""Below the API server's 1 MiB limit on a whole ConfigMap, with room for its metadata."""


def is_ours(configmap: dict[str, Any]) -> bool:
    """The operator created it (it has no owner: it outlives ModelDeployments, like the store)."""
    labels = (configmap.get("metadata") or {}).get("labels") or {}
    return labels.get(naming.LABEL_MANAGED_BY) == naming.MANAGER


def record(artifact: Artifact, request_index_key: str, recorded_at: str) -> dict[str, str]:
    """The keys that record an artifact: by its digest and by the build request's key."""
    value = json.dumps(
        artifact.to_status() | {"recordedAt": recorded_at}, sort_keys=True, separators=(",", ":")
    )
    return {naming.index_key_for_digest(artifact.digest): value, request_index_key: value}


def _size(data: Mapping[str, str]) -> int:
    return sum(len(k) + len(v) for k, v in data.items())


def _fits(data: Mapping[str, str]) -> bool:
    return len(data) <= MAX_KEYS and _size(data) <= MAX_BYTES


def needs_room(current: Mapping[str, str], adding: Mapping[str, str]) -> bool:
    return not _fits(dict(current) | dict(adding))


def _recorded_at(value: str) -> str:
    """When an entry was recorded; entries from before the field existed count as oldest."""
    try:
        data = json.loads(value)
    except ValueError:
        return ""
    stamp = data.get("recordedAt") if isinstance(data, dict) else None
    return stamp if isinstance(stamp, str) else ""


def _digest(value: str) -> str | None:
    artifact = Artifact.from_json(value)
    return artifact.digest if artifact else None


def evictions(
    current: Mapping[str, str], adding: Mapping[str, str], in_use: Collection[str]
) -> list[str] | None:
    """The keys to remove so that ``adding`` fits, oldest first, never one of an artifact in
    ``in_use`` (digests) or being added; None when that cannot make room."""
    merged = dict(current) | dict(adding)
    if _fits(merged):
        return []
    keep = set(in_use) | {d for v in adding.values() if (d := _digest(v))}
    candidates = sorted(
        (_recorded_at(value), key)
        for key, value in current.items()
        if key not in adding and _digest(value) not in keep
    )
    out: list[str] = []
    for _, key in candidates:
        if _fits(merged):
            break
        del merged[key]
        out.append(key)
    return out if _fits(merged) else None
