"""deploy/rbac.yaml is generated from modelship.rbac and must not drift."""

from __future__ import annotations

from pathlib import Path

from modelship import rbac

ROOT = Path(__file__).resolve().parents[2]


def test_rbac_manifest_is_up_to_date() -> None:
    assert (ROOT / "deploy" / "rbac.yaml").read_text() == rbac.render(), (
        "deploy/rbac.yaml is stale: run `.venv/bin/python -m modelship.rbac > deploy/rbac.yaml`"
    )


def test_role_never_grants_wildcards_or_secrets() -> None:
    for rule in rbac.RULES:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]
