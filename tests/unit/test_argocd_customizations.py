"""The Argo CD customizations of ModelDeployment (deploy/argocd/modelship.io/ModelDeployment/).

Every case of health_test.yaml and actions/action_test.yaml (Argo CD's own test format) runs here
with Lua 5.1, the language of Argo CD's gopher-lua, in a sandbox as bare as the one Argo CD gives
custom scripts: base functions and ``table``, no ``string``/``math``/``os`` library, no loading of
code. The sample objects keep the real status shape (pydantic), and argocd-cm.yaml must be the
rendering of the scripts (hack/argocd_cm.py --check).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

import argocd_cm
from modelship.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus

DIR = argocd_cm.CUSTOMIZATIONS
ACTIONS = DIR / "actions"
HEALTH_TESTS = DIR / "health_test.yaml"
ACTION_TESTS = ACTIONS / "action_test.yaml"
ACTION_NAMES = ["abort", "promote", "promote-full", "retry"]
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# Base functions gopher-lua registers without open libraries, less those that load code or
# print; plus the table library, which Argo CD opens for every script.
SANDBOX_GLOBALS = frozenset(
    {
        "_G",
        "_VERSION",
        "assert",
        "error",
        "getmetatable",
        "ipairs",
        "next",
        "pairs",
        "pcall",
        "rawequal",
        "rawget",
        "rawset",
        "select",
        "setmetatable",
        "tonumber",
        "tostring",
        "type",
        "unpack",
        "xpcall",
        "table",
    }
)
FORBIDDEN = re.compile(
    r"\b(string|math|os|io|debug|coroutine|package|require|dofile|loadfile|loadstring|load"
    r"|print|module|setfenv|getfenv)\b\s*[.(:]"
)
STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _sandbox() -> Any:
    lua = lua51.LuaRuntime(register_eval=False, unpack_returned_tuples=True)
    # Without the string library a string has no methods (gopher-lua sets no string metatable).
    lua.execute('debug.setmetatable("", nil)')
    g = lua.globals()
    for name in [k for k in g if k not in SANDBOX_GLOBALS]:
        g[name] = None
    return lua


def _to_lua(lua: Any, value: Any) -> Any:
    """YAML values as Argo CD hands them to Lua: maps and 1-based arrays, null left out."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(lua, item)
        return table
    if isinstance(value, list):
        return lua.table(*[_to_lua(lua, item) for item in value if item is not None])
    return value


