"""The pipeline plan at validate time: stage order and inputs, parameter values, unique names, all reported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import ROOT

from pipelines.config import load_config, parse_config
from pipelines.errors import ConfigError
from pipelines.plan import check_plan
from pipelines.registry import STAGES

BASE = {
    "name": "t",
    "dataset": {"name": "d", "format": "csv", "path": "d.csv", "features": ["a", "b"], "label": "y"},
    "stages": [{"stage": "ingest"}],
}


def _config(*stages: dict, ingest: dict | None = None) -> dict:
    data = json.loads(json.dumps(BASE))
    data["stages"] = [{"stage": "ingest", **(ingest or {})}, *stages]
    return data


def _problems(data: dict) -> list[str]:
    return [str(p) for p in check_plan(parse_config(data))]


def test_model_after_an_ingest_that_does_not_write_is_refused():
    problems = _problems(_config({"stage": "model", "model": "linear_regression"}, ingest={"write": False}))
    assert problems == ["stages[1].stage: needs an earlier ingest stage with write: true"]


def test_a_stage_before_any_ingest_is_refused():
    data = _config()
    data["stages"] = [{"stage": "model", "model": "kmeans"}, {"stage": "ingest"}]
    assert _problems(data) == ["stages[0].stage: needs an earlier ingest stage with write: true"]


@pytest.mark.parametrize(
    ("model", "params", "key"),
    [
        ("logistic_regression", {"penalty": "l1"}, "params.penalty"),
        ("kmeans", {"n_clusters": 0}, "params.n_clusters"),
        ("random_forest_classifier", {"n_estimators": -1}, "params.n_estimators"),
        ("pca", {"n_components": "many"}, "params.n_components"),
    ],
)
def test_parameter_values_are_checked_as_fit_checks_them(model, params, key):
    with pytest.raises(ConfigError) as err:
        parse_config(_config({"stage": "model", "model": model, "params": params}))
    text = str(err.value)
    assert f"stages[1]: {key}:" in text, text
    assert str(next(iter(params.values()))) in text


def test_unknown_parameter_names_are_refused():
    with pytest.raises(ConfigError, match=r"stages\[1\]: params: .*n_clusterz"):
        parse_config(_config({"stage": "model", "model": "kmeans", "params": {"n_clusterz": 3}}))


def test_every_problem_is_reported_with_its_key_path():
    data = _config(
        {"stage": "model", "model": "kmeans", "name": "m"},
        {"stage": "model", "model": "pca", "name": "m"},
        {"stage": "model", "model": "linear_regression", "features": ["a", "zz"]},
        ingest={"write": False},
    )
    problems = _problems(data)
    assert "stages[1].name: 'm' is used by more than one stage" in problems
    assert "stages[2].name: 'm' is used by more than one stage" in problems
    assert "stages[3].features: unknown column(s) ['zz']; the dataset declares ['a', 'b']" in problems
    assert sum(p.endswith("needs an earlier ingest stage with write: true") for p in problems) == 3
    assert len(problems) == 6


def test_supervised_model_needs_a_label():
    data = _config({"stage": "model", "model": "logistic_regression"})
    del data["dataset"]["label"]
    assert _problems(data) == ["stages[1].model: logistic_regression needs a label, and the dataset declares none"]
    data["stages"][1]["model"] = "kmeans"
    assert _problems(data) == []


def test_transfer_source_must_be_an_earlier_deep_stage():
    data = _config(
        {"stage": "deep", "model": "transfer", "name": "head", "transfer": {"source": "stage:base"}},
        {"stage": "deep", "model": "mlp", "name": "base"},
    )
    data["dataset"] = {"name": "i", "format": "npz", "path": "x.npz", "image": {"shape": [8, 8], "classes": 10}}
    assert _problems(data) == ["stages[1].transfer.source: 'stage:base' is not an earlier deep stage (have [])"]
    data["stages"][1:] = data["stages"][2:0:-1]
    assert _problems(data) == []


def test_registry_is_the_one_list_of_stage_kinds():
    assert set(STAGES) == {"ingest", "model", "deep", "sweep", "pack", "matrix"}
    for kind, cls in STAGES.items():
        assert cls.model_fields["stage"].default == kind
    from pipelines.classical import ESTIMATORS
    from pipelines.classical.stage import ModelStage
    from pipelines.deep.models import NETWORKS
    from pipelines.deep.stage import DeepStage

    families, imported = ModelStage.model_fields["model"].annotation.__args__  # the families | "module:Class"
    assert set(families.__args__) == set(ESTIMATORS)
    zoo, user = DeepStage.model_fields["model"].annotation.__args__  # the zoo's names | "module:function"
    assert set(zoo.__args__) == set(NETWORKS)


def test_shipped_configs_pass_the_plan():
    for path in sorted([*(ROOT / "conf").glob("*.yaml"), *(ROOT / "cluster").glob("*.yaml")]):
        assert check_plan(load_config(path)) == [], path


def test_validate_command_lists_every_plan_problem(tmp_path):
    path = tmp_path / "p.yaml"
    data = _config({"stage": "model", "model": "kmeans"}, {"stage": "model", "model": "kmeans"}, ingest={"write": 0})
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "validate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2
    flat = " ".join(out.stderr.split())
    assert "stages[1].name: 'kmeans' is used by more than one stage" in flat
    assert "stages[2].stage: needs an earlier ingest stage with write: true" in flat


def test_validating_a_deep_config_imports_neither_keras_nor_tensorflow():
    code = textwrap.dedent(
        f"""
        import sys
        from pipelines.config import load_config
        from pipelines.plan import check_plan
        config = load_config({str(ROOT / "conf" / "digits_deep.yaml")!r})
        assert check_plan(config) == []
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "horovod")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
