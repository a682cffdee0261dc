"""Golden digests: an accidental change of what identifies an artifact fails here.

Every ModelDeployment in a fleet is keyed by these digests: if they change, an operator upgrade
rebuilds every artifact and (with canaries) starts a release of each. Changing one on purpose
means bumping ``BUILDER_VERSION`` and updating this table (docs/builder.md, "Digests").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field

from modelship.api.artifact import (
    BUILDER_VERSION,
    RECIPE_FIELDS,
    ArtifactStore,
    BuildPlan,
    canonical_json,
    sha256_hex,
)
from modelship.api.v1alpha1 import ModelDeploymentSpec, ModelSource, OptimizationSpec
from modelship.domain.plan import build_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STORE = ArtifactStore(uri="file:///artifacts")

GOLDEN: dict[str, dict[str, str | None]] = {
    "keras-mlp.yaml": {
        "plan_key": "9eb669e37e301293981afaed07b73fda2a5e0277b62be324560675b7e60abd46",
        "request_key": "e0a2d8aa141911d1b231733517efdc21e48713de578d325247cb889c936a14df",
        "pinned_digest": None,
    },
    "pytorch-cnn.yaml": {
        "plan_key": "fb30d38b5dfe07bac54c0968f02fb1f3d5e0943abe9bfb1c81a5819b5e03c845",
        "request_key": "d51af6fe9e6f69126b49d8d5a18bd7ff29f0afff2a726d8e4ceda7f7872494c6",
        "pinned_digest": None,
    },
    "tensorflow-savedmodel.yaml": {
        "plan_key": "31f06dbef0a5e0ce86fd39b24651610148ecb15ed377390d7422fb5267cc69b0",
        "request_key": "e6f77b1a13bffc01d378ad92937b8e3f0cd69ebaad386bf30f7345190e8ecc9b",
        "pinned_digest": None,
    },
    "tflite-mlp.yaml": {
        "plan_key": "6785086cbab98ff62ffea6bde52f279db62b16d68b87e78fc8ea3d12dd1722d4",
        "request_key": "e5f792c0f116cd9c0a8106a80ff1f062f20fd04061f022eb9f49d67d4cf90b1e",
        "pinned_digest": None,
    },
    "canary.yaml": {
        "plan_key": "e17d29dd020c6495cf17e784eed65da855072da2ae19d2810fd6e2bad64d4b16",
        "request_key": "871abbb30352e552d9dcc559afde6e253877ec1ab7bf77c86ad520692aaa8a39",
        "pinned_digest": None,
    },
    "digits-sklearn.yaml": {
        "plan_key": "7e387f66e0d0e95431e2737bf347dbd48e0ba82db65982245bd869846d19730b",
        "request_key": "127928cb108a7520c15735d0ceb00811bb5577d3f339bb46b2143ad6690167c5",
        "pinned_digest": None,
    },
    "minilm.yaml": {
        "plan_key": "f013c5da499ce934e2634104e61c45aaa083f4908218b7e61032d5a13aed707e",
        "request_key": "9f4935f976b32ed9a85bfe8d8e91ab8cb69288d34f68a9c4a4d20c28419a5981",
        "pinned_digest": "sha256:9181ff2c227c217d8a2501456267d3f933d6bda3f13fe881aa326171bd719732",
    },
    "rolling-fp32.yaml": {
        "plan_key": "a1f8fc97ff17b913deb412415df5632a74820b48363db61c03f7f15b2fad3242",
        "request_key": "41772c586d4130918d31d7c3b8c1232c945320a0ed32ae9b905c1c3c804621ab",
        "pinned_digest": None,
    },
}
"""example file -> plan_key, request_key and (for pinned sources) the artifact digest."""

DEFAULTS_GOLDEN = "100f0426e6602697f3f558cd58cc5759885bd236620e21b16a6d133ffe9ab204"
"""sha256 of every recipe field at its (non-empty) default: a default that changes builds
something else from the same spec, though the default-free recipe stays the same."""


def example_plan(name: str) -> BuildPlan:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    return build_plan(ModelDeploymentSpec.model_validate(doc["spec"]), STORE)


def keys(plan: BuildPlan) -> dict[str, str | None]:
    return {
        "plan_key": plan.plan_key,
        "request_key": plan.request_key,
        "pinned_digest": plan.pinned_digest,
    }


def test_every_example_is_pinned() -> None:
    assert sorted(GOLDEN) == sorted(p.name for p in EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_example_digests_are_stable(name: str) -> None:
    assert keys(example_plan(name)) == GOLDEN[name], (
        f"the digests of examples/{name} changed: every artifact of the fleet would be rebuilt "
        "after an upgrade. If that is meant, bump BUILDER_VERSION (docs/builder.md) and update "
        "GOLDEN"
    )


def test_recipe_defaults_are_stable() -> None:
    plan = BuildPlan(source=ModelSource(uri="pvc://c/m.onnx"), store=STORE)
    full = plan.model_dump(mode="json", by_alias=True, include=RECIPE_FIELDS, exclude_none=True)
    assert sha256_hex(canonical_json(full)) == DEFAULTS_GOLDEN, (
        f"the recipe defaults changed ({full}). If a default now builds something else, the "
        "same spec gets another artifact under the same digest: bump BUILDER_VERSION "
        "(docs/builder.md). Either way, update DEFAULTS_GOLDEN"
    )


def test_a_new_optional_field_at_its_default_changes_no_digest() -> None:
    class UpgradedOptimization(OptimizationSpec):
        """The API of a later operator, with one more optional field."""

        distillation: str | None = Field(default=None)

    class UpgradedPlan(BuildPlan):
        optimization: UpgradedOptimization = Field(default_factory=UpgradedOptimization)

    before = example_plan("minilm.yaml")
    dumped = before.model_dump(mode="json", by_alias=True)
    after = UpgradedPlan.model_validate(dumped)
    assert after.plan_key == before.plan_key
    dumped["optimization"]["distillation"] = "teacher"
    assert UpgradedPlan.model_validate(dumped).plan_key != before.plan_key


@pytest.mark.parametrize(
    "spelled",
    [
        {"optimization": {"accuracy": {"min": 0.99}, "graph": "extended"}},
        {"optimization": {"pruning": {"sparsity": 0.0}, "precision": "auto"}},
        {"model": {"format": "onnx"}},
    ],
)
def test_writing_a_default_out_is_the_same_recipe(spelled: dict[str, Any]) -> None:
    base: dict[str, Any] = {"model": {"uri": "pvc://c/m.onnx"}}
    plain = build_plan(ModelDeploymentSpec.model_validate(base), STORE)
    merged = base | {k: ({**base.get(k, {}), **v}) for k, v in spelled.items()}
    explicit = build_plan(ModelDeploymentSpec.model_validate(merged), STORE)
    assert explicit.plan_key == plain.plan_key


def test_the_builder_version_is_in_every_recipe() -> None:
    plan = BuildPlan(source=ModelSource(uri="pvc://c/m.onnx"), store=STORE)
    assert plan.recipe()["builderVersion"] == BUILDER_VERSION
