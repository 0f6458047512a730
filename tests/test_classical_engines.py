"""Model stages run from configs on a real Dask LocalCluster and a real local[2] SparkSession, each checked
against scikit-learn / statsmodels fitted on the very rows the stage trained on (read back from the run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from conftest import ROOT
from sklearn import ensemble as skens
from sklearn import linear_model as sklin
from sklearn.cluster import KMeans as SkKMeans
from sklearn.decomposition import PCA as SkPCA

from pipelines.classical import load_model
from pipelines.config import load_config
from pipelines.pipeline import run_pipeline


def _run(engine, tmp_path, conf, *overrides):
    cfg = load_config(ROOT / "conf" / conf, [f"runs_dir={tmp_path / engine.kind}", *overrides])
    run, state = run_pipeline(cfg, engine=engine)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    return run, state, metrics


def _split(run, split, features, label):
    frame = pq.read_table(run.dir / "data" / split).to_pandas().sort_values(["_source", "_row"])
    return frame[features].to_numpy(dtype=float), frame[label].to_numpy(dtype=float)


def _images(run, split):
    frame = pq.read_table(run.dir / "data" / split).to_pandas().sort_values(["_source", "_row"])
    x = np.vstack([np.frombuffer(b, np.float32) for b in frame["image"]]).astype(float)
    return x, frame["label"].to_numpy(dtype=float)


def _coefficients(metrics_section):
    table = metrics_section["summary"]["coefficients"]
    return np.array(table["estimate"]), np.array(table["std_error"]), table["term"]


@pytest.mark.slow
def test_linear_regression_stage_matches_statsmodels(engine, tmp_path):
    run, state, metrics = _run(engine, tmp_path, "randhie.yaml", "stages.2.params.n_estimators=60")
    model = state["lm"].model
    features = list(model.feature_names_in_)
    x, y = _split(run, "train", features, "mdvis")
    ref = sm.OLS(y, sm.add_constant(x)).fit()
    est, se, names = _coefficients(metrics["lm"])
    assert names[0] == "(Intercept)" and names[1:] == features
    np.testing.assert_allclose(est, ref.params, rtol=1e-6)
    np.testing.assert_allclose(se, ref.bse, rtol=1e-6)
    hc1 = metrics["lm"]["summary"]["coefficients_hc1"]["std_error"]
    np.testing.assert_allclose(hc1, ref.get_robustcov_results("HC1").bse, rtol=1e-6)
    assert metrics["lm"]["summary"]["r_squared"] == pytest.approx(ref.rsquared, rel=1e-6)
    assert (run.dir / "models" / "lm" / "summary.txt").read_text().count("***") >= 3
    # the regression forest, same size and split, within 1 point of R² (mean of 3 scikit-learn seeds)
    xt, yt = _split(run, "test", features, "mdvis")
    ref_r2 = np.mean(
        [
            skens.RandomForestRegressor(60, min_samples_leaf=5, max_features=0.5, random_state=s)
            .fit(x, y)
            .score(xt, yt)
            for s in range(3)
        ]
    )
    assert abs(metrics["forest"]["test_r2"] - ref_r2) <= 0.01
    assert (run.dir / "plots" / "forest" / "importances.png").stat().st_size > 1000
    # a saved model reloads and predicts the same, and keeps its summary
    again = load_model(run.dir / "models" / "lm")
    named = pd.DataFrame(xt, columns=features)
    np.testing.assert_allclose(again.predict(named), model.predict(named), rtol=1e-12)
    assert str(again.summary()) == str(model.summary())


@pytest.mark.slow
def test_binomial_glm_stage_matches_statsmodels(engine, tmp_path):
    run, state, metrics = _run(engine, tmp_path, "breast_cancer.yaml", "stages.2.params.n_estimators=50")
    features = list(state["glm"].model.feature_names_in_)
    x, y = _split(run, "train", features, "target")
    ref = sm.Logit(y, sm.add_constant(x)).fit(disp=0, method="newton", tol=1e-12, maxiter=100)
    est, se, _ = _coefficients(metrics["glm"])
    np.testing.assert_allclose(est, ref.params, rtol=1e-3)
    np.testing.assert_allclose(se, ref.bse, rtol=1e-3)
    xt, yt = _split(run, "test", features, "target")
    assert metrics["glm"]["test_accuracy"] == pytest.approx(np.mean((ref.predict(sm.add_constant(xt)) > 0.5) == yt))
    assert 0.9 < metrics["glm"]["test_roc_auc"] <= 1.0
    assert {"confusion.png", "roc.png"} <= set(metrics["glm"]["plots"])


@pytest.mark.slow
def test_digits_softmax_pca_kmeans_forest_stages(engine, tmp_path):
    run, state, metrics = _run(engine, tmp_path, "digits_classical.yaml", "stages.3.elbow=[4,8]")
    x, y = _images(run, "train")
    xt, yt = _images(run, "test")
    # softmax regression: coefficients within 1e-3 of scikit-learn with the same penalty
    ours = state["softmax"].model
    ref = sklin.LogisticRegression(C=1.0, tol=1e-12, max_iter=20000).fit(x, y)
    assert np.max(np.abs(ours.coef_ - ref.coef_)) / np.max(np.abs(ref.coef_)) < 1e-3
    assert metrics["softmax"]["test_accuracy"] == pytest.approx(ref.score(xt, yt), abs=1 / len(yt) + 1e-12)
    # PCA: explained variance ratio to 1e-6; k for 80/90/95 % as scikit-learn picks it
    pca = SkPCA().fit(x)
    np.testing.assert_allclose(
        state["pca"].model.explained_variance_ratio_, pca.explained_variance_ratio_, rtol=1e-6, atol=1e-12
    )
    for target, k in metrics["pca"]["components_for_variance"].items():
        assert k == SkPCA(float(target.rstrip("%")) / 100).fit(x).n_components_
    # k-means||: inertia within 1 % of scikit-learn's best of 10
    sk_inertia = SkKMeans(10, n_init=10, random_state=0).fit(x).inertia_
    assert metrics["kmeans"]["train_inertia"] <= 1.01 * sk_inertia
    assert sum(metrics["kmeans"]["cluster_sizes"]) == len(y) and set(metrics["kmeans"]["elbow"]) == {"4", "8"}
    # forest: accuracy within 1 point of scikit-learn forests of the same size (mean of 3 seeds)
    ref_acc = np.mean([skens.RandomForestClassifier(200, random_state=s).fit(x, y).score(xt, yt) for s in range(3)])
    assert abs(metrics["forest"]["test_accuracy"] - ref_acc) <= 0.01
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["ingest", "softmax", "pca", "kmeans", "forest"]
    assert all(s["status"] == "succeeded" for s in manifest["stages"])
    assert {"models/forest", "plots/kmeans", "plots/pca"} <= set(manifest["outputs"])


@pytest.mark.slow
def test_engines_give_the_same_deterministic_fits(dask_engine, spark_engine, tmp_path):
    fits = {}
    for engine in (dask_engine, spark_engine):
        _, state, _ = _run(engine, tmp_path, "fair.yaml")
        fits[engine.kind] = state["lm"].model
    np.testing.assert_allclose(fits["dask"].coef_, fits["spark"].coef_, rtol=1e-10)
    np.testing.assert_allclose(
        fits["dask"].summary_.robust.std_error, fits["spark"].summary_.robust.std_error, rtol=1e-10
    )


def test_blocks_hold_whole_partitions_and_name_a_late_nan(engine, tmp_path):
    # 25,000 rows in 2 partitions: Spark hands each partition over in several Arrow batches of 10,000,
    # and the engine calls the block function once on the whole partition (it knows nothing of block keys).
    from pipelines.classical import Blocks
    from pipelines.errors import DataError

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(25_000, 3)), columns=["a", "b", "y"])
    frame["_source"] = "f.parquet"
    frame["_row"] = np.arange(25_000)
    (tmp_path / "data").mkdir()
    for i, part in enumerate((frame.iloc[:12_500], frame.iloc[12_500:])):
        part.to_parquet(tmp_path / "data" / f"part-{i}.parquet", index=False)
    data = engine.read_parquet(str(tmp_path / "data"))
    sizes = [n for n in engine.partition_sizes(data) if n]
    handle = engine.to_blocks(data, lambda pdf: {"seen": np.array(len(pdf))})
    try:
        seen = engine.map_blocks(handle, lambda block: (int(block["part"]), int(block["seen"])))
    finally:
        engine.release_blocks(handle)
    assert [n for _, n in seen if n] == sizes and len(sizes) >= 2  # one call per partition, on all its rows
    assert len({part for part, _ in seen}) == len(seen)
    with Blocks.from_frame(engine, data, ["a", "b"], "y") as blocks:
        assert blocks.n_rows == 25_000
        assert [n for n in blocks.rows_per_block if n] == sizes
        rows = np.concatenate(blocks.map(lambda block: block["row"]))
        assert sorted(rows.tolist()) == list(range(25_000))
        x = np.vstack(blocks.map(lambda block: block["x"]))
        np.testing.assert_array_equal(x[np.argsort(rows)], frame[["a", "b"]].to_numpy())
    frame.loc[23_456, "b"] = np.nan
    frame.iloc[12_500:].to_parquet(tmp_path / "data" / "part-1.parquet", index=False)
    (tmp_path / "data" / "part-0.parquet").unlink()
    with pytest.raises(DataError, match="first at f.parquet row 23456, column 'b'"):
        Blocks.from_frame(engine, engine.read_parquet(str(tmp_path / "data")), ["a", "b"], "y")
