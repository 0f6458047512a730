"""`pipelines predict`: new data scored with a finished run's saved model on Spark and Dask workers."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import digits_config

from pipelines.classical.persist import load_model
from pipelines.cli import main
from pipelines.config import parse_config
from pipelines.data.bundled import _digits, idx_bytes, resolve_path
from pipelines.deep.augment import EvalViews
from pipelines.errors import ConfigError, DataError, UsageError
from pipelines.ingest.handoff import ImageInputs
from pipelines.pipeline import run_pipeline
from pipelines.predict import predict
from pipelines.predict.saved import ModelRef
from pipelines.predict.score import Scorer, loaded_models

FEATURES = ["mean_radius", "mean_texture", "mean_smoothness", "mean_compactness", "mean_symmetry"]
BAD_LINES = {  # appended after the good rows: the reason each gets in quarantine.csv
    "abc": "not a number: 'abc' in column 'mean_radius'",
    "missing": "missing label",
    "short": "malformed row: 2 fields, expected 31",
}


def digits_cnn_config(tmp_path: Path) -> dict:
    """Digits split 80/20, then a 2-rank mnist_cnn trained for 2 epochs."""
    deep = {"stage": "deep", "model": "mnist_cnn", "epochs": 2, "batch_size": 32, "ranks": 2, "plots": False}
    return digits_config(tmp_path, deep, split={"test_fraction": 0.2, "seed": 42})


def cancer_config(tmp_path: Path) -> dict:
    return {
        "name": "cancer",
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
            {"stage": "model", "name": "glm", "model": "logistic_regression", "plots": False},
            {"stage": "model", "name": "forest", "model": "random_forest_classifier", "params": {"n_estimators": 20}},
        ],
    }


@pytest.fixture(scope="module")
def cancer_run(dask_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cancer")
    run = run_pipeline(parse_config(cancer_config(tmp)), engine=dask_engine).run
    lines = Path(resolve_path("bundled:breast-cancer")).read_text().splitlines()
    good = lines[:201]  # header + the first 200 records, at the line numbers they have in the run's file
    row = lines[1].split(",")
    bad = [
        ",".join(["abc"] + row[1:]),  # mean_radius is not a number
        ",".join(row[:-1] + [""]),  # no target
        "1.0,2.0",  # wrong field count
    ]
    new = tmp / "new" / "cancer.csv"
    new.parent.mkdir()
    new.write_text("\n".join(good + bad) + "\n")
    return run, new


def split_rows(run) -> pd.DataFrame:
    """The rows the run itself transformed (train and test splits), keyed by line number."""
    parts = [pd.read_parquet(run.dir / "data" / split) for split in ("train", "test")]
    return pd.concat(parts).set_index("_row").sort_index()


def read_predictions(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "predictions").sort_values(["source_file", "row"], ignore_index=True)


@pytest.mark.slow
def test_classical_predictions_agree_on_spark_and_dask_and_with_the_saved_model_in_process(
    cancer_run, dask_engine, spark_engine, tmp_path
):
    run, new = cancer_run
    summaries, frames = {}, {}
    for engine in (dask_engine, spark_engine):
        out = tmp_path / engine.kind
        summaries[engine.kind] = predict(run.dir, "glm", str(new), out, engine=engine)
        frames[engine.kind] = read_predictions(out)
        assert json.loads((out / "summary.json").read_text())["scored"] == summaries[engine.kind]["scored"]
    dask, spark = frames["dask"], frames["spark"]
    assert list(dask.columns) == ["source_file", "row", "prediction", "probability_0", "probability_1", "label"]
    exact = ["source_file", "row", "prediction", "label"]
    pd.testing.assert_frame_equal(dask[exact], spark[exact])
    np.testing.assert_allclose(dask["probability_1"], spark["probability_1"], rtol=0, atol=1e-6)
    # the recorded fit, never refitted: the run's own transformed rows give the same answers in-process
    model = load_model(run.dir / "models" / "glm")
    rows = split_rows(run).loc[dask["row"]]
    np.testing.assert_array_equal(dask["prediction"], model.predict(rows[FEATURES]))
    np.testing.assert_allclose(dask[["probability_0", "probability_1"]], model.predict_proba(rows[FEATURES]), atol=1e-9)
    np.testing.assert_array_equal(dask["label"], rows["target"])
    summary = summaries["dask"]
    assert (summary["read"], summary["scored"], summary["rejected"]) == (203, 200, 3)
    assert summary["metrics"]["accuracy"] == pytest.approx((dask["prediction"] == dask["label"]).mean())
    assert summary["metrics"] == pytest.approx(summaries["spark"]["metrics"])
    quarantine = pd.read_csv(tmp_path / "spark" / "quarantine.csv")
    assert list(quarantine["row"]) == [202, 203, 204] and all(
        reason.startswith(expected) for reason, expected in zip(quarantine["reason"], BAD_LINES.values(), strict=True)
    )
    assert quarantine["raw"][2] == "1.0,2.0"


def test_model_loads_once_per_worker_and_unlabelled_parquet_from_a_yaml_scores_alike(cancer_run, dask_engine, tmp_path):
    run, new = cancer_run
    labelled = predict(run.dir, "forest", str(new), tmp_path / "csv", engine=dask_engine, partitions=6)
    table = pd.read_csv(new, nrows=200).drop(columns=["target"])
    table.to_parquet(tmp_path / "new.parquet", row_group_size=64)
    conf = tmp_path / "new.yaml"
    conf.write_text(f"dataset:\n  format: parquet\n  path: {tmp_path / 'new.parquet'}\n")
    summary = predict(run.dir, "forest", str(conf), tmp_path / "pq", engine=dask_engine, partitions=6)
    assert (summary["read"], summary["scored"], summary["rejected"], summary["labelled"]) == (200, 200, 0, False)
    assert summary["metrics"] == {} and "accuracy" in labelled["metrics"]
    a, b = read_predictions(tmp_path / "csv"), read_predictions(tmp_path / "pq")
    assert "label" not in b and list(b["row"]) == list(range(200)) and list(a["row"]) == list(range(2, 202))
    np.testing.assert_array_equal(a["prediction"], b["prediction"])
    np.testing.assert_array_equal(a["probability_1"], b["probability_1"])
    # 12 partitions scored on 2 workers: each worker process loaded the forest once and kept it
    path = str(run.dir / "models" / "forest")
    counts = dask_engine.client.run(lambda: loaded_models().count(path))
    assert sorted(counts.values()) == [1, 1]


def test_user_errors_are_one_line_pipeline_errors(cancer_run, dask_engine, tmp_path):
    run, new = cancer_run
    with pytest.raises(UsageError, match="not a run directory"):
        predict(tmp_path / "nowhere", "glm", str(new), tmp_path / "o1", engine=dask_engine)
    with pytest.raises(UsageError, match=r"no stage 'lasso'; the run has \['ingest', 'glm', 'forest'\]"):
        predict(run.dir, "lasso", str(new), tmp_path / "o2", engine=dask_engine)
    with pytest.raises(UsageError, match="'ingest' is a ingest stage, not a model"):
        predict(run.dir, "ingest", str(new), tmp_path / "o3", engine=dask_engine)
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("mean_radius,target\n1.0,0\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['mean_texture'"):
        predict(run.dir, "glm", str(narrow), tmp_path / "o4", engine=dask_engine)
    conf = tmp_path / "bad.yaml"
    conf.write_text(f"dataset:\n  path: {new}\n  features: [mean_radius]\n")
    with pytest.raises(ConfigError, match="dataset.features differs from the run's"):
        predict(run.dir, "glm", str(conf), tmp_path / "o5", engine=dask_engine)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an earlier predict output"):
        predict(run.dir, "glm", str(new), busy, engine=dask_engine)
    assert not (tmp_path / "o4").exists() and (busy / "keep.txt").read_text() == "mine"


def test_the_command_reports_a_user_error_in_one_line(cancer_run, tmp_path, capsys):
    run, new = cancer_run
    argv = ["predict", str(run.dir), "--stage", "ingest", "--data", str(new), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("usage error: stage 'ingest' is a ingest stage, not a model")


@pytest.mark.slow
def test_keras_network_predictions_agree_on_spark_and_dask_and_with_keras_in_process(
    dask_engine, spark_engine, tmp_path
):
    import keras

    run = run_pipeline(parse_config(digits_cnn_config(tmp_path)), engine=dask_engine).run
    images, labels = _digits()
    labels = labels[:300].copy()
    labels[[5, 77]] = 12  # outside 0..9: quarantined, as ingest would
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(images[:300])))
    (tmp_path / "labels.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    frames = {}
    for engine in (dask_engine, spark_engine):
        out = tmp_path / f"out-{engine.kind}"
        summary = predict(
            run.dir, "mnist_cnn", str(tmp_path / "images.gz"), out, engine=engine, labels=str(tmp_path / "labels.gz")
        )
        assert (summary["read"], summary["scored"], summary["rejected"]) == (300, 298, 2)
        frames[engine.kind] = read_predictions(out)
        quarantine = pd.read_csv(out / "quarantine.csv")
        assert list(quarantine["row"]) == [5, 77] and set(quarantine["reason"]) == {"label 12.0 outside 0..9"}
    dask, spark = frames["dask"], frames["spark"]
    probs = [f"probability_{c}" for c in range(10)]
    assert list(dask.columns) == ["source_file", "row", "prediction", *probs, "label"]
    np.testing.assert_array_equal(dask["prediction"], spark["prediction"])
    np.testing.assert_allclose(dask[probs], spark[probs], rtol=0, atol=1e-6)
    # in-process: the saved network on the run's own unit-scaled pixels of the same records
    model = keras.saving.load_model(run.dir / "deep" / "mnist_cnn" / "model.keras", compile=False)
    written = pd.concat(pd.read_parquet(run.dir / "data" / s) for s in ("train", "test")).set_index("_row")
    rows = written.loc[dask["row"]]
    x = np.frombuffer(b"".join(rows["image"]), dtype="float32").reshape(-1, 8, 8, 1)
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(dask[probs], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dask["prediction"], expected.argmax(axis=1))
    np.testing.assert_array_equal(dask["label"], labels[dask["row"]])
    # without labels every record is scored, with the same answers
    bare = predict(run.dir, "mnist_cnn", str(tmp_path / "images.gz"), tmp_path / "bare", engine=dask_engine)
    assert (bare["scored"], bare["rejected"], bare["labelled"], bare["metrics"]) == (300, 0, False, {})
    unlabelled = read_predictions(tmp_path / "bare").set_index("row").loc[dask["row"]]
    np.testing.assert_array_equal(unlabelled["prediction"], dask["prediction"])


def test_a_network_with_test_time_views_scores_the_mean_of_its_views(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    model.save(tmp_path / "model.keras")
    views = EvalViews(flip=True, shift=1)
    scorer = Scorer(
        model=ModelRef("keras", str(tmp_path / "model.keras"), "d"),
        task="classify",
        schema=None,
        transform=None,
        inputs=ImageInputs(dtype="float32", shape=(8, 8, 1), classes=3),
        features=(),
        label=None,
        classes=(0, 1, 2),
        names=(0, 1, 2),
        views=views,
    )
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    padded = {m: np.pad(x[:, :, ::-1] if m else x, ((0, 0), (1, 1), (1, 1), (0, 0))) for m in (False, True)}
    seen = [padded[m][:, 1 - dy : 9 - dy, 1 - dx : 9 - dx] for m, dy, dx in views.views()]
    expected = np.mean([np.asarray(model(v)) for v in seen], axis=0)
    out = scorer._keras(x[..., 0])
    np.testing.assert_allclose(np.column_stack([out[f"probability_{c}"] for c in range(3)]), expected, atol=1e-6)
    single = dataclasses.replace(scorer, views=None)._keras(x[..., 0])["probability_0"]
    np.testing.assert_allclose(single, np.asarray(model(x))[:, 0], atol=1e-6)
    assert not np.allclose(single, expected[:, 0], atol=1e-3)  # the views do change the scores
