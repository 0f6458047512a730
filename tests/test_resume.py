"""Run policy: the lock around every run, resume that restores finished stages, config changes on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from pipelines.classical.stage import ModelResult
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.ingest.stage import IngestResult
from pipelines.pipeline import run_pipeline
from pipelines.runs import LockBusy, config_diff, pipeline_lock


def _fair(tmp_path, *overrides: str):
    return load_config(ROOT / "conf" / "fair.yaml", [f"runs_dir={tmp_path}", *overrides])


def _stage_entries(run_dir) -> list[tuple[str, str]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return [(s["name"], s["status"]) for s in manifest["stages"]]


def test_config_diff_names_every_changed_key():
    old = {"a": 1, "s": [{"x": 1, "y": [1, 2]}, {"z": 0}], "keep": True}
    new = {"a": 2, "s": [{"x": 1, "y": [1, 3]}, {"z": 0, "w": 5}], "keep": True}
    assert config_diff(old, new) == [("a", 1, 2), ("s[0].y[1]", 2, 3), ("s[1].w", None, 5)]
    assert config_diff(old, old) == []


def test_a_run_waits_for_nobody_and_fails_clearly_when_the_pipeline_is_locked(tmp_path, dask_engine):
    config = _fair(tmp_path)
    with pipeline_lock(tmp_path, "fair"), pytest.raises(LockBusy, match="another run of pipeline 'fair'"):
        run_pipeline(config, engine=dask_engine)
    assert not any(p.is_dir() and p.name != "jobs" for p in (tmp_path / "fair").iterdir())


def test_resume_restores_finished_stages_and_runs_the_rest(tmp_path, dask_engine):
    # a model stage that fails at fit: its columns do not exist after encoding
    broken = _fair(tmp_path, "stages.1.features=[no_such_column]")
    with pytest.raises(ConfigError, match="no_such_column"):
        run_pipeline(broken, engine=dask_engine)
    failed = next(p for p in (tmp_path / "fair").iterdir() if p.is_dir())
    assert _stage_entries(failed) == [("ingest", "succeeded"), ("lm", "failed")]

    # the recorded config differs from the given one: refused, naming the key
    with pytest.raises(ConfigError, match=r"stages\[1\]\.features: \['no_such_column'\] -> None"):
        run_pipeline(_fair(tmp_path), engine=dask_engine, resume=True)

    # --force reruns the changed stage only; ingest is restored from the manifest and written splits
    out = run_pipeline(_fair(tmp_path), engine=dask_engine, resume=True, force=True)
    assert out.run.dir == failed
    assert _stage_entries(failed) == [("ingest", "succeeded"), ("lm", "failed"), ("lm", "succeeded")]
    assert isinstance(out.results["ingest"], IngestResult) and out.results["ingest"].accepted == 6366
    features = out.results["ingest"].inputs.features  # 6 numeric + 5 + 5 dummy-coded occupation levels
    assert isinstance(out.results["lm"], ModelResult) and out.results["lm"].model.n_features_in_ == len(features) == 16
    assert json.loads((failed / "manifest.json").read_text())["status"] == "succeeded"
    assert (tmp_path / "fair" / "latest").resolve() == failed

    # resuming a finished run again runs nothing and restores every result (the model from its files)
    again = run_pipeline(_fair(tmp_path), engine=dask_engine, resume=failed)
    assert _stage_entries(failed) == [("ingest", "succeeded"), ("lm", "failed"), ("lm", "succeeded")]
    np.testing.assert_array_equal(again.results["lm"].model.coef_, out.results["lm"].model.coef_)
    assert str(again.results["lm"].model.summary()) == str(out.results["lm"].model.summary())


def test_placement_changes_are_allowed_on_resume(tmp_path, dask_engine):
    run_pipeline(_fair(tmp_path), engine=dask_engine)
    latest = (tmp_path / "fair" / "latest").resolve()
    out = run_pipeline(_fair(tmp_path, "keep_runs=3", "stages.0.index_block_mb=8"), engine=dask_engine, resume=latest)
    assert out.run.dir == latest and len(_stage_entries(latest)) == 2


def test_an_added_stage_is_the_only_one_rerun_on_a_forced_resume(tmp_path, dask_engine):
    run_pipeline(_fair(tmp_path), engine=dask_engine)
    latest = (tmp_path / "fair" / "latest").resolve()
    longer = _fair(tmp_path)
    data = longer.model_dump(mode="json")
    data["stages"].append({"stage": "model", "name": "km", "model": "kmeans", "params": {"n_clusters": 3}})
    from pipelines.config import parse_config

    longer = parse_config(data)
    with pytest.raises(ConfigError, match=r"stages\[2\]: added"):
        run_pipeline(longer, engine=dask_engine, resume=latest)
    out = run_pipeline(longer, engine=dask_engine, resume=latest, force=True)
    assert _stage_entries(latest) == [("ingest", "succeeded"), ("lm", "succeeded"), ("km", "succeeded")]
    assert out.results["km"].model.cluster_centers_.shape == (3, 16)


def test_a_forced_rerun_supersedes_the_old_entry_and_another_pipelines_run_is_refused(tmp_path, dask_engine):
    run_pipeline(_fair(tmp_path), engine=dask_engine)
    latest = (tmp_path / "fair" / "latest").resolve()
    changed = _fair(tmp_path, "stages.1.params={fit_intercept: false}")
    run_pipeline(changed, engine=dask_engine, resume=latest, force=True)
    assert _stage_entries(latest) == [("ingest", "succeeded"), ("lm", "superseded"), ("lm", "succeeded")]
    assert "fit_intercept: false" in (latest / "config.yaml").read_text()
    before = (latest / "manifest.json").read_text()
    other = load_config(ROOT / "conf" / "randhie.yaml", [f"runs_dir={tmp_path}"])
    with pytest.raises(Exception, match="a run of pipeline 'fair', not 'randhie'"):
        run_pipeline(other, engine=dask_engine, resume=latest)
    assert (latest / "manifest.json").read_text() == before  # refused before the run was touched
