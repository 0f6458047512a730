"""Estimators by import path: equal to fitting them directly on the same rows, saved with skops, predicted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.mixture import GaussianMixture
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from pipelines.classical.persist import load_model
from pipelines.config import load_config, parse_config
from pipelines.data.bundled import resolve_path
from pipelines.errors import ConfigError, DataError
from pipelines.ingest.split import uniform_keys
from pipelines.pipeline import run_pipeline
from pipelines.predict import predict

DIRECT = {  # stage name -> (import path, params, the estimator scikit-learn fits directly)
    "svm": ("sklearn.svm:LinearSVC", {"C": 0.1, "random_state": 0}, LinearSVC(C=0.1, random_state=0)),
    "bayes": ("sklearn.naive_bayes:GaussianNB", {}, GaussianNB()),
    "tree": ("sklearn.tree:DecisionTreeClassifier", {"random_state": 0}, DecisionTreeClassifier(random_state=0)),
    "knn": ("sklearn.neighbors:KNeighborsClassifier", {"n_neighbors": 3}, KNeighborsClassifier(n_neighbors=3)),
    "mixture": (
        "sklearn.mixture:GaussianMixture",
        {"n_components": 10, "covariance_type": "diag", "random_state": 0},
        GaussianMixture(n_components=10, covariance_type="diag", random_state=0),
    ),
}

USER_CODE = '''
"""A user's own estimator: nearest class mean, shrunk towards the overall mean."""
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class ShrunkCentroids(ClassifierMixin, BaseEstimator):
    def __init__(self, shrink=0.0):
        self.shrink = shrink

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        self.classes_ = np.unique(y)
        overall = X.mean(axis=0)
        means = np.array([X[y == c].mean(axis=0) for c in self.classes_])
        self.centroids_ = (1 - self.shrink) * means + self.shrink * overall
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        d = ((np.asarray(X, dtype=float)[:, None, :] - self.centroids_[None]) ** 2).sum(axis=2)
        return self.classes_[np.argmin(d, axis=1)]
