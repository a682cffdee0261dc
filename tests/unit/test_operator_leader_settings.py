"""Leader election settings fail fast with a message that says what to set."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from modelship.domain import settings as settings_module
from modelship.domain.settings import Settings
from modelship.leader import Timing


def test_timings_must_be_ordered() -> None:
    Timing(lease_seconds=15, renew_deadline_seconds=10, retry_seconds=2)
    with pytest.raises(ValueError, match="retry < renew deadline < lease"):
        Timing(lease_seconds=10, renew_deadline_seconds=10, retry_seconds=2)


def test_the_lease_namespace_comes_from_the_pod_or_must_be_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODELSHIP_LEADER_ELECTION_NAMESPACE", raising=False)
    monkeypatch.setenv("MODELSHIP_LEADER_ELECTION", "true")
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    with pytest.raises(ValidationError, match="set MODELSHIP_LEADER_ELECTION_NAMESPACE"):
        Settings()
    in_pod = tmp_path / "namespace"
    in_pod.write_text("ops\n")
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", in_pod)
    assert Settings().leader_election_namespace == "ops"
    monkeypatch.setenv("MODELSHIP_LEADER_ELECTION_NAMESPACE", "elsewhere")
    assert Settings().leader_election_namespace == "elsewhere"
