"""Spec -> build plan -> Job name: the same artifact always gets the same Job."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelship.api.v1alpha1 import ModelDeploymentSpec
from modelship.domain import naming
from modelship.domain.plan import build_target, serving_threads
from modelship.domain.settings import Settings

SHA = "a" * 64


def spec(**model: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"uri": "s3://b/m.onnx"} | model})


def test_pinned_source_is_named_by_its_artifact_digest() -> None:
    target = build_target(spec(sha256=SHA), Settings().artifact_store())
    assert target.pinned_digest is not None
    assert target.key == target.pinned_digest
    assert target.job_name == "build-" + naming.hex_of(target.pinned_digest)[:20]
    assert target.index_key == "sha256-" + naming.hex_of(target.pinned_digest)


def test_unpinned_source_is_named_by_its_request_key() -> None:
    target = build_target(spec(), Settings().artifact_store())
    assert target.pinned_digest is None
    assert target.job_name == "build-" + target.request_key[:20]
    assert target.index_key == "request-" + target.request_key


def test_same_recipe_same_job_and_different_recipe_different_job() -> None:
    store = Settings().artifact_store()
    a = build_target(spec(sha256=SHA), store)
    b = build_target(spec(sha256=SHA), store)
    assert a.job_name == b.job_name
    faster = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://b/m.onnx", "sha256": SHA}, "optimization": {"precision": "fp16"}}
    )
    assert build_target(faster, store).job_name != a.job_name


def test_scaling_does_not_change_the_artifact() -> None:
    store = Settings().artifact_store()
    more = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://b/m.onnx"}, "scaling": {"maxReplicas": 9}}
    )
    assert build_target(more, store).key == build_target(spec(), store).key


def test_threads_follow_the_cpu_limit_then_the_request() -> None:
    def with_resources(resources: dict[str, Any]) -> ModelDeploymentSpec:
        return ModelDeploymentSpec.model_validate(
            {"model": {"uri": "s3://b/m"}, "serving": {"resources": resources}}
        )

    assert serving_threads(spec()) == 1
    assert serving_threads(with_resources({"requests": {"cpu": "2500m"}})) == 2
    assert serving_threads(with_resources({"requests": {"cpu": 1}, "limits": {"cpu": 4}})) == 4
    assert serving_threads(with_resources({"requests": {"cpu": "200m"}})) == 1


def test_store_from_settings(monkeypatch: Any) -> None:
    assert Settings().artifact_store().uri == "file:///artifacts"
    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", "arts")
    monkeypatch.setenv("MODELSHIP_STORE_S3_ENDPOINT", "http://127.0.0.1:9000")
    store = Settings().artifact_store()
    assert store.uri == "s3://arts/artifacts"
    assert store.s3 is not None
    assert store.s3.endpoint == "http://127.0.0.1:9000"


def test_settings_name_the_missing_store(monkeypatch: Any) -> None:
    monkeypatch.setenv("MODELSHIP_STORE_PVC", "")
    with pytest.raises(ValueError, match="MODELSHIP_STORE_PVC"):
        Settings()


def test_namespaces_are_comma_separated(monkeypatch: Any) -> None:
    monkeypatch.setenv("MODELSHIP_NAMESPACES", "ml, staging")
    assert Settings().namespaces == ["ml", "staging"]


def test_each_namespace_builds_into_its_own_part_of_the_store(monkeypatch: Any) -> None:
    assert Settings().artifact_store().for_namespace("ml").uri == "file:///artifacts/ml"
    monkeypatch.setenv("MODELSHIP_STORE_S3_BUCKET", "arts")
    s3 = Settings().artifact_store().for_namespace("team-a")
    assert s3.uri == "s3://arts/artifacts/team-a"
    assert s3.s3 == Settings().artifact_store().s3
    for bad in ("../other", "a/b", ""):
        with pytest.raises(ValueError, match="not a namespace"):
            Settings().artifact_store().for_namespace(bad)


def test_an_artifact_from_another_part_of_the_store_is_not_the_targets() -> None:
    """The index is writable by the namespace's users, and another namespace's artifact (or
    one from before the store had parts) must be built again from a source fetched here."""
    store = Settings().artifact_store().for_namespace("ml")
    target = build_target(spec(sha256=SHA), store)
    digest = target.pinned_digest
    assert digest is not None
    hex_ = naming.hex_of(digest)
    assert target.in_store(digest, f"file:///artifacts/ml/{hex_}")
    assert not target.in_store(digest, f"file:///artifacts/other/{hex_}")
    assert not target.in_store(digest, f"file:///artifacts/{hex_}")
    assert not target.in_store("sha256:" + "0" * 64, f"file:///artifacts/ml/{hex_}")
    assert not target.in_store("sha256:../x", "file:///artifacts/ml/../x")


def test_pickles_are_built_only_when_the_operator_allows_them(monkeypatch: Any) -> None:
    pickled = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "s3://b/m.joblib", "format": "sklearn", "allowPickle": True}}
    )
    store = Settings().artifact_store()
    refused = build_target(pickled, store, Settings().build_policy())
    assert refused.refusal is not None
    assert "MODELSHIP_ALLOW_PICKLE" in refused.refusal
    assert "format onnx" in refused.refusal
    assert build_target(spec(), store, Settings().build_policy()).refusal is None
    monkeypatch.setenv("MODELSHIP_ALLOW_PICKLE", "true")
    allowed = build_target(pickled, store, Settings().build_policy())
    assert allowed.refusal is None
    assert allowed.key == refused.key, "the operator's settings are not part of the artifact"


def test_where_builds_may_fetch_from_is_the_operators_setting(monkeypatch: Any) -> None:
    store = Settings().artifact_store()
    default = build_target(spec(), store, Settings().build_policy()).plan.source_access
    assert not default.internal
    assert {"127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8"} <= set(default.denied_networks)
    monkeypatch.setenv("MODELSHIP_CLUSTER_CIDRS", "10.96.0.0/12, 10.244.0.0/16")
    narrowed = build_target(spec(), store, Settings().build_policy())
    assert "10.0.0.0/8" not in narrowed.plan.source_access.denied_networks
    assert {"169.254.0.0/16", "10.96.0.0/12"} <= set(narrowed.plan.source_access.denied_networks)
    assert narrowed.plan.plan_key == build_target(spec(), store).plan.plan_key
    monkeypatch.setenv("MODELSHIP_CLUSTER_CIDRS", "not-a-cidr")
    with pytest.raises(ValidationError):
        Settings()


def test_a_pickled_pytorch_module_needs_the_operators_permission_an_export_does_not(
    monkeypatch: Any,
) -> None:
    store = Settings().artifact_store()
    exported = spec(uri="s3://b/cnn.pt2", format="pytorch")
    pickled = spec(uri="s3://b/cnn.pt", format="pytorch", allowPickle=True)
    assert build_target(exported, store, Settings().build_policy()).refusal is None
    refused = build_target(pickled, store, Settings().build_policy()).refusal
    assert refused is not None
    assert "MODELSHIP_ALLOW_PICKLE" in refused
    assert "torch.export.save" in refused
    monkeypatch.setenv("MODELSHIP_ALLOW_PICKLE", "true")
    assert build_target(pickled, store, Settings().build_policy()).refusal is None
