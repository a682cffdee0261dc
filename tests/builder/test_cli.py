"""modelship-build (people) and the python -m modelship_runtime dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelship.api.artifact import BuildPlan
from modelship_runtime.__main__ import main as dispatch
from modelship_runtime.builder.cli import main


def test_modelship_build_prints_summary_and_plan(
    tmp_path: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSHIP_BENCH_SECONDS", "0.05")
    store = tmp_path / "artifacts"
    code = main(
        [str(tiny_model), "--precision", "auto", "--store", str(store),
         "--plan-out", str(tmp_path / "plan.json")]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["uri"].startswith(store.as_uri())
    rows = err[err.index("variant  ") :].splitlines()[1:]
    assert {row.lstrip("* ").split()[0] for row in rows} == {"fp32", "int8-dynamic"}
    chosen = [row for row in rows if row.startswith("* ")]
    assert len(chosen) == 1
    assert chosen[0].split()[1] == result["variant"]
    plan = BuildPlan.model_validate_json((tmp_path / "plan.json").read_text())
    assert plan.source.uri == tiny_model.as_uri()


def test_modelship_build_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model.onnx", "--min-accuracy", "2"]) == 2
    assert "invalid options" in capsys.readouterr().err


def test_dispatcher_knows_build_and_serve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        dispatch(["build", "--help"])
    assert e.value.code == 0
    assert "--plan" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        dispatch(["train"])
    assert "invalid choice" in capsys.readouterr().err
