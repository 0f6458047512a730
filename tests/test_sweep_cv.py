"""Cross-validated sweeps: the folds and scores of scikit-learn's cross_val_score, a refit scored once on test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold, cross_val_score
from sklearn.tree import DecisionTreeClassifier

from pipelines.config import parse_config
from pipelines.errors import ConfigError
from pipelines.pipeline import run_pipeline

FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "mean_compactness", "mean_symmetry"]


def cancer_sweep(tmp_path: Path, cv: dict, **target) -> dict:
    return {
        "name": "cancer-cv",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": "dask", "partitions": 2},
        "dataset": {
            "name": "breast-cancer",
            "format": "csv",
            "path": "bundled:breast-cancer",
            "formula": "target ~ " + " + ".join(FEATURES),
            "types": {"target": "int"},
        },
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.25, "seed": 3}},
            {
                "stage": "sweep",
                "name": "cv",
                "target": {"stage": "model", "model": "sklearn.tree:DecisionTreeClassifier", **target},
                "grid": {"params.max_depth": [2, 4]},
                "cv": cv,
                "plots": False,
            },
        ],
    }


def split(run, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_parquet(run.dir / "data" / name).sort_values(["_source", "_row"], kind="stable")
    return frame[FEATURES].astype("float64").reset_index(drop=True), frame["target"].to_numpy()


@pytest.mark.slow
def test_cv_scores_equal_cross_val_score_and_the_best_is_refitted_and_scored_on_test(dask_engine, tmp_path):
    cv = {"folds": 5, "stratified": True, "seed": 7}
    config = parse_config(cancer_sweep(tmp_path, cv, params={"random_state": 0}))
    run = run_pipeline(config, engine=dask_engine).run
    x, y = split(run, "train")
    trials = run.dir / "trials" / "cv"
    splitter = StratifiedKFold(5, shuffle=True, random_state=7)
    means = {}
    for index, depth in enumerate([2, 4]):
        expected = cross_val_score(DecisionTreeClassifier(max_depth=depth, random_state=0), x, y, cv=splitter)
        result = json.loads((trials / f"{index:03d}" / "result.json").read_text())
        np.testing.assert_array_equal(result["metrics"]["cv_scores"], expected)  # the same folds, the same scores
        assert result["metric"] == pytest.approx(expected.mean(), abs=1e-15)
        assert result["metrics"]["cv_std"] == pytest.approx(expected.std(), abs=1e-15)
        means[depth] = expected.mean()
    facts = run.metrics["cv"]
    best = max(means, key=lambda d: (means[d], -d))
    assert facts["best_values"] == {"params.max_depth": best}
    x_test, y_test = split(run, "test")
    refit = DecisionTreeClassifier(max_depth=best, random_state=0).fit(x, y)
    assert facts["best_test_metric"] == pytest.approx(refit.score(x_test, y_test), abs=1e-15)
    table = pd.read_csv(run.dir / "sweeps" / "cv" / "results.csv")
    assert list(table["cv_std"]) == pytest.approx(
        [json.loads((trials / f"{i:03d}" / "result.json").read_text())["metrics"]["cv_std"] for i in range(2)]
    )
    # a kill mid-sweep: trial 001 lost its result and two folds; a resume runs only those two folds again
    folder = trials / "001"
    kept = {f.name: f.stat().st_mtime_ns for f in folder.glob("fold-*.json")}
    for name in ("result.json", "fold-01.json", "fold-03.json"):
        os.remove(folder / name)
    manifest = json.loads((run.dir / "manifest.json").read_text())  # as a killed driver leaves it
    manifest["status"] = "running"
    manifest["stages"] = [s for s in manifest["stages"] if s["name"] != "cv"]
    (run.dir / "manifest.json").write_text(json.dumps(manifest))
    again = run_pipeline(config, engine=dask_engine, resume=run.dir).run
    rerun = {f.name for f in folder.glob("fold-*.json") if kept.get(f.name) != f.stat().st_mtime_ns}
    assert rerun == {"fold-01.json", "fold-03.json"}
    assert again.metrics["cv"]["best_test_metric"] == facts["best_test_metric"]


@pytest.mark.slow
def test_repeated_stratified_folds_match_scikit_learns_splitter(dask_engine, tmp_path):
    cv = {"folds": 3, "stratified": True, "repeats": 2, "seed": 1}
    conf = cancer_sweep(tmp_path, cv, params={"random_state": 0})
    conf["stages"][1]["grid"] = {"params.max_depth": [2]}
    run = run_pipeline(parse_config(conf), engine=dask_engine).run
    x, y = split(run, "train")
    splitter = RepeatedStratifiedKFold(n_splits=3, n_repeats=2, random_state=1)
    expected = cross_val_score(DecisionTreeClassifier(max_depth=2, random_state=0), x, y, cv=splitter)
    result = json.loads((run.dir / "trials" / "cv" / "000" / "result.json").read_text())
    np.testing.assert_array_equal(result["metrics"]["cv_scores"], expected)
    assert result["metrics"]["cv_folds"] == 6


def test_cv_is_for_model_targets_on_the_engine(tmp_path):
    conf = cancer_sweep(tmp_path, {"folds": 5})
    conf["stages"][1]["executor"] = "slurm"
    with pytest.raises(ConfigError, match="cross-validation runs classical"):
        parse_config(conf)
    conf = cancer_sweep(tmp_path, {"folds": 1})
    with pytest.raises(ConfigError, match="cv.folds"):
        parse_config(conf)
