"""Spec -> build plan -> Job name: the same artifact always gets the same Job."""

from __future__ import annotations

from typing import Any

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
    import pytest

    monkeypatch.setenv("MODELSHIP_STORE_PVC", "")
    with pytest.raises(ValueError, match="MODELSHIP_STORE_PVC"):
        Settings()


def test_namespaces_are_comma_separated(monkeypatch: Any) -> None:
    monkeypatch.setenv("MODELSHIP_NAMESPACES", "ml, staging")
    assert Settings().namespaces == ["ml", "staging"]
