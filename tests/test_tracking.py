"""Opt-in MLflow tracking: real runs logged to a real sqlite store, read back with MlflowClient."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from helpers import digits_config

from pipelines.config import parse_config
from pipelines.errors import ConfigError
from pipelines.pipeline import run_pipeline
from pipelines.tracking import flat_metrics, flat_params


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp is not None else []


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, by its path."""
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_tracking_section_is_checked_when_the_config_loads(tmp_path, monkeypatch):
    base = digits_config(tmp_path)
    with pytest.raises(ConfigError, match="MLflow 3 refuses its file store"):
        parse_config({**base, "tracking": {"uri": "file:./mlruns"}})
    with pytest.raises(ConfigError, match="tracking.uri"):
        parse_config({**base, "tracking": {"uri": str(tmp_path / "mlruns")}})
    config = parse_config({**base, "tracking": {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "x"}})
    assert config.tracking.default_artifact_location() == str(tmp_path / "mlartifacts")
    assert parse_config(base).tracking is None  # absent: off
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "tracking": {"uri": "sqlite:///m.db"}})
    [line] = [x for x in str(info.value).splitlines() if "tracking" in x]
    assert "mlflow not installed: pip install 'pipelines[tracking]'" in line


@pytest.mark.slow
def test_a_tracking_failure_is_a_warning_and_the_run_succeeds(dask_engine, tmp_path, caplog):
    data = digits_config(tmp_path)  # ingest only
    (tmp_path / "a-file").write_text("")
    data["tracking"] = {"uri": f"sqlite:///{tmp_path}/a-file/m.db"}  # no database can be made under a file
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        run, _ = run_pipeline(parse_config(data), engine=dask_engine)
    assert run.manifest["status"] == "succeeded"
    [warning] = [r for r in caplog.records if r.name == "pipelines.tracking"]
    assert warning.levelno == logging.WARNING and "could not log" in warning.getMessage()


@pytest.mark.slow
def test_a_run_is_one_mlflow_run_with_a_nested_run_per_stage_equal_to_metrics_json(dask_engine, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    model = {"stage": "model", "name": "logreg", "model": "logistic_regression", "params": {"C": 0.5}}
    deep = {"stage": "deep", "model": "softmax", "epochs": 2, "batch_size": 32, "ranks": 2}
    data = digits_config(tmp_path, model, deep)
    data["tracking"] = {"uri": uri, "experiment": "digits-tracked"}
    run, _ = run_pipeline(parse_config(data), engine=dask_engine)
    assert run.manifest["status"] == "succeeded"
    metrics = json.loads((run.dir / "metrics.json").read_text())
    client = _client(uri)
    runs = _runs(client, "digits-tracked")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == run.id and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["pipeline"], tags["run_id"], tags["engine"], tags["status"]) == (
        "digits-deep",
        run.id,
        "dask",
        "succeeded",
    )
    assert parent.data.params["dataset.name"] == "digits" and parent.data.params["stages.1.params.C"] == "0.5"
    assert {"config.yaml", "manifest.json", "metrics.json"} <= _artifacts(client, parent.info.run_id)
    if (run.dir / "report.html").exists():
        assert "report.html" in _artifacts(client, parent.info.run_id)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["ingest", "logreg", "softmax"] and len(runs) == 4
    for name, child in children.items():
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "succeeded"
        want = flat_metrics(metrics[name])
        assert want and {k: child.data.metrics[k] for k in want} == want  # final values: metrics.json's
    ingest = children["ingest"].data
    assert ingest.metrics["splits.train"] == metrics["ingest"]["splits"]["train"]
    assert ingest.params["split.seed"] == "42"
    logreg = children["logreg"].data
    given = flat_params(model)
    assert {k: logreg.params[k] for k in given} == given  # every given key as given (the config adds defaults)
    assert logreg.params["model"] == "logistic_regression" and logreg.metrics["test_accuracy"] > 0.9
    assert any(p.startswith("models/logreg/") for p in _artifacts(client, children["logreg"].info.run_id))
    softmax = children["softmax"]
    history = metrics["softmax"]["history"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):  # per epoch, step = epoch
        got = [(m.step, m.value) for m in client.get_metric_history(softmax.info.run_id, key)]
        assert sorted(got) == [(h["epoch"], h[key]) for h in history], key
    files = _artifacts(client, softmax.info.run_id)
    assert {"deep/softmax/model.keras", "deep/softmax/results.json"} <= files
    assert any(p.startswith("tensorboard/softmax/train/events.out.tfevents") for p in files)
    assert softmax.data.params["epochs"] == "2" and softmax.data.params["ranks"] == "2"

    again, _ = run_pipeline(parse_config(data), resume=run.dir, engine=dask_engine)  # a rerun logs it again, once
    assert again.id == run.id
    assert len(_runs(client, "digits-tracked")) == 4


def test_sweep_pack_and_matrix_folders_reach_mlflow_as_their_stages_artifacts(dask_engine, tmp_path):
    from pipelines.runs.layout import STAGE_ARTIFACTS, Folder

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    fair = {"name": "fair", "format": "csv", "path": "bundled:fair", "label": "affairs"}
    fair["features"] = ["rate_marriage", "age", "yrs_married", "children", "religious", "educ"]
    sweep = {"stage": "sweep", "name": "grid", "target": {"stage": "model", "model": "lasso"}}
    sweep.update(grid={"params.alpha": [0.1, 10.0]}, metric="test_r2", mode="max")
    data = {
        "name": "tracked-kinds",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": "dask", "partitions": 2},
        "dataset": fair,
        "tracking": {"uri": uri, "experiment": "kinds"},
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.2, "seed": 7}, "max_rejected_fraction": 0.0},
            {"stage": "matrix", "name": "gram", "op": "gram", "x": {"from": "ingest"}},
            {"stage": "pack", "name": "boot", "model": "linear_regression", "bootstrap": {"replicates": 4, "seed": 0}},
            sweep,
        ],
    }
    run, _ = run_pipeline(parse_config(data), engine=dask_engine)
    assert run.manifest["status"] == "succeeded"
    assert {Folder.SWEEPS, Folder.PACKS, Folder.MATRIX} <= set(STAGE_ARTIFACTS)
    client = _client(uri)
    children = {r.info.run_name: r for r in _runs(client, "kinds") if "mlflow.parentRunId" in r.data.tags}
    for name, folder in [("gram", Folder.MATRIX), ("boot", Folder.PACKS), ("grid", Folder.SWEEPS)]:
        on_disk = {str(p.relative_to(run.dir)) for p in folder.under(run.dir, name).rglob("*") if p.is_file()}
        assert on_disk and _artifacts(client, children[name].info.run_id) >= on_disk, name