def _from_lua(value: Any, like: Any = None) -> Any:
    """Back to Python; an empty table is a list where the input had a list (as Argo CD does)."""
    if lua51.lua_type(value) != "table":
        return value
    keys = list(value.keys())
    if not keys:
        return [] if isinstance(like, list) else {}
    if all(isinstance(k, int) for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        like_items = like if isinstance(like, list) else []
        return [
            _from_lua(value[i], like_items[i - 1] if i <= len(like_items) else None)
            for i in range(1, len(keys) + 1)
        ]
    like_map = like if isinstance(like, dict) else {}
    return {key: _from_lua(item, like_map.get(key)) for key, item in value.items()}


def run_script(script: Path, obj: dict[str, Any]) -> Any:
    """Run a customization script on ``obj`` as Argo CD does and return what it returns."""
    lua = _sandbox()
    lua.globals().obj = _to_lua(lua, obj)
    return _from_lua(lua.execute(script.read_text()), obj)


def _health_cases() -> list[Any]:
    return [
        pytest.param(case, id=Path(case["inputPath"]).stem) for case in _load(HEALTH_TESTS)["tests"]
    ]


def _discovery_cases() -> list[Any]:
    return [
        pytest.param(case, id=Path(case["inputPath"]).stem)
        for case in _load(ACTION_TESTS)["discoveryTests"]
    ]


def _action_cases() -> list[Any]:
    return [
        pytest.param(case, id=f"{case['action']}-{Path(case['inputPath']).stem}")
        for case in _load(ACTION_TESTS)["actionTests"]
    ]


@pytest.mark.parametrize("case", _health_cases())
def test_health(case: dict[str, Any]) -> None:
    expected = case["healthStatus"]
    assert expected["status"] in HEALTH_STATUSES
    assert run_script(DIR / "health.lua", _load(DIR / case["inputPath"])) == expected


@pytest.mark.parametrize("case", _discovery_cases())
def test_action_discovery(case: dict[str, Any]) -> None:
    result = run_script(ACTIONS / "discovery.lua", _load(ACTIONS / case["inputPath"]))
    found = sorted(({"name": name, **fields} for name, fields in result.items()), key=str)
    assert found == sorted(case["result"], key=str)


@pytest.mark.parametrize("case", _action_cases())
def test_action(case: dict[str, Any]) -> None:
    obj = _load(ACTIONS / case["inputPath"])
    output = run_script(ACTIONS / case["action"] / "action.lua", obj)
    assert output == _load(ACTIONS / case["expectedOutputPath"])


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_an_action_that_cannot_apply_fails_with_a_reason(action: str) -> None:
    """Discovery disables it in the UI; the CLI can still run it, and gets told why not."""
    obj = _load(DIR / "testdata" / "canary_succeeded.yaml")
    if action == "retry":
        obj["status"]["canary"]["phase"] = "Progressing"
    with pytest.raises(lua51.LuaError, match=rf"^{action}: canary 7c41d9e2b3 is "):
        run_script(ACTIONS / action / "action.lua", obj)
    with pytest.raises(lua51.LuaError, match=rf"^{action}: the ModelDeployment has no canary"):
        run_script(ACTIONS / action / "action.lua", _load(DIR / "testdata" / "no_status.yaml"))


def test_every_action_has_a_script_a_discovery_entry_and_a_test() -> None:
    assert argocd_cm.action_names() == ACTION_NAMES
    tests = _load(ACTION_TESTS)
    assert sorted(case["action"] for case in tests["actionTests"]) == ACTION_NAMES
    for case in tests["discoveryTests"]:
        assert sorted(entry["name"] for entry in case["result"]) == ACTION_NAMES


def test_every_sample_is_used_and_keeps_the_real_shape() -> None:
    used = {(DIR / c["inputPath"]).resolve() for c in _load(HEALTH_TESTS)["tests"]}
    tests = _load(ACTION_TESTS)
    for case in tests["discoveryTests"] + tests["actionTests"]:
        used |= {
            (ACTIONS / case[key]).resolve()
            for key in ("inputPath", "expectedOutputPath")
            if key in case
        }
    samples = sorted((DIR / "testdata").glob("*.yaml"))
    assert {p.resolve() for p in samples} == used
    for path in samples:
        obj = _load(path)
        assert (obj["apiVersion"], obj["kind"]) == ("modelship.io/v1alpha1", "ModelDeployment")
        ModelDeploymentSpec.model_validate(obj["spec"])
        if "status" in obj:
            ModelDeploymentStatus.model_validate(obj["status"])


@pytest.mark.parametrize(
    "script", sorted(DIR.rglob("*.lua")), ids=lambda p: str(p.relative_to(DIR))
)
def test_scripts_use_only_what_argo_cd_gives_custom_scripts(script: Path) -> None:
    """A library call on a branch no test takes would fail only in Argo CD: none at all."""
    code = STRING_LITERAL.sub('""', script.read_text())
    code = "\n".join(line.split("--", 1)[0] for line in code.splitlines())
    assert not FORBIDDEN.findall(code)
    assert not re.findall(r":\s*[A-Za-z_]\w*\s*\(", code), "methods (of strings) need libraries"


def test_the_sandbox_is_as_bare_as_argo_cds() -> None:
    lua = _sandbox()
    assert set(lua.globals()) == SANDBOX_GLOBALS
    gone = lua.execute("return string, math, os, io, require, load, loadstring, print, python")
    assert gone == (None,) * 9
    with pytest.raises(lua51.LuaError, match="attempt to index a string value"):
        lua.execute('return ("x"):upper()')


def test_argocd_cm_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert argocd_cm.main(["--check"]) == 0, capsys.readouterr().err


def test_argocd_cm_carries_the_scripts_where_argo_cd_reads_them() -> None:
    data = _load(argocd_cm.ARGOCD_CM)["data"]
    key = "modelship.io_ModelDeployment"
    assert set(data) == {
        f"resource.customizations.health.{key}",
        f"resource.customizations.actions.{key}",
        f"resource.customizations.ignoreDifferences.{key}",
    }
    assert data[f"resource.customizations.health.{key}"] == (DIR / "health.lua").read_text()
    actions = yaml.safe_load(data[f"resource.customizations.actions.{key}"])
    assert actions["discovery.lua"] == (ACTIONS / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        name: (ACTIONS / name / "action.lua").read_text() for name in ACTION_NAMES
    }
    ignore = yaml.safe_load(data[f"resource.customizations.ignoreDifferences.{key}"])
    assert ignore == {"jsonPointers": ["/spec/replicas"]}


def test_helm_values_and_operator_patch_carry_the_same_settings() -> None:
    data = argocd_cm.data()
    assert yaml.safe_load(argocd_cm.helm_values()) == {"configs": {"cm": data}}
    spec = yaml.safe_load(argocd_cm.argocd_operator())["spec"]
    gk = {"group": "modelship.io", "kind": "ModelDeployment"}
    assert spec["resourceHealthChecks"] == [{**gk, "check": data[argocd_cm.HEALTH_KEY]}]
    assert spec["resourceActions"] == [{**gk, "action": data[argocd_cm.ACTIONS_KEY]}]
    assert spec["resourceIgnoreDifferences"] == {
        "resourceIdentifiers": [{**gk, "customization": {"jsonPointers": ["/spec/replicas"]}}]
    }


def test_a_release_past_its_deadline_is_degraded_before_the_operator_rolls_it_back() -> None:
    obj = _load(DIR / "testdata" / "canary_progressing.yaml")
    obj["status"]["canary"] |= {
        "reason": "ProgressDeadlineExceeded",
        "message": "step 1 took 10m5s > progressDeadline 10m",
    }
    assert run_script(DIR / "health.lua", obj) == {
        "status": "Degraded",
        "message": "step 1 took 10m5s > progressDeadline 10m",
    }


def test_an_abort_without_a_canary_message_reports_the_degraded_condition() -> None:
    obj = _load(DIR / "testdata" / "canary_aborted_analysis.yaml")
    obj["status"]["canary"]["message"] = ""
    assert run_script(DIR / "health.lua", obj) == {
        "status": "Degraded",
        "message": "canary 7c41d9e2b3 was rolled back: analysis failed",
    }
    del obj["status"]["conditions"]
    assert run_script(DIR / "health.lua", obj) == {
        "status": "Degraded",
        "message": "Canary 7c41d9e2b3 aborted (AnalysisFailed)",
    }
