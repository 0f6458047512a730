"""Config loading: safe YAML, strict keys, readable errors naming file and key path, dotted overrides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.config import apply_override, load_config
from pipelines.errors import ConfigError

GOOD = """
name: t
engine: {kind: dask, partitions: 3}
dataset:
  name: d
  format: csv
  path: data.csv
  features: [a, b]
  label: y
stages:
  - stage: ingest
    split: {test_fraction: 0.25, seed: 1}
"""


def _conf(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_good_config_loads_with_defaults(tmp_path):
    cfg = load_config(_conf(tmp_path, GOOD))
    assert cfg.engine.partitions == 3
    assert cfg.stages[0].split.test_fraction == 0.25
    assert cfg.stages[0].max_rejected_fraction == 0.05


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("engine: {kind: dask, partitions: 3}", "engine: {kind: dask, partitions: 3, colour: red}"),
            "engine.colour: unknown key",
        ),
        (("partitions: 3", "partitions: lots"), "engine.partitions: Input should be a valid integer"),
        (("  name: d\n", ""), "dataset.name: required field is missing"),
        (("test_fraction: 0.25", "test_fraction: 1.5"), "stages[0].split.test_fraction"),
        (("kind: dask", "kind: flink"), "engine.kind: Input should be 'spark' or 'dask'"),
        (("format: csv", "format: xlsx"), "dataset.format"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, edit, expected):
    path = _conf(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_yaml_python_tags_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_conf(tmp_path, GOOD + "x: !!python/object/apply:os.system ['echo hi']\n"))


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_config(_conf(tmp_path, GOOD + "name: again\n"))


def test_overrides_parse_yaml_values_and_reach_lists(tmp_path):
    cfg = load_config(_conf(tmp_path, GOOD), ["engine.partitions=8", "stages.0.split.seed=9", "engine.kind=spark"])
    assert (cfg.engine.partitions, cfg.stages[0].split.seed, cfg.engine.kind) == (8, 9, "spark")


def test_override_errors(tmp_path):
    data = {"stages": [{}]}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override(data, "nokey")
    with pytest.raises(ConfigError, match="has no item 3"):
        apply_override(data, "stages.3.x=1")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(_conf(tmp_path, GOOD), ["engine.partitons=8"])


def test_formula_and_features_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="either 'formula' or 'features'"):
        load_config(_conf(tmp_path, GOOD.replace("label: y", "label: y\n  formula: y ~ a")))


def test_validate_command_exit_codes(tmp_path):
    good = _conf(tmp_path, GOOD)
    ok = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "validate", str(good), "-s", "engine.kind=x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "engine.kind" in bad.stderr


def test_shipped_configs_validate():
    from conftest import ROOT

    for path in sorted((ROOT / "conf").glob("*.yaml")):
        load_config(path)


def test_model_stage_params_are_checked_against_the_estimator(tmp_path):
    good = GOOD + "  - stage: model\n    model: kmeans\n    params: {n_clusters: 3}\n    elbow: [2, 3]\n"
    cfg = load_config(_conf(tmp_path, good))
    assert cfg.stages[1].model == "kmeans" and cfg.stages[1].output_name == "kmeans"
    bad = GOOD + "  - stage: model\n    model: kmeans\n    params: {n_clusterz: 3}\n  - stage: modle\n"
    with pytest.raises(ConfigError) as err:
        load_config(_conf(tmp_path, bad))
    assert "stages[1]" in str(err.value) and "n_clusterz" in str(err.value)
    assert "stages[2]" in str(err.value) and "'modle'" in str(err.value)
    with pytest.raises(ConfigError, match="stages\\[1\\].model"):
        load_config(_conf(tmp_path, GOOD + "  - stage: model\n    model: svm\n"))
