"""The artifact index stays bounded: the oldest records of unused artifacts make room."""

from __future__ import annotations

import json

import pytest

from modelship.domain import artifact_index, naming
from modelship.domain.observation import Artifact


def art(n: int) -> Artifact:
    return Artifact(f"sha256:{n:064x}", f"file:///artifacts/{n:064x}", "fp32")


def entries(*ns: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in ns:
        out |= artifact_index.record(art(n), f"request-{n}", f"2026-01-01T00:00:{n:02d}Z")
    return out


def test_a_record_names_the_artifact_twice_with_when_it_was_recorded() -> None:
    rec = artifact_index.record(art(1), "request-k", "2026-12-01T00:00:00Z")
    assert set(rec) == {naming.index_key_for_digest(art(1).digest), "request-k"}
    value = json.loads(rec["request-k"])
    assert value["recordedAt"] == "2026-12-01T00:00:00Z"
    assert Artifact.from_json(rec["request-k"]) == art(1), "readers ignore the timestamp"


def test_nothing_is_evicted_while_it_fits() -> None:
    assert artifact_index.evictions(entries(1, 2), entries(3), set()) == []


def test_the_oldest_unused_go_first_and_served_ones_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_index, "MAX_KEYS", 6)
    current = entries(1, 2, 3)
    evict = artifact_index.evictions(current, entries(4), {art(1).digest})
    assert evict is not None
    assert sorted(evict) == sorted(entries(2)), "2 is the oldest not served"
    assert len(current) - len(evict) + 2 <= 6


def test_entries_from_before_timestamps_count_as_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_index, "MAX_KEYS", 4)
    legacy = {naming.index_key_for_digest(art(9).digest): art(9).to_json()}
    current = entries(1) | legacy
    assert artifact_index.evictions(current, entries(2), set()) == list(legacy)


def test_the_byte_size_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    current = entries(1, 2)
    monkeypatch.setattr(artifact_index, "MAX_BYTES", sum(len(k) + len(v) for k, v in
                                                         current.items()))  # fmt: skip
    assert artifact_index.needs_room(current, entries(3))
    evict = artifact_index.evictions(current, entries(3), set())
    assert evict is not None
    assert sorted(evict) == sorted(entries(1))


def test_no_room_without_evicting_what_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_index, "MAX_KEYS", 4)
    served = {art(1).digest, art(2).digest}
    assert artifact_index.evictions(entries(1, 2), entries(3), served) is None


def test_the_default_bound_fits_a_configmap() -> None:
    # A long S3 URI and variant: the byte cap holds before the API server's 1 MiB limit.
    long = Artifact(f"sha256:{1:064x}", "s3://" + "b" * 63 + "/" + "p" * 200 + "/" + "f" * 64,
                    "int8-dynamic", 10**12)  # fmt: skip
    value = artifact_index.record(long, "request-" + "k" * 64, "2026-12-01T00:00:00Z")
    per_key = max(len(k) + len(v) for k, v in value.items())
    assert min(artifact_index.MAX_KEYS * per_key, artifact_index.MAX_BYTES) < 1024 * 1024 - 8192