'''


def digits(tmp_path: Path, *stages: dict, engine: str = "dask") -> dict:
    return {
        "name": "digits-estimators",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": engine, "partitions": 3},
        "dataset": {
            "name": "digits",
            "format": "idx",
            "path": "bundled:digits/images",
            "labels_path": "bundled:digits/labels",
            "image": {"shape": [8, 8], "classes": 10},
        },
        "stages": [{"stage": "ingest", "split": {"test_fraction": 0.25, "seed": 42}}, *stages],
    }


def split_arrays(run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A written image split's pixels and labels in the recorded order (source, row)."""
    frame = pd.read_parquet(run.dir / "data" / split).sort_values(["_source", "_row"], kind="stable")
    x = np.frombuffer(b"".join(frame["image"]), dtype="float32").reshape(len(frame), -1).astype("float64")
    return x, frame["label"].to_numpy()


@pytest.fixture(scope="module")
def digits_run(dask_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    stages = [
        {"stage": "model", "name": n, "model": m, "params": p, "plots": n == "svm"} for n, (m, p, _) in DIRECT.items()
    ]
    return run_pipeline(parse_config(digits(tmp, *stages)), engine=dask_engine).run


@pytest.mark.slow
def test_imported_estimators_equal_scikit_learn_fitted_directly_on_the_same_rows(digits_run):
    run = digits_run
    x_train, y_train = split_arrays(run, "train")
    x_test, y_test = split_arrays(run, "test")
    names = [f"px{i}" for i in range(64)]
    for name, (_, _, direct) in DIRECT.items():
        reference = clone(direct).fit(pd.DataFrame(x_train, columns=names), y_train)
        model = load_model(run.dir / "models" / name)  # the skops file, loaded back
        frame = pd.DataFrame(x_test, columns=names)
        np.testing.assert_array_equal(model.predict(frame), reference.predict(frame), err_msg=name)
        metrics = run.metrics[name]
        assert metrics["train_rows"] == len(y_train) == model.train_rows_
        if name == "mixture":
            sizes = np.unique(reference.predict(pd.DataFrame(x_train, columns=names)), return_counts=True)[1]
            assert sorted(metrics["cluster_sizes"].values()) == sorted(sizes.tolist())
            continue
        accuracy = float(np.mean(reference.predict(frame) == y_test))
        assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-12), name
        assert metrics["test_accuracy"] > 0.8
    assert "test_log_loss" not in run.metrics["svm"] and run.metrics["svm"]["test_roc_auc_ovr"] > 0.98
    assert (run.dir / "plots" / "svm" / "confusion.png").is_file() and (run.dir / "plots" / "svm" / "roc.png").is_file()
    meta = json.loads((run.dir / "models" / "tree" / "model.json").read_text())
    assert meta["format"] == "pipelines-skops/1" and meta["class"] == "sklearn.tree:DecisionTreeClassifier"
    assert run.metrics["tree"]["feature_importances"]["px0"] == 0.0


@pytest.mark.slow
def test_predict_loads_the_skops_model_and_scores_like_the_fitted_estimator(digits_run, spark_engine, tmp_path):
    run = digits_run
    images, labels = resolve_path("bundled:digits/images"), resolve_path("bundled:digits/labels")
    summary = predict(run.dir, "knn", str(images), tmp_path / "out", engine=spark_engine, labels=str(labels))
    assert summary["scored"] == 1797
    out = pd.read_parquet(tmp_path / "out" / "predictions").sort_values("row", ignore_index=True)
    x = np.concatenate([split_arrays(run, s)[0] for s in ("train", "test")])
    rows = pd.concat(pd.read_parquet(run.dir / "data" / s) for s in ("train", "test"))["_row"].to_numpy()
    order = np.argsort(rows)
    model = load_model(run.dir / "models" / "knn")
    expected = model.predict(pd.DataFrame(x[order], columns=[f"px{i}" for i in range(64)]))
    np.testing.assert_array_equal(out["prediction"].to_numpy().astype(int), expected)
    assert [c for c in out.columns if c.startswith("probability_")] == [f"probability_{i}" for i in range(10)]


def test_a_users_own_class_beside_the_config_runs_on_both_engines_and_predicts(dask_engine, spark_engine, tmp_path):
    (tmp_path / "shrunk_centroids.py").write_text(USER_CODE)
    stage = {
        "stage": "model",
        "name": "mine",
        "model": "shrunk_centroids:ShrunkCentroids",
        "code": "shrunk_centroids.py",
    }
    stage["params"] = {"shrink": 0.2}
    stage["plots"] = False
    predictions = {}
    for engine in (dask_engine, spark_engine):
        conf = tmp_path / f"{engine.kind}.yaml"
        conf.write_text(json.dumps(digits(tmp_path / engine.kind, stage, engine=engine.kind)))
        config = load_config(conf)
        assert config.stages[1].code == str(tmp_path / "shrunk_centroids.py")  # resolved beside the config
        run = run_pipeline(config, engine=engine).run
        x_train, y_train = split_arrays(run, "train")
        x_test, y_test = split_arrays(run, "test")
        centroids = np.array([x_train[y_train == c].mean(axis=0) for c in range(10)])
        centroids = 0.8 * centroids + 0.2 * x_train.mean(axis=0)
        expected = np.argmin(((x_test[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
        assert run.metrics["mine"]["test_accuracy"] == pytest.approx(np.mean(expected == y_test), abs=1e-12)
        images = resolve_path("bundled:digits/images")
        predict(run.dir, "mine", str(images), tmp_path / f"out-{engine.kind}", engine=engine)
        out = pd.read_parquet(tmp_path / f"out-{engine.kind}" / "predictions").sort_values("row", ignore_index=True)
        predictions[engine.kind] = out["prediction"].to_numpy()
    np.testing.assert_array_equal(predictions["dask"], predictions["spark"])


def test_import_paths_are_checked_at_config_load(tmp_path):
    def problem(stage: dict) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config(digits(tmp_path, {"stage": "model", **stage}))
        return str(info.value)

    assert "has no class 'Nope'" in problem({"model": "sklearn.svm:Nope"})
    assert "cannot import 'not_a_module'" in problem({"model": "not_a_module:Thing"})
    assert "needs `code:`" in problem({"model": "not_a_module:Thing"})
    assert "params.C" in problem({"model": "sklearn.svm:LinearSVC", "params": {"C": -1}})
    assert "unexpected keyword argument 'gamma'" in problem({"model": "sklearn.svm:LinearSVC", "params": {"gamma": 1}})
    assert "not a scikit-learn estimator" in problem({"model": "collections:OrderedDict"})
    assert "only a model given by import path" in problem({"model": "pca", "code": "x.py"})


def test_the_gather_cap_refuses_a_large_fit_and_a_seeded_sample_fits_the_same_rows_on_each_run(dask_engine, tmp_path):
    capped = {"stage": "model", "name": "nb", "model": "sklearn.naive_bayes:GaussianNB", "max_gather_mb": 0.1}
    with pytest.raises(DataError, match=r"exceed max_gather_mb=0.1; raise max_gather_mb or fit on a seeded sample"):
        run_pipeline(parse_config(digits(tmp_path / "a", capped)), engine=dask_engine)
    sampled = {**capped, "fit_sample": 150, "plots": False}
    runs = [run_pipeline(parse_config(digits(tmp_path / k, sampled)), engine=dask_engine).run for k in "bc"]
    models = [load_model(r.dir / "models" / "nb") for r in runs]
    assert models[0].train_rows_ == models[1].train_rows_ == 150
    np.testing.assert_array_equal(models[0].estimator_.theta_, models[1].estimator_.theta_)
    assert models[0].estimator_.class_count_.sum() == 150
    # the sample is the 150 train rows with the smallest seeded keys of (source, row): the same on any engine
    frame = pd.read_parquet(runs[0].dir / "data" / "train").sort_values(["_source", "_row"], kind="stable")
    keys = np.concatenate([uniform_keys(s, g["_row"].to_numpy(), 0) for s, g in frame.groupby("_source", sort=True)])
    chosen = frame.iloc[np.sort(np.argsort(keys, kind="stable")[:150])]
    x = np.frombuffer(b"".join(chosen["image"]), dtype="float32").reshape(150, -1).astype("float64")
    np.testing.assert_array_equal(GaussianNB().fit(x, chosen["label"].to_numpy()).theta_, models[0].estimator_.theta_)


def test_a_pack_of_configs_fits_an_imported_estimator_as_scikit_learn_does(dask_engine, tmp_path):
    features = ["mean_radius", "mean_texture", "mean_smoothness"]
    conf = {
        "name": "cancer-pack",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": "dask", "partitions": 2},
        "dataset": {
            "name": "breast-cancer",
            "format": "csv",
            "path": "bundled:breast-cancer",
            "formula": "target ~ " + " + ".join(features),
            "types": {"target": "int"},
        },
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.25, "seed": 3}},
            {
                "stage": "pack",
                "name": "trees",
                "model": "sklearn.tree:DecisionTreeClassifier",
                "params": {"random_state": 0},
                "configs": [{"max_depth": 2}, {"max_depth": 5}],
                "plots": False,
            },
        ],
    }
    run = run_pipeline(parse_config(conf), engine=dask_engine).run
    frames = {
        s: pd.read_parquet(run.dir / "data" / s).sort_values(["_source", "_row"], kind="stable")
        for s in ("train", "test")
    }
    table = pd.read_csv(run.dir / "packs" / "trees" / "results.csv")
    for depth, accuracy in zip([2, 5], table["test_accuracy"], strict=True):
        direct = DecisionTreeClassifier(max_depth=depth, random_state=0)
        direct.fit(frames["train"][features], frames["train"]["target"])
        assert accuracy == pytest.approx(direct.score(frames["test"][features], frames["test"]["target"]), abs=1e-15)
